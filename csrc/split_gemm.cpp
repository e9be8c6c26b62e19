// The device-generic half of the 3xTF32 GEMM (split_gemm.h): the CPU split, the three GEMMs
// through ATen and the scope that turns TF32 tensor cores on for them. Built into elf_fast._C
// and the emulation module elf_fast._C_emu (elf_fast/emulation.py lists it).
#include "split_gemm.h"

#include <ATen/Parallel.h>

namespace elf_fast {

Tf32Split tf32_split_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "elf_fast: the TF32 split takes float32, got ", x.scalar_type());
  TORCH_CHECK(x.is_cpu(), "elf_fast: tf32_split_cpu takes a CPU tensor, got ", x.device());
  const auto xc = x.contiguous();
  auto hi = at::empty_like(xc), lo = at::empty_like(xc);
  const float* src = xc.const_data_ptr<float>();
  float* h = hi.mutable_data_ptr<float>();
  float* l = lo.mutable_data_ptr<float>();
  at::parallel_for(0, xc.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) tf32_split(src[i], h[i], l[i]);
  });
  return {hi, lo};
}

void addmm_3xtf32_(at::Tensor& out, const Tf32Split& a, const Tf32Split& b) {
  const Tf32TensorCoreScope tensor_cores(out.is_cuda());
  // Smallest terms first; every product is exact, the sums are fp32's (split_gemm.h).
  out.addmm_(a.lo, b.hi);
  out.addmm_(a.hi, b.lo);
  out.addmm_(a.hi, b.hi);
}

at::Tensor addmm_3xtf32(const at::Tensor& bias, const Tf32Split& a, const Tf32Split& b) {
  const Tf32TensorCoreScope tensor_cores(a.hi.is_cuda());
  auto out = at::addmm(bias, a.lo, b.hi);
  out.addmm_(a.hi, b.lo);
  out.addmm_(a.hi, b.hi);
  return out;
}

at::Tensor addmm_3xtf32(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b, Tf32SplitFn split) {
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat,
              "elf_fast: addmm_3xtf32 takes float32 operands, got ", a.scalar_type(), " and ", b.scalar_type());
  return addmm_3xtf32(bias, split(a), split(b));
}

Tf32TensorCoreScope::Tf32TensorCoreScope(bool engage) {
  if (!engage) return;
  auto& ctx = at::globalContext();
  previous_ = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
  if (previous_ != at::Float32Precision::NONE && previous_ != at::Float32Precision::IEEE) return;  // TF32 on already
  try {
    // Throws only in states mixed by the legacy and new APIs: leave those alone.
    if (ctx.float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST) return;
  } catch (const c10::Error&) {
    return;
  }
  ctx.setAllowTF32CuBLAS(true);  // legacy "high" and CUDA matmul "tf32", consistent
  engaged_ = true;
}

Tf32TensorCoreScope::~Tf32TensorCoreScope() {
  if (!engaged_) return;
  try {
    auto& ctx = at::globalContext();
    ctx.setAllowTF32CuBLAS(false);  // legacy "highest" (as it was) and CUDA matmul "ieee"
    if (previous_ != at::Float32Precision::IEEE)
      ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, previous_);  // "none", as it was
  } catch (...) {  // a destructor must not throw; neither setter does for these values
  }
}

std::string tf32_scope_probe(bool fail) {
  const Tf32TensorCoreScope scope(true);
  const auto inside = at::precision2str(at::globalContext().float32Precision(at::Float32Backend::CUDA,
                                                                             at::Float32Op::MATMUL));
  TORCH_CHECK(!fail, "elf_fast: tf32_scope_probe failing on purpose inside the scope (saw '", inside, "')");
  return inside;
}

}  // namespace elf_fast
