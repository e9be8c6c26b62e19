// Shared declarations of elf_fast's fused ops. The schemas live once, in
// registration.cpp; CPU implementations in csrc/*.cpp, CUDA ones in csrc/cuda/*.cu.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "split_gemm.h"

// float32 / bfloat16 / float16: the dtypes every kernel accepts (no double:
// check_float_tensor rejects it, so instantiating it would only cost build time).
#define ELF_FAST_DISPATCH_FLOATS(TYPE, NAME, ...)                        \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace elf_fast {

using at::Tensor;

// Inside a kernel, the ATen calls it makes are implementation details: they must
// neither record autograd (the op has its own backward) nor be re-cast by an
// ambient torch.autocast (the op's dtype contract is its inputs' dtype).
struct InnerCallGuard {
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::autocast_dispatch_keyset};
};

// ---- argument checks (one place) -----------------------------------------
void check_float_tensor(const Tensor& t, const char* name);
void check_same_device(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b);
void check_shape(const Tensor& t, const char* name, at::IntArrayRef expected);

// ---- self-condition projection (device-generic, GEMM-based) ----------------
Tensor selfcond_proj(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
                     const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2, const Tensor& b_p2);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selfcond_proj_backward(
    const Tensor& grad, const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
    const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2);
// Inference with the folded weights M (R, 2C) and b1 (R,): the two GEMMs alone. `split` null:
// plain GEMMs (the CPU kernel); else fp32 inputs go through 3xTF32 with that device's split
// (split_gemm.h; CUDA and its emulation), other dtypes through plain GEMMs.
Tensor selfcond_proj_folded(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& m, const Tensor& b1,
                            const Tensor& w_p2, const Tensor& b_p2, Tf32SplitFn split);

// ---- flow step --------------------------------------------------------------
struct FlowStepArgs {
  double t, t_next, cfg, alpha, sigma_n, t_eps;
  int64_t seed, offset;
  int64_t index_base;  // element e draws the noise of global index index_base + e (a multiple of 4)
};
// Validates inputs and allocates (z_next, x_hat); shared by CPU and CUDA.
std::tuple<Tensor, Tensor> flow_step_prepare(const Tensor& z, const Tensor& x_c,
                                             const std::optional<Tensor>& x_u,
                                             const std::optional<Tensor>& cond_mask,
                                             const std::optional<Tensor>& x_cond,
                                             const FlowStepArgs& a);

// ---- decode head ------------------------------------------------------------
// Running argmax over one (rows, tile) fp32 block of bias-free logits whose
// first column is vocabulary index v0; bias (tile,) fp32 is added on the fly.
// best_val (rows,) fp32 / best_idx (rows,) int64 are updated in place; a column
// replaces the best only when strictly larger, so ties keep the lowest id
// (tiles arrive in increasing v0; best_val starts at -inf, best_idx at 0).
using ArgmaxUpdateFn = void (*)(const Tensor& logits, const Tensor& bias, int64_t v0, Tensor& best_val,
                                Tensor& best_idx);
// Cross-entropy over one (rows, V) fp32 block of bias-free logits; bias (V,)
// fp32 is added on the fly. Writes w_i * CE_i to loss_rows (rows,) fp32 where
// w_i = weight_i (fp32, (rows,)) and 0 where targets_i < 0 (targets int64);
// if compute_grad, overwrites logits with w_i * (softmax_i - onehot(target_i)).
using CrossEntropyRowsFn = void (*)(Tensor& logits, const Tensor& bias, const Tensor& targets,
                                    const Tensor& weight, Tensor& loss_rows, bool compute_grad);

std::tuple<Tensor, Tensor> unembed_argmax_driver(const Tensor& h, const Tensor& P, const Tensor& p,
                                                 const Tensor& U, const Tensor& u, int64_t vocab_tile,
                                                 ArgmaxUpdateFn update);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_driver(
    const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U, const Tensor& u,
    const Tensor& targets, const std::optional<Tensor>& weight, bool compute_grad, int64_t chunk,
    CrossEntropyRowsFn rows_fn);

// ---- transformer-block element-wise ops (block_ops.cpp, cuda/block_ops.cu) -----
struct QkvShape {
  int64_t B, T, heads, hd;
};
void rms_norm_check(const Tensor& x, const Tensor& weight, double eps);
QkvShape qk_norm_rope_check(const Tensor& qkv, const Tensor& q_weight, const Tensor& k_weight, const Tensor& cos,
                            const Tensor& sin, int64_t heads, double eps);
void swiglu_check(const Tensor& u);

}  // namespace elf_fast
