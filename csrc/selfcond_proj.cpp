// Fused self-condition projection (docs/method.md §7.1), forward and backward.
//
// h0 = proj2(proj1(W_z z + W_x x_prev + b)) with [W_z | W_x] = self_cond_proj.weight.
// proj1 (128 x C, no bias) follows a linear map, so the two are pre-multiplied:
// M = W_p1 [W_z | W_x] (128 x 2C), b1 = W_p1 b, and
//   a  = z M_z^T + x_prev M_x^T + b1     (N, 128)
//   h0 = a W_p2^T + b_p2                 (N, H)
// No (N, 2C) concatenation and no (N, C) intermediate is built; the x_prev = 0
// case skips M_x. Work drops from 2N(2C*C + 128C + 128H) to 2N(2C*128 + 128H)
// FLOPs. The backward keeps the same low-rank form (see selfcond_proj_backward).
// The code is device-generic (GEMMs through ATen: MKL/OpenBLAS on CPU, cuBLAS
// on CUDA); CPU registers it here, CUDA in csrc/cuda/selfcond_proj.cu.
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "elf_fast.h"

namespace elf_fast {

namespace {

struct Dims {
  int64_t C, H, R;  // latent channels, hidden size, bottleneck rank (128 in ELF)
};

Dims check_selfcond_args(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
                         const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2,
                         const std::optional<Tensor>& b_p2) {
  check_float_tensor(z, "z");
  TORCH_CHECK(z.dim() >= 1 && z.size(-1) > 0, "elf_fast.selfcond_proj: 'z' must be (..., C), got ", z.sizes());
  const int64_t C = z.size(-1);
  const auto dt = z.scalar_type();
  auto same = [&](const Tensor& t, const char* name) {
    check_float_tensor(t, name);
    check_same_device(z, "z", t, name);
    TORCH_CHECK(t.scalar_type() == dt, "elf_fast.selfcond_proj: '", name, "' dtype ", t.scalar_type(),
                " differs from 'z' dtype ", dt);
  };
  if (x_prev.has_value()) {
    same(*x_prev, "x_prev");
    check_shape(*x_prev, "x_prev", z.sizes());
  }
  same(w_sc, "w_sc");
  check_shape(w_sc, "w_sc", {C, 2 * C});
  same(b_sc, "b_sc");
  check_shape(b_sc, "b_sc", {C});
  same(w_p1, "w_p1");
  TORCH_CHECK(w_p1.dim() == 2 && w_p1.size(1) == C, "elf_fast.selfcond_proj: 'w_p1' must be (R, ", C, "), got ",
              w_p1.sizes());
  const int64_t R = w_p1.size(0);
  same(w_p2, "w_p2");
  TORCH_CHECK(w_p2.dim() == 2 && w_p2.size(1) == R, "elf_fast.selfcond_proj: 'w_p2' must be (H, ", R, "), got ",
              w_p2.sizes());
  const int64_t H = w_p2.size(0);
  if (b_p2.has_value()) {
    same(*b_p2, "b_p2");
    check_shape(*b_p2, "b_p2", {H});
  }
  return {C, H, R};
}

// M = W_p1 W_sc (R, 2C) and b1 = W_p1 b_sc (R,), formed in fp32 then cast to
// the compute dtype: O(R C^2) work, independent of the number of positions.
std::pair<Tensor, Tensor> premultiply(const Tensor& w_sc, const Tensor& b_sc, const Tensor& w_p1) {
  const auto w1 = w_p1.to(at::kFloat);
  auto M = at::mm(w1, w_sc.to(at::kFloat)).to(w_sc.scalar_type());
  auto b1 = at::mv(w1, b_sc.to(at::kFloat)).to(w_sc.scalar_type());
  return {M, b1};
}

// a = z M_z^T + x M_x^T + b1: (N, R)
Tensor bottleneck(const Tensor& z2, const std::optional<Tensor>& x2, const Tensor& M, const Tensor& b1, int64_t C) {
  auto a = at::addmm(b1, z2, M.narrow(1, 0, C).t());
  if (x2.has_value()) a.addmm_(*x2, M.narrow(1, C, C).t());
  return a;
}

}  // namespace

Tensor selfcond_proj(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc, const Tensor& b_sc,
                     const Tensor& w_p1, const Tensor& w_p2, const Tensor& b_p2) {
  const InnerCallGuard guard;  // autograd is registered for the op as a whole
  const Dims d = check_selfcond_args(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2);
  const auto z2 = z.reshape({-1, d.C});
  std::optional<Tensor> x2;
  if (x_prev.has_value()) x2 = x_prev->reshape({-1, d.C});
  const auto [M, b1] = premultiply(w_sc, b_sc, w_p1);
  const auto a = bottleneck(z2, x2, M, b1, d.C);  // (N, R)
  auto out_sizes = z.sizes().vec();
  out_sizes.back() = d.H;
  return at::addmm(b_p2, a, w_p2.t()).view(out_sizes);  // (N, H)
}

// Gradients with g = dL/dh0 (N, H), ga = g W_p2 (N, R), u = W_z z + W_x x + b:
//   dW_p2 = g^T a;  db_p2 = sum g;
//   dW_p1 = ga^T u = (ga^T z) W_z^T + (ga^T x) W_x^T + (ga^T 1) b^T;
//   dW_sc = W_p1^T [ga^T z | ga^T x];  db_sc = W_p1^T (ga^T 1);
//   dz = ga M_z;  dx = ga M_x.
// Every product with N rows has R = 128 columns on one side: the backward, like
// the forward, never forms an (N, C) x (C, C) product.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selfcond_proj_backward(
    const Tensor& grad, const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
    const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2) {
  const InnerCallGuard guard;
  const Dims d = check_selfcond_args(z, x_prev, w_sc, b_sc, w_p1, w_p2, std::nullopt);
  TORCH_CHECK(grad.scalar_type() == z.scalar_type(), "elf_fast.selfcond_proj_backward: 'grad' dtype ",
              grad.scalar_type(), " differs from 'z' dtype ", z.scalar_type());
  check_same_device(z, "z", grad, "grad");
  const auto dt = z.scalar_type();
  const auto z2 = z.reshape({-1, d.C});
  const auto N = z2.size(0);
  const auto g = grad.reshape({N, d.H});
  std::optional<Tensor> x2;
  if (x_prev.has_value()) x2 = x_prev->reshape({-1, d.C});
  const auto [M, b1] = premultiply(w_sc, b_sc, w_p1);
  const auto a = bottleneck(z2, x2, M, b1, d.C);  // (N, R), recomputed: cheaper than saving it

  const auto f32 = at::kFloat;
  const auto grad_b2 = g.sum(0, /*keepdim=*/false, f32);               // (H,)
  const auto grad_w2 = at::mm(g.t(), a);                                // (H, R)
  const auto ga = at::mm(g, w_p2);                                      // (N, R)
  const auto ga_sum = ga.sum(0, /*keepdim=*/false, f32);                // (R,)
  const auto gz = at::mm(ga.t(), z2).to(f32);                           // (R, C)
  const auto gx = x2.has_value() ? at::mm(ga.t(), *x2).to(f32) : at::zeros_like(gz);
  const auto w1 = w_p1.to(f32), wsc = w_sc.to(f32);
  const auto grad_wsc = at::mm(w1.t(), at::cat({gz, gx}, 1));           // (C, 2C)
  const auto grad_bsc = at::mv(w1.t(), ga_sum);                         // (C,)
  auto grad_w1 = at::mm(gz, wsc.narrow(1, 0, d.C).t());                // (R, C)
  if (x2.has_value()) grad_w1.addmm_(gx, wsc.narrow(1, d.C, d.C).t());
  grad_w1.addr_(ga_sum, b_sc.to(f32));
  const auto grad_z = at::mm(ga, M.narrow(1, 0, d.C)).view(z.sizes());  // (N, C)
  const auto grad_x = x2.has_value() ? at::mm(ga, M.narrow(1, d.C, d.C)).view(z.sizes()) : at::empty({0}, z.options());
  return {grad_z, grad_x, grad_wsc.to(dt), grad_bsc.to(dt), grad_w1.to(dt), grad_w2, grad_b2.to(dt)};
}

