// Decode head (docs/method.md §3.6 and §7.3): unembed-argmax for sampling and the
// fused linear cross-entropy for training. Both evaluate
//   logits = gelu_tanh(h P + p) U + u      (P: (H, C), U: (C, V))
// one (rows x vocabulary-tile) block at a time, so the (N, V) logits tensor is
// never allocated: peak extra memory is one block plus O(N C) (+ O(C V) for the gradients).
//
// The drivers below are device-generic: the GEMMs go through ATen (MKL on CPU,
// cuBLAS on CUDA, where bf16/fp16 inputs use fp32-output GEMMs; oneDNN for the CPU
// kernel's bf16 GEMMs of linear_cross_entropy on bf16 inputs, see below), and the
// per-block row work (running argmax; softmax, CE and its gradient) is a
// device kernel passed in: the CPU ones in decode_head_cpu.cpp, the CUDA ones in
// csrc/cuda/decode_head.cu. unembed_argmax_driver (CPU) keeps a running argmax of
// fp32 logits; unembed_argmax_exact_driver (CUDA, emulated CUDA) finds the same ids
// from a bf16 pass plus an fp32 rescoring of the few ids a proven bound cannot rule
// out (docs/method.md §7.5). This file has no kernels and registers nothing: the
// CUDA emulation build compiles it too. Semantics: elf_fast.reference.unembed_argmax and
// elf_fast.reference.linear_cross_entropy.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "cpu_vecmath.h"  // its inline bf16 <-> float bit conversions (header only)
#include "elf_fast.h"
#include "split_gemm.h"

namespace elf_fast {

namespace {

struct HeadDims {
  int64_t N, H, C, V;
};

HeadDims check_head_args(const char* op, const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U,
                         const Tensor& u) {
  check_float_tensor(h, "h");
  TORCH_CHECK(h.dim() >= 1 && h.size(-1) > 0, op, ": 'h' must be (..., H), got ", h.sizes());
  const auto dt = h.scalar_type();
  const Tensor* params[] = {&P, &p, &U, &u};
  const char* names[] = {"proj_kernel", "proj_bias", "unembed_kernel", "unembed_bias"};
  for (int i = 0; i < 4; ++i) {
    check_float_tensor(*params[i], names[i]);
    check_same_device(h, "h", *params[i], names[i]);
    TORCH_CHECK(params[i]->scalar_type() == dt, op, ": '", names[i], "' dtype ", params[i]->scalar_type(),
                " differs from 'h' dtype ", dt);
  }
  const int64_t H = h.size(-1);
  TORCH_CHECK(P.dim() == 2 && P.size(0) == H, op, ": 'proj_kernel' must be (", H, ", C), got ", P.sizes());
  const int64_t C = P.size(1);
  check_shape(p, "proj_bias", {C});
  TORCH_CHECK(U.dim() == 2 && U.size(0) == C && U.size(1) > 0, op, ": 'unembed_kernel' must be (", C,
              ", V) with V > 0, got ", U.sizes());
  const int64_t V = U.size(1);
  check_shape(u, "unembed_bias", {V});
  return {h.numel() / H, H, C, V};
}

// GEMMs run in the input dtype with fp32 output on CUDA (tensor cores); on the
// CPU everything is upcast to fp32 first (ATen has no fp32-output bf16 GEMM there),
// except linear_cross_entropy's bf16 GEMMs with bf16 output where the CPU kernel asks
// for them (rows_bf16, linear_cross_entropy_driver).
bool low_precision_gemm(const Tensor& h) { return h.is_cuda() && h.scalar_type() != at::kFloat; }

// Pre-activation a = h P + p (N, C) in fp32.
Tensor decode_preact(const Tensor& h2, const Tensor& P, const Tensor& p) {
  if (low_precision_gemm(h2)) return at::addmm(p, h2, P).to(at::kFloat);
  return at::addmm(p.to(at::kFloat), h2.to(at::kFloat), P.to(at::kFloat));
}

// out (rows, cols) fp32 = a @ b, for a, b in the GEMM dtype.
void gemm_f32_out(Tensor& out, const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kFloat) {
    at::mm_out(out, a, b);
  } else {
    at::mm_out(out, a, b, at::kFloat);
  }
}

// acc (fp32) += a @ b; a, b in the GEMM dtype. A low-precision GEMM accumulates
// straight into the fp32 buffer (cuBLAS beta = 1), no (rows, cols) temporary.
void accumulate_mm(Tensor& acc, const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kFloat) {
    acc.addmm_(a, b);
  } else {
    at::addmm_out(acc, acc, a, b, at::kFloat);
  }
}

