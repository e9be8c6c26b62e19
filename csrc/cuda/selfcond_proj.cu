// Self-condition projection on CUDA: the device-generic GEMM code of
// selfcond_proj.cpp, registered for the CUDA key with z's device made current
// so its allocations and library calls land on that device and stream.
// selfcond_proj_folded (inference) runs its fp32 GEMMs as 3xTF32 on tensor cores
// (csrc/split_gemm.h), splitting operands with tf32_split_kernel below; the emulation
// build runs the same kernel on the CPU, followed by fp32 GEMMs.
// selfcond_proj (training, differentiable) keeps plain GEMMs, which follow the global
// TF32 setting like every other fp32 GEMM of the network (docs/method.md §7.6).
#include <algorithm>

#include "runtime.h"

namespace elf_fast {

// x = hi + lo elementwise by split_gemm.h's rule; one read, two writes, grid-stride.
__global__ void tf32_split_kernel(const float* __restrict__ x, float* __restrict__ hi, float* __restrict__ lo,
                                  int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float h, l;
    tf32_split(x[i], h, l);
    hi[i] = h;
    lo[i] = l;
  }
}

Tf32Split tf32_split_cuda(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "elf_fast: the TF32 split takes float32, got ", x.scalar_type());
  gpu::check_on_device("tf32_split", x, "x");
  const gpu::DeviceGuard device_guard(x.device());
  const auto xc = x.contiguous();
  auto hi = at::empty_like(xc), lo = at::empty_like(xc);
  const int64_t n = xc.numel();
  if (n == 0) return {hi, lo};
  constexpr int kThreads = 256;
  const auto blocks = static_cast<unsigned>(
      std::min<int64_t>((n + kThreads - 1) / kThreads, static_cast<int64_t>(gpu::sm_count()) * 8));
  gpu::launch<tf32_split_kernel>({blocks, kThreads, 0, gpu::current_stream()}, xc.const_data_ptr<float>(),
                                 hi.mutable_data_ptr<float>(), lo.mutable_data_ptr<float>(), n);
  return {hi, lo};
}

namespace {

Tensor selfcond_proj_cuda(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
                          const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2, const Tensor& b_p2) {
  gpu::check_on_device("selfcond_proj", z, "z");
  const gpu::DeviceGuard device_guard(z.device());
  return selfcond_proj(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selfcond_proj_backward_cuda(
    const Tensor& grad, const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
    const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2) {
  gpu::check_on_device("selfcond_proj_backward", z, "z");
  const gpu::DeviceGuard device_guard(z.device());
  return selfcond_proj_backward(grad, z, x_prev, w_sc, b_sc, w_p1, w_p2);
}

Tensor selfcond_proj_folded_cuda(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& m,
                                 const Tensor& b1, const Tensor& w_p2, const Tensor& b_p2) {
  gpu::check_on_device("selfcond_proj_folded", z, "z");
  const gpu::DeviceGuard device_guard(z.device());
  return selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2, &tf32_split_cuda);
}

}  // namespace

ELF_FAST_GPU_IMPL(m) {
  m.impl("selfcond_proj", &selfcond_proj_cuda);
  m.impl("selfcond_proj_backward", &selfcond_proj_backward_cuda);
  m.impl("selfcond_proj_folded", &selfcond_proj_folded_cuda);
}

}  // namespace elf_fast