// ---- inference: the folded weights ----------------------------------------------------------
// selfcond_proj_folded takes M and b1 already formed (elf_fast.ops.fold_selfcond_weights, cached
// per weight version by elf_fast.model.ELF), so a call is the two GEMMs alone:
//   a = z M_z^T + x_prev M_x^T + b1 (N, R);   h0 = a W_p2^T + b_p2 (N, H).
// Forward only (no autograd formula: elf_fast.ops runs the reference when a gradient is needed).
//
// On CUDA, fp32, a fused kernel does both GEMMs per tile of rows (`fused`, csrc/cuda/selfcond_proj.cu:
// the (rows, R) intermediate kept in shared memory, TF32 tensor cores with the hi/lo split done in
// registers): no split passes over z / x_prev and no round trip of `a` through global memory. The
// `split != nullptr` branch below is its fallback; bf16/fp16 take plain GEMMs.
namespace {

Dims check_folded_args(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& m, const Tensor& b1,
                       const Tensor& w_p2, const Tensor& b_p2) {
  check_float_tensor(z, "z");
  TORCH_CHECK(z.dim() >= 1 && z.size(-1) > 0, "elf_fast.selfcond_proj_folded: 'z' must be (..., C), got ",
              z.sizes());
  const int64_t C = z.size(-1);
  const auto dt = z.scalar_type();
  auto same = [&](const Tensor& t, const char* name) {
    check_float_tensor(t, name);
    check_same_device(z, "z", t, name);
    TORCH_CHECK(t.scalar_type() == dt, "elf_fast.selfcond_proj_folded: '", name, "' dtype ", t.scalar_type(),
                " differs from 'z' dtype ", dt);
  };
  if (x_prev.has_value()) {
    same(*x_prev, "x_prev");
    check_shape(*x_prev, "x_prev", z.sizes());
  }
  same(m, "m");
  TORCH_CHECK(m.dim() == 2 && m.size(1) == 2 * C, "elf_fast.selfcond_proj_folded: 'm' must be (R, ", 2 * C,
              "), got ", m.sizes());
  const int64_t R = m.size(0);
  same(b1, "b1");
  check_shape(b1, "b1", {R});
  same(w_p2, "w_p2");
  TORCH_CHECK(w_p2.dim() == 2 && w_p2.size(1) == R, "elf_fast.selfcond_proj_folded: 'w_p2' must be (H, ", R,
              "), got ", w_p2.sizes());
  const int64_t H = w_p2.size(0);
  same(b_p2, "b_p2");
  check_shape(b_p2, "b_p2", {H});
  return {C, H, R};
}

}  // namespace