// acc (fp32, contiguous) += x (bf16, contiguous, same size), one pass: ATen's mixed-dtype
// add_ allocates an fp32 copy of x first (~6x slower at (384, 30522) on one core).
void add_bf16_into(Tensor& acc, const Tensor& x) {
  float* a = acc.mutable_data_ptr<float>();
  const auto* b = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>());
  at::parallel_for(0, acc.numel(), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) a[i] += vecmath::bf16_bits_to_float(b[i]);  // bf16 -> fp32 is exact
  });
}

// out (bf16) = round(acc + x), acc fp32 or bf16, x bf16, in one pass: the last group's dU and the
// cast of the fp32 sum to the output dtype (round to nearest even, as Tensor.to(bf16)), fused.
// out may be acc (element by element, read before written).
void add_bf16_round_into(Tensor& out, const Tensor& acc, const Tensor& x) {
  auto* o = reinterpret_cast<uint16_t*>(out.mutable_data_ptr<at::BFloat16>());
  const auto* b = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>());
  auto run = [&](auto load) {
    at::parallel_for(0, acc.numel(), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) o[i] = vecmath::float_to_bf16_bits(load(i) + vecmath::bf16_bits_to_float(b[i]));
    });
  };
  if (acc.scalar_type() == at::kFloat) {
    const float* a = acc.const_data_ptr<float>();
    run([a](int64_t i) { return a[i]; });
  } else {
    const auto* a = reinterpret_cast<const uint16_t*>(acc.const_data_ptr<at::BFloat16>());
    run([a](int64_t i) { return vecmath::bf16_bits_to_float(a[i]); });  // exact
  }
}

// A contiguous (rows, cols) view at the start of a flat scratch buffer.
Tensor block_view(const Tensor& scratch, int64_t rows, int64_t cols) {
  return scratch.narrow(0, 0, rows * cols).view({rows, cols});
}

}  // namespace

