// Shared declarations of elf_fast's fused ops. The schemas live once, in
// registration.cpp; CPU implementations in csrc/*.cpp, CUDA ones in csrc/cuda/*.cu.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "split_gemm.h"  // Tf32Split, Tf32SplitFn

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
// A fused device kernel for the whole folded projection: z2 (N, C), x2 (N, C) or none, m (R, 2C),
// b1 (R,), w_p2 (H, R), b_p2 (H,) after the argument checks; writes out (N, H) fp32 contiguous and
// returns true, or returns false (doing nothing) where it does not apply.
using SelfcondFusedFn = bool (*)(const Tensor& z2, const std::optional<Tensor>& x2, const Tensor& m,
                                 const Tensor& b1, const Tensor& w_p2, const Tensor& b_p2, Tensor& out);
Tensor selfcond_proj_folded(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& m, const Tensor& b1,
                            const Tensor& w_p2, const Tensor& b_p2, Tf32SplitFn split,
                            SelfcondFusedFn fused = nullptr);  // ELF_FAST_SELFCOND_FUSED=0 turns `fused` off

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
// It also validates the ids (the driver never reads them, so it does not sync
// with the device): targets_i >= V is an error on every row, zero-weight rows
// included (CPU: RuntimeError naming the id and V; CUDA: a device-side assert).
using CrossEntropyRowsFn = void (*)(Tensor& logits, const Tensor& bias, const Tensor& targets,
                                    const Tensor& weight, Tensor& loss_rows, bool compute_grad);
// The same on a bf16 (rows, V) block of logits (the CPU bf16 path): each row is widened to fp32,
// the row's loss and fp32 gradient computed as CrossEntropyRowsFn does, the gradient added to
// grad_bias (fp32, (V,); only with compute_grad) and written back over the row rounded to bf16.
using CrossEntropyRowsBf16Fn = void (*)(Tensor& logits, const Tensor& bias, const Tensor& targets,
                                        const Tensor& weight, Tensor& loss_rows, bool compute_grad,
                                        Tensor& grad_bias);

// ---- exact greedy decode from a low-precision pass (CUDA and its emulation) -----
// unembed_argmax_exact_driver finds the fp32 argmax with the bulk of the work in a
// bf16 GEMM (fp32 accumulation): per row it keeps every id whose bf16 logit a_j may,
// within a proven error bound E_j, be the row's fp32 maximum, and rescores just those
// in fp32. The bound (docs/method.md §7.5, E12):
//   E_j = eps_s * |y| |U_j| + abs_in * (|y| + |U_j|) + eps_u * |u_j| + rel * |a_j| + tiny
// with |.| Euclidean norms of the row y = gelu(hP + p) and of column j of U.
struct ApproxLogitBound {
  float eps_s;   // relative to |y||U_j| >= sum_k |y_k U_kj|: bf16 rounding of y and U, both accumulations
  float abs_in;  // per unit norm: a flushed or subnormal-rounded input (< 2^-126 each), times sqrt(C)
  float eps_u;   // relative to |u_j|: the bias additions
  float rel;     // relative to |a_j|: the final rounding, and evaluating E_j itself in fp32
  float tiny;    // absolute: products and partial sums flushed to zero (2 (C + 2) 2^-126)
};
// The bound for a head of C channels whose unembedding is (u_is_bf16) already bf16. It holds
// for tensor cores that keep at least kTcMinKeptBits significant bits of each aligned block
// (any block size, rounding toward zero or to nearest; docs/method.md §7.5).
constexpr int kTcMinKeptBits = 22;
ApproxLogitBound approx_logit_bound(int64_t C, bool u_is_bf16);
constexpr int64_t kMaxArgmaxCandidates = 32;  // per row; more means the row is rescored in full
// Candidate search over one (rows, tile) fp32 block of approximate bias-free logits whose
// first column is id v0. State per row: threshold (fp32, the running max of a_j - E_j,
// starts at -inf), cand_ub (rows, K) fp32 and cand_id (rows, K) int32 (a_j + E_j and j of
// each kept id), cand_count (int32; -1 = rescore the whole row).
using ArgmaxCandidatesFn = void (*)(const Tensor& approx, const Tensor& bias, const Tensor& col_norm, int64_t v0,
                                    const Tensor& row_norm, const ApproxLogitBound& bound, Tensor& threshold,
                                    Tensor& cand_ub, Tensor& cand_id, Tensor& cand_count);
// fp32 rescoring: y (N, C) fp32, Ut (V, C) fp32 (U transposed), bias (V,) fp32; writes
// best_idx (N,) int64 and best_val (N,) fp32: the fp32 argmax over the kept ids with
// a_j + E_j >= threshold (over all ids where cand_count is -1 or 0), ties to the lowest id.
using ArgmaxRescoreFn = void (*)(const Tensor& y, const Tensor& Ut, const Tensor& bias, const Tensor& threshold,
                                 const Tensor& cand_ub, const Tensor& cand_id, const Tensor& cand_count,
                                 Tensor& best_idx, Tensor& best_val);
// The fused form of the bf16 pass and the candidate search, for the whole vocabulary in one
// launch: y_lp (N, C) and Ut_lp (V, C) bf16 contiguous, the rest as above with all N rows.
// Returns false, doing nothing, where it does not apply (C, device); the driver then runs the
// blocked GEMMs and ArgmaxCandidatesFn. ELF_FAST_ARGMAX_FUSED=0 turns it off.
using ArgmaxFusedFn = bool (*)(const Tensor& y_lp, const Tensor& Ut_lp, const Tensor& bias, const Tensor& col_norm,
                               const Tensor& row_norm, const ApproxLogitBound& bound, Tensor& threshold,
                               Tensor& cand_ub, Tensor& cand_id, Tensor& cand_count);
std::tuple<Tensor, Tensor> unembed_argmax_exact_driver(const Tensor& h, const Tensor& P, const Tensor& p,
                                                       const Tensor& U, const Tensor& u, int64_t vocab_tile,
                                                       ArgmaxCandidatesFn candidates, ArgmaxRescoreFn rescore,
                                                       ArgmaxFusedFn fused = nullptr);

std::tuple<Tensor, Tensor> unembed_argmax_driver(const Tensor& h, const Tensor& P, const Tensor& p,
                                                 const Tensor& U, const Tensor& u, int64_t vocab_tile,
                                                 ArgmaxUpdateFn update);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_driver(
    const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U, const Tensor& u,
    const Tensor& targets, const std::optional<Tensor>& weight, bool compute_grad, int64_t chunk,
    CrossEntropyRowsFn rows_fn, Tf32SplitFn split = nullptr,  // split: fp32 GEMMs as 3xTF32 (CUDA)
    CrossEntropyRowsBf16Fn rows_bf16 = nullptr);  // set by the CPU kernel on a CPU with native bf16:
                                                  // bf16 inputs -> bf16 GEMMs, this row kernel

// ---- transformer-block element-wise ops (block_ops.cpp, cuda/block_ops.cu) -----
struct QkvShape {
  int64_t B, T, heads, hd;
};
void rms_norm_check(const Tensor& x, const Tensor& weight, double eps);
QkvShape qk_norm_rope_check(const Tensor& qkv, const Tensor& q_weight, const Tensor& k_weight, const Tensor& cos,
                            const Tensor& sin, int64_t heads, double eps);
void swiglu_check(const Tensor& u);

}  // namespace elf_fast