Tensor selfcond_proj_folded(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& m, const Tensor& b1,
                            const Tensor& w_p2, const Tensor& b_p2, Tf32SplitFn split, SelfcondFusedFn fused) {
  const InnerCallGuard guard;
  const Dims d = check_folded_args(z, x_prev, m, b1, w_p2, b_p2);
  const auto z2 = z.reshape({-1, d.C});
  std::optional<Tensor> x2;
  if (x_prev.has_value()) x2 = x_prev->reshape({-1, d.C});
  auto out_sizes = z.sizes().vec();
  out_sizes.back() = d.H;
  const char* env = std::getenv("ELF_FAST_SELFCOND_FUSED");
  if (fused != nullptr && !(env != nullptr && std::string(env) == "0")) {
    auto out = at::empty({z2.size(0), d.H}, z.options());
    if (fused(z2, x2, m, b1, w_p2, b_p2, out)) return out.view(out_sizes);
  }
  if (split == nullptr || z.scalar_type() != at::kFloat) {
    const auto a = bottleneck(z2, x2, m, b1, d.C);
    return at::addmm(b_p2, a, w_p2.t()).view(out_sizes);
  }
  // fp32 through 3xTF32 (split_gemm.h), three GEMMs per product, one tensor-core scope around all.
  const Tf32TensorCoreScope tensor_cores(z.is_cuda());
  const auto ms = split(m);  // (R, 2C), small: split per call
  auto a = addmm_3xtf32(b1, split(z2), ms.narrow(1, 0, d.C).t());
  if (x2.has_value()) addmm_3xtf32_(a, split(*x2), ms.narrow(1, d.C, d.C).t());
  return addmm_3xtf32(b_p2, split(a), split(w_p2).t()).view(out_sizes);
}

#if !defined(ELF_FAST_SIMT_EMU)  // the emulation build registers its own (csrc/cuda/selfcond_proj.cu)
namespace {
Tensor selfcond_proj_folded_cpu(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& m,
                                const Tensor& b1, const Tensor& w_p2, const Tensor& b_p2) {
  return selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2, nullptr);  // plain fp32 GEMMs on the CPU
}
}  // namespace

TORCH_LIBRARY_IMPL(elf_fast, CPU, m) {
  m.impl("selfcond_proj", &selfcond_proj);
  m.impl("selfcond_proj_backward", &selfcond_proj_backward);
  m.impl("selfcond_proj_folded", &selfcond_proj_folded_cpu);
}
#endif

}  // namespace elf_fast