// ------------------------------------------------------------------ drivers
std::tuple<Tensor, Tensor> unembed_argmax_driver(const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U,
                                                 const Tensor& u, int64_t vocab_tile, ArgmaxUpdateFn update) {
  const InnerCallGuard guard;  // inner ATen calls build no graph
  const HeadDims d = check_head_args("elf_fast.unembed_argmax", h, P, p, U, u);
  TORCH_CHECK(vocab_tile >= 0, "elf_fast.unembed_argmax: 'vocab_tile' must be >= 0 (0 = automatic), got ",
              vocab_tile);
  const bool lp = low_precision_gemm(h);
  const int64_t tile = std::min(d.V, vocab_tile > 0 ? vocab_tile : (h.is_cuda() ? 8192 : 2048));
  // Rows per block: the fp32 logits block is ~32 MB on CUDA (within an H100's 50 MB L2, so the
  // GEMM's output is re-read from cache), ~4 MB on the CPU.
  const int64_t block_elems = h.is_cuda() ? (int64_t{1} << 23) : (int64_t{1} << 20);
  const int64_t rows = std::max<int64_t>(1, std::min(d.N, block_elems / tile));

  const auto fopt = h.options().dtype(at::kFloat);
  auto best_val = at::full({d.N}, -std::numeric_limits<float>::infinity(), fopt);
  auto best_idx = at::zeros({d.N}, h.options().dtype(at::kLong));
  auto out_sizes = h.sizes().slice(0, h.dim() - 1).vec();
  if (d.N == 0) return {best_idx.view(out_sizes), best_val.view(out_sizes)};

  const auto y = at::gelu(decode_preact(h.reshape({d.N, d.H}), P, p), "tanh");  // (N, C) fp32
  const auto y_mm = lp ? y.to(h.scalar_type()) : y;
  const auto bias = u.to(at::kFloat);
  const auto scratch = at::empty({rows * tile}, fopt);
  for (int64_t v0 = 0; v0 < d.V; v0 += tile) {
    const int64_t vt = std::min(tile, d.V - v0);
    auto Ut = U.narrow(1, v0, vt);  // (C, vt)
    if (!lp && Ut.scalar_type() != at::kFloat) Ut = Ut.to(at::kFloat);
    const auto bt = bias.narrow(0, v0, vt);
    for (int64_t r0 = 0; r0 < d.N; r0 += rows) {
      const int64_t nr = std::min(rows, d.N - r0);
      auto logits = block_view(scratch, nr, vt);
      gemm_f32_out(logits, y_mm.narrow(0, r0, nr), Ut);
      auto bv = best_val.narrow(0, r0, nr);
      auto bi = best_idx.narrow(0, r0, nr);
      update(logits, bt, v0, bv, bi);
    }
  }
  return {best_idx.view(out_sizes), best_val.view(out_sizes)};
}

// ------------------------------------------------- exact argmax from a bf16 pass
namespace {

// gamma_n = n u / (1 - n u): the classic bound on the relative error of an n-term
// floating-point sum with unit roundoff u, whatever the order.
double gamma_n(double n, double unit) { return n * unit / (1.0 - n * unit); }

// Row norms of a 2-D fp32 tensor, scaled by the row's max |x| so that squaring
// neither overflows nor flushes the dominant terms (a zero row has norm 0; a row
// holding inf or NaN gets NaN, which makes its bound non-finite: rescored in full).
Tensor scaled_row_norms(const Tensor& x) {
  const auto m = x.abs().amax({1}, /*keepdim=*/true);
  const auto scale = at::where(m > 0, m, at::ones_like(m));
  return (at::linalg_vector_norm(x / scale, 2, {1}) * m.squeeze(1)).contiguous();
}

}  // namespace

ApproxLogitBound approx_logit_bound(int64_t C, bool u_is_bf16) {
  TORCH_CHECK(C > 0 && C <= (int64_t{1} << 16), "elf_fast.unembed_argmax: the exact bf16 path takes 0 < C <= 65536, got ",
              C);
  const double c = static_cast<double>(C);
  const double bf16 = std::ldexp(1.0, -8);          // unit roundoff of bfloat16 (8 significant bits)
  const double f32 = std::ldexp(1.0, -24);          // of float32
  const double dy = bf16, dU = u_is_bf16 ? 0.0 : bf16;
  // Evaluating norms (relative error <= (C/2 + 2) 2^-24 after scaling) and E_j in fp32:
  const double safety = 1.0 + (c + 8.0) * std::ldexp(1.0, -23) + std::ldexp(1.0, -12);
  // Accumulation of the bf16 products (exact) on tensor cores, by the bit-level model of
  // their block accumulation (docs/method.md §7.5): blocks of B products plus the running
  // sum, aligned to the largest term and truncated to p >= kTcMinKeptBits significant bits of
  // it, then rounded once to fp32 (toward zero or to nearest). A block's error is at most
  // ((B + 1) 2^(1-p) + 2^-23) of its terms' magnitudes; over ceil(C/B) blocks the worst B is
  // 1, giving C (2^(2-p) + 2^-23) to first order: gamma_C with that unit (9 x 2^-23 at p = 22;
  // plain fp32 adds, truncating or not, are within it). The fp32 reference rounds to nearest
  // (2^-24) and sums C + 1 terms counting the bias.
  const double tc_unit = std::ldexp(1.0, 2 - kTcMinKeptBits) + 2 * f32;
  const double eps_s = (dy + dU + dy * dU) + gamma_n(c, tc_unit) * (1 + dy) * (1 + dU) + gamma_n(c + 1, f32);
  ApproxLogitBound b;
  b.eps_s = static_cast<float>(eps_s * safety);
  b.abs_in = static_cast<float>(std::ldexp(1.0, -126) * std::sqrt(c) * (1 + bf16) * safety);
  b.eps_u = static_cast<float>((gamma_n(c + 1, f32) + 2 * f32) * safety);
  b.rel = static_cast<float>(std::ldexp(1.0, -21));
  b.tiny = static_cast<float>(std::ldexp(2.0 * (c + 2.0), -126));
  return b;
}

std::tuple<Tensor, Tensor> unembed_argmax_exact_driver(const Tensor& h, const Tensor& P, const Tensor& p,
                                                       const Tensor& U, const Tensor& u, int64_t vocab_tile,
                                                       ArgmaxCandidatesFn candidates, ArgmaxRescoreFn rescore,
                                                       ArgmaxFusedFn fused) {
  const InnerCallGuard guard;
  const HeadDims d = check_head_args("elf_fast.unembed_argmax", h, P, p, U, u);
  TORCH_CHECK(vocab_tile >= 0, "elf_fast.unembed_argmax: 'vocab_tile' must be >= 0 (0 = automatic), got ",
              vocab_tile);
  TORCH_CHECK(d.V <= std::numeric_limits<int32_t>::max(), "elf_fast.unembed_argmax: vocabulary too large (", d.V,
              ")");
  const int64_t tile = std::min(d.V, vocab_tile > 0 ? vocab_tile : 8192);
  // Rows per block: a (rows, tile) fp32 block of ~2^23 elements (32 MB, within an H100's L2).
  const int64_t rows = std::max<int64_t>(1, std::min(d.N, (int64_t{1} << 23) / tile));
  const auto fopt = h.options().dtype(at::kFloat);
  auto out_sizes = h.sizes().slice(0, h.dim() - 1).vec();
  auto best_idx = at::empty({d.N}, h.options().dtype(at::kLong));
  auto best_val = at::empty({d.N}, fopt);
  if (d.N == 0) return {best_idx.view(out_sizes), best_val.view(out_sizes)};

  // The fp32 head input y and the prepared weights (copies the size of U, per call).
  const auto y = at::gelu(decode_preact(h.reshape({d.N, d.H}), P, p), "tanh").contiguous();  // (N, C) fp32
  const auto Ut = U.t().to(at::kFloat).contiguous();                                        // (V, C) fp32
  const auto bias = u.to(at::kFloat).contiguous();
  const auto row_norm = scaled_row_norms(y);
  const auto col_norm = scaled_row_norms(Ut);
  const bool u_is_bf16 = U.scalar_type() == at::kBFloat16;
  const ApproxLogitBound bound = approx_logit_bound(d.C, u_is_bf16);
  const int64_t K = kMaxArgmaxCandidates;
  auto threshold = at::full({d.N}, -std::numeric_limits<float>::infinity(), fopt);
  auto cand_ub = at::empty({d.N, K}, fopt);
  auto cand_id = at::empty({d.N, K}, h.options().dtype(at::kInt));
  auto cand_count = at::zeros({d.N}, h.options().dtype(at::kInt));
  const auto y_lp = y.to(at::kBFloat16);

  const char* env = std::getenv("ELF_FAST_ARGMAX_FUSED");
  const bool try_fused = fused != nullptr && !(env != nullptr && std::string(env) == "0");
  if (!(try_fused && fused(y_lp, Ut.to(at::kBFloat16), bias, col_norm, row_norm, bound, threshold, cand_ub, cand_id,
                           cand_count))) {
    // Blocked: the bf16 GEMM (fp32 accumulation: cuBLAS on CUDA; elsewhere the bf16 values
    // upcast, whose products are exact in fp32, so the arithmetic is the same) per
    // (rows x tile) block, then the candidate kernel on it.
    const bool cuda = h.is_cuda();
    const auto y_mm = cuda ? y_lp : y_lp.to(at::kFloat);
    const auto U_mm = cuda ? U.to(at::kBFloat16) : U.to(at::kBFloat16).to(at::kFloat);
    const auto scratch = at::empty({rows * tile}, fopt);
    for (int64_t v0 = 0; v0 < d.V; v0 += tile) {
      const int64_t vt = std::min(tile, d.V - v0);
      const auto Ul = U_mm.narrow(1, v0, vt);
      const auto bt = bias.narrow(0, v0, vt);
      const auto nt = col_norm.narrow(0, v0, vt);
      for (int64_t r0 = 0; r0 < d.N; r0 += rows) {
        const int64_t nr = std::min(rows, d.N - r0);
        auto approx = block_view(scratch, nr, vt);
        gemm_f32_out(approx, y_mm.narrow(0, r0, nr), Ul);
        auto thr = threshold.narrow(0, r0, nr);
        auto ub = cand_ub.narrow(0, r0, nr);
        auto id = cand_id.narrow(0, r0, nr);
        auto cnt = cand_count.narrow(0, r0, nr);
        candidates(approx, bt, nt, v0, row_norm.narrow(0, r0, nr), bound, thr, ub, id, cnt);
      }
    }
  }
  rescore(y, Ut, bias, threshold, cand_ub, cand_id, cand_count, best_idx, best_val);
  return {best_idx.view(out_sizes), best_val.view(out_sizes)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_driver(
    const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U, const Tensor& u, const Tensor& targets,
    const std::optional<Tensor>& weight, bool compute_grad, int64_t chunk, CrossEntropyRowsFn rows_fn,
    Tf32SplitFn split, CrossEntropyRowsBf16Fn rows_bf16) {
  const InnerCallGuard guard;  // gradients are computed by hand below
  const char* op = "elf_fast.linear_cross_entropy";
  const HeadDims d = check_head_args(op, h, P, p, U, u);
  TORCH_CHECK(targets.scalar_type() == at::kLong, op, ": 'targets' must be int64, got ", targets.scalar_type());
  check_same_device(h, "h", targets, "targets");
  TORCH_CHECK(targets.numel() == d.N && targets.is_contiguous(), op, ": 'targets' must be contiguous with ", d.N,
              " elements (one per row of 'h'), got shape ", targets.sizes());
  // Target ids are not read here: rows_fn checks them (id < V on every row, zero-weight rows
  // included) as it reads them, so no device->host sync is needed and the op is CUDA-graph capturable.
  Tensor w;
  if (weight.has_value()) {
    w = *weight;
    TORCH_CHECK(w.scalar_type() == at::kFloat, op, ": 'weight' must be float32, got ", w.scalar_type());
    check_same_device(h, "h", w, "weight");
    TORCH_CHECK(w.numel() == d.N && w.is_contiguous(), op, ": 'weight' must be contiguous with ", d.N,
                " elements, got shape ", w.sizes());
  } else {
    w = at::ones({d.N}, h.options().dtype(at::kFloat));
  }
  TORCH_CHECK(chunk >= 0, op, ": 'chunk' must be >= 0 (0 = automatic), got ", chunk);
  const bool lp = low_precision_gemm(h);
  const auto dt = h.scalar_type();
  const auto f32 = at::kFloat;
  const auto fopt = h.options().dtype(f32);
  // CPU bf16 path (rows_bf16: the CPU kernel, on a CPU with native bf16; bf16 inputs): the
  // three GEMMs against U -- logits = y U, dy = dlogits U^T, dU = y^T dlogits -- run in bf16
  // (oneDNN: fp32 accumulation, output rounded to bf16, as ATen has no fp32-output bf16 GEMM on
  // the CPU), with y and dlogits rounded to bf16 first. The row kernel (rows_bf16) widens each
  // bf16 logits row to fp32 in a row buffer (log-softmax, loss, dlogits and the bias gradient stay
  // fp32) and writes the row's dlogits back over it in bf16, so there is no fp32 (rows, V) block;
  // dU is accumulated over the chunks in fp32, and the small GEMMs against P (pre-activation, dP,
  // dh) stay fp32 on the upcast inputs.
  // The bf16 y and dlogits of consecutive chunks are kept for up to ~2^24 elements (32 MiB) and
  // dU gets one GEMM and one fp32 accumulation per such group: each accumulation streams all of
  // dU (at the built-in shape, C 384 x V 30522, as long as one 137-row chunk's GEMM), so one per
  // chunk would cost as much again as the dU GEMMs (two groups need no fp32 sum at all: below).
  // Extra memory against the fp32 path's: the group's (group_rows, V + C) and two (C, V) bf16
  // buffers, against its fp32 (C, V) sum (which three or more groups keep).
  const bool cpu_lp = rows_bf16 != nullptr && !h.is_cuda() && dt == at::kBFloat16;
  // Rows per chunk (`chunk` > 0 overrides), from a budget for the (rows, V) fp32 logits block:
  // * CUDA: 2^28 bytes (256 MiB; 2088 rows at V 32128). Each row-kernel launch then has ~2k
  //   blocks (~16 per SM on an H100/H200's 132), and U and the fp32 grad of U are streamed
  //   N / rows times (16 at N 32768) instead of ~126 times with 32 MB blocks. Peak extra memory
  //   at N 32768, V 32128, C 512: the block (256 MiB; bf16/fp16 inputs add its 128 MiB
  //   low-precision copy for the gradient GEMMs), the (N, C) fp32 pre-activation (64 MiB),
  //   the fp32 grad-U accumulator (63 MiB) and (rows, C) temporaries (4 MiB each): ~0.42 GB
  //   fp32, ~0.57 GB bf16. The fp32 reference materialises (N, V) logits, their log-softmax
  //   and its gradient (4.2 GB each; 8.4 GB at its forward's peak, 12.6 GB in backward): this
  //   is <= 7% of the smaller figure.
  // * CPU: 2^24 bytes (16 MB), sized for the caches.
  // fp32 inputs with a split function (CUDA): every GEMM as 3xTF32 on tensor cores
  // (split_gemm.h, ~fp32-accurate); the block's split halves cost two more blocks, so the
  // block budget halves (2^27 bytes, 1044 rows at V 32128; peak ~0.5 GB at the sizes above).
  const bool x3 = split != nullptr && !lp && h.scalar_type() == f32;
  const int64_t block_elems = h.is_cuda() ? (int64_t{1} << (x3 ? 25 : 26)) : (int64_t{1} << 22);
  const int64_t rows = std::max<int64_t>(1, std::min(d.N, chunk > 0 ? chunk : block_elems / d.V));

  const auto h2 = h.reshape({d.N, d.H});
  const auto a = x3 ? addmm_3xtf32(p, split(h2), split(P)) : decode_preact(h2, P, p);  // (N, C) fp32
  const auto Umm = lp || cpu_lp ? U : U.to(f32);  // (C, V) in the GEMM dtype
  const Tf32Split Us = x3 ? split(Umm) : Tf32Split{};
  const Tf32Split Ps = x3 && compute_grad ? split(P) : Tf32Split{};
  const auto bias = u.to(f32);
  const auto loss_rows = at::empty({d.N}, fopt);
  // (cpu_lp: no fp32 block; its row kernel works on the bf16 logits, a row at a time)
  const auto scratch = cpu_lp ? Tensor() : at::empty({std::max<int64_t>(1, rows * d.V)}, fopt);
  // cpu_lp with more than one chunk: the last chunk's bf16 GEMMs run on `rows` rows, its y padded
  // with zero rows (their logits are not read and add nothing to dU), so that every chunk's GEMMs
  // have the same shapes and every group's dU GEMM one of a few. oneDNN compiles a kernel for each
  // new GEMM shape (at the built-in shape, ~4 / 8 / 12 ms for logits / dy / dU on first use, more
  // than the GEMM); a training step's row count changes from step to step, and unpadded each step
  // met new shapes (and their number would exceed oneDNN's 1,024-entry kernel cache in a long run).
  const bool pad = cpu_lp && d.N > rows;
  // cpu_lp: the bf16 logits / dlogits and y of a group of chunks, and one group's dU.
  const int64_t n_mm = pad ? (d.N + rows - 1) / rows * rows : d.N;  // rows the bf16 GEMMs see in all
  const int64_t group_rows =
      cpu_lp && compute_grad ? std::min(n_mm, rows * std::max<int64_t>(1, (int64_t{1} << 24) / (rows * d.V))) : rows;
  Tensor dl_group, y_group, gU_lp, gU_first, gU_out;  // gU_out: cpu_lp's bf16 dU
  int64_t group_n = 0;                      // rows of the current group so far
  if (cpu_lp) {
    dl_group = at::empty({group_rows, d.V}, h.options());
    y_group = at::empty({group_rows, d.C}, h.options());
  }

  Tensor grad_h, gP, gp, gU, gu, h_mm, P_mm;
  if (compute_grad) {
    grad_h = at::empty({d.N, d.H}, h.options());
    gP = at::zeros({d.H, d.C}, fopt);
    gp = at::zeros({d.C}, fopt);
    // cpu_lp: no fp32 dU for one or two groups (see the group sums below)
    gU = cpu_lp ? Tensor() : at::zeros({d.C, d.V}, fopt);
    gu = at::zeros({d.V}, fopt);
    h_mm = lp ? h2 : h2.to(f32);
    P_mm = lp ? P : P.to(f32);
    if (cpu_lp) gU_lp = at::empty({d.C, d.V}, h.options());
  }
  for (int64_t r0 = 0; r0 < d.N; r0 += rows) {
    const int64_t nr = std::min(rows, d.N - r0);
    const auto a_r = a.narrow(0, r0, nr);
    auto y_r = at::gelu(a_r, "tanh");  // (nr, C) fp32
    if (lp) y_r = y_r.to(dt);
    auto logits = cpu_lp ? Tensor() : block_view(scratch, nr, d.V);
    Tf32Split ys;
    Tensor y_lp, logits_lp;
    if (x3) {
      ys = split(y_r);
      logits.zero_();
      addmm_3xtf32_(logits, ys, Us);
    } else if (cpu_lp) {
      const int64_t nr_mm = pad ? rows : nr;
      y_lp = y_group.narrow(0, group_n, nr_mm);
      y_lp.narrow(0, 0, nr).copy_(y_r);
      if (nr_mm > nr) y_lp.narrow(0, nr, nr_mm - nr).zero_();
      logits_lp = dl_group.narrow(0, group_n, nr_mm);
      at::mm_out(logits_lp, y_lp, Umm);
    } else {
      gemm_f32_out(logits, y_r, Umm);
    }
    auto lr = loss_rows.narrow(0, r0, nr);
    const auto tg_r = targets.view({-1}).narrow(0, r0, nr);
    const auto w_r = w.view({-1}).narrow(0, r0, nr);
    if (cpu_lp) {
      auto logits_r = logits_lp.narrow(0, 0, nr);  // (the padding rows are left as they are)
      rows_bf16(logits_r, bias, tg_r, w_r, lr, compute_grad, gu);  // gu += this chunk's dlogits
    } else {
      rows_fn(logits, bias, tg_r, w_r, lr, compute_grad);
    }
    if (!compute_grad) continue;
    // logits (cpu_lp: logits_lp) now holds dL/dlogits (nr, V), fp32 (bf16).
    if (x3) {
      const Tf32Split dls = split(logits);
      addmm_3xtf32_(gU, ys.t(), dls);
      gu.add_(logits.sum(0));
      auto dy = at::zeros({nr, d.C}, fopt);
      addmm_3xtf32_(dy, dls, Us.t());
      const auto da = at::gelu_backward(dy, a_r, "tanh");
      gp.add_(da.sum(0));
      const Tf32Split das = split(da);
      addmm_3xtf32_(gP, split(h2.narrow(0, r0, nr)).t(), das);
      auto gh = grad_h.narrow(0, r0, nr);
      gh.zero_();
      addmm_3xtf32_(gh, das, Ps.t());
      continue;
    }
    Tensor dy;  // (nr, C) fp32
    if (cpu_lp) {
      dy = at::mm(logits_lp, Umm.t()).narrow(0, 0, nr).to(f32);
      group_n += logits_lp.size(0);
      if (group_n + rows > group_rows || r0 + nr == d.N) {  // the group is full: its dU
        const auto yg = y_group.narrow(0, 0, group_n).t().contiguous();  // (a transposed view: ~4x slower)
        at::mm_out(gU_lp, yg, dl_group.narrow(0, 0, group_n));
        const bool last = r0 + nr == d.N;
        // dU = the groups' bf16 GEMM outputs summed in fp32 and rounded once. One group: its output.
        // Two (the built-in config's usual case): the first kept in bf16 (gU_first) and summed with
        // the second in one pass, in place, without an fp32 (C, V) buffer and its widening pass.
        // More: the first widened (exactly) into the fp32 sum gU when the third arrives, the middle
        // ones added. So gU_first is set after the first of several groups, gU from the third on.
        if (!gU_first.defined() && !gU.defined()) {  // the first group
          if (last) {
            gU_out = gU_lp;
          } else {
            gU_first = gU_lp;
            gU_lp = at::empty({d.C, d.V}, h.options());
          }
        } else if (last) {
          const Tensor& acc = gU.defined() ? gU : gU_first;
          gU_out = gU.defined() ? at::empty({d.C, d.V}, h.options()) : gU_first;
          add_bf16_round_into(gU_out, acc, gU_lp);  // as gU.to(dt) would round
        } else {
          if (!gU.defined()) {
            gU = gU_first.to(f32);
            gU_first = Tensor();
          }
          add_bf16_into(gU, gU_lp);
        }
        group_n = 0;
      }
    } else {
      const auto dl = lp ? logits.to(dt) : logits;
      accumulate_mm(gU, y_r.t(), dl);
      dy = lp ? at::mm(dl, Umm.t(), f32) : at::mm(dl, Umm.t());
    }
    if (!cpu_lp) gu.add_(logits.sum(0));
    const auto da = at::gelu_backward(dy, a_r, "tanh");                    // (nr, C) fp32
    gp.add_(da.sum(0));
    const auto da_mm = lp ? da.to(dt) : da;
    accumulate_mm(gP, h_mm.narrow(0, r0, nr).t(), da_mm);
    grad_h.narrow(0, r0, nr).copy_(at::mm(da_mm, P_mm.t()));
  }
  if (cpu_lp && compute_grad && !gU_out.defined()) gU_out = at::zeros({d.C, d.V}, h.options());  // no rows
  const auto loss = loss_rows.sum();
  if (!compute_grad) {
    auto none = [&] { return at::empty({0}, h.options()); };  // distinct tensors: outputs must not alias
    return {loss, none(), none(), none(), none(), none()};
  }
  return {loss, grad_h.view(h.sizes()), gP.to(dt), gp.to(dt), cpu_lp ? gU_out : gU.to(dt), gu.to(dt)};
}

}  // namespace elf_fast
