// Decode head, CUDA row kernels: the running argmax of unembed_argmax and the
// per-row cross-entropy (+ gradient) of linear_cross_entropy. The device-generic
// drivers (decode_head.cpp) run the GEMMs tile by tile and call these on each
// fp32 logits block; contracts: ArgmaxUpdateFn / CrossEntropyRowsFn in elf_fast.h.
#include <cmath>
#include <cstdint>
#include <limits>

#include "runtime.h"

namespace elf_fast {
namespace {

constexpr int kThreads = 256;  // one block per row
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- argmax ------------------------------------------------------------------

// Larger value wins; on equal values the lower index wins. NaN never wins
// (every comparison with it is false), so rows holding NaN give unspecified ids.
__device__ __forceinline__ void argmax_merge(float& v, int64_t& i, float v2, int64_t i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

// Block-wide argmax; the result is valid in thread 0.
__device__ __forceinline__ void block_argmax(float& v, int64_t& i) {
  EF_SHARED_ARRAY(float, s_val, kWarps);
  EF_SHARED_ARRAY(int64_t, s_idx, kWarps);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float v2 = __shfl_xor_sync(kFullMask, v, off);
    const int64_t i2 = __shfl_xor_sync(kFullMask, i, off);
    argmax_merge(v, i, v2, i2);
  }
  if (lane == 0) {
    s_val[warp] = v;
    s_idx[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? s_val[lane] : -INFINITY;
    i = lane < kWarps ? s_idx[lane] : INT64_MAX;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const float v2 = __shfl_xor_sync(kFullMask, v, off);
      const int64_t i2 = __shfl_xor_sync(kFullMask, i, off);
      argmax_merge(v, i, v2, i2);
    }
  }
}

// grid: (rows,). logits row r starts at logits + r * ld; bias (tile,).
__global__ void __launch_bounds__(kThreads)
    argmax_update_kernel(const float* __restrict__ logits, int64_t ld, const float* __restrict__ bias, int64_t tile,
                         int64_t v0, float* __restrict__ best_val, int64_t* __restrict__ best_idx) {
  const int64_t row = blockIdx.x;
  const float* lr = logits + row * ld;
  // Each thread visits its columns in increasing order, so a strict > keeps
  // the lowest column among its equal maxima.
  float v = -INFINITY;
  int64_t idx = INT64_MAX;
  for (int64_t j = threadIdx.x; j < tile; j += kThreads) {
    const float x = lr[j] + bias[j];
    if (x > v) {
      v = x;
      idx = j;
    }
  }
  block_argmax(v, idx);
  // Strictly larger: earlier tiles (lower ids) keep ties.
  if (threadIdx.x == 0 && v > best_val[row]) {
    best_val[row] = v;
    best_idx[row] = v0 + idx;
  }
}

void check_fp32_cuda(const Tensor& t, const char* fn, const char* name, const Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "elf_fast.", fn, ": '", name, "' must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "elf_fast.", fn, ": '", name, "' is on ", t.device(), " but 'logits' is on ",
              ref.device());
}

// ArgmaxUpdateFn for CUDA: logits (rows, tile) fp32, row stride logits.stride(0),
// column stride 1; bias (tile,); best_val (rows,) fp32; best_idx (rows,) int64.
void argmax_update_cuda(const Tensor& logits, const Tensor& bias, int64_t v0, Tensor& best_val, Tensor& best_idx) {
  constexpr const char* fn = "unembed_argmax";
  gpu::check_on_device(fn, logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "elf_fast.", fn, ": 'logits' must be 2-D (rows, tile), got ", logits.sizes());
  check_fp32_cuda(logits, fn, "logits", logits);
  const int64_t rows = logits.size(0), tile = logits.size(1);
  TORCH_CHECK(tile <= 1 || logits.stride(1) == 1, "elf_fast.", fn, ": 'logits' must have column stride 1, got ",
              logits.strides());
  check_fp32_cuda(bias, fn, "bias", logits);
  check_shape(bias, "bias", {tile});
  TORCH_CHECK(bias.is_contiguous(), "elf_fast.", fn, ": 'bias' must be contiguous");
  check_fp32_cuda(best_val, fn, "best_val", logits);
  check_shape(best_val, "best_val", {rows});
  TORCH_CHECK(best_val.is_contiguous(), "elf_fast.", fn, ": 'best_val' must be contiguous");
  TORCH_CHECK(best_idx.scalar_type() == at::kLong, "elf_fast.", fn, ": 'best_idx' must be int64, got ",
              best_idx.scalar_type());
  TORCH_CHECK(best_idx.device() == logits.device(), "elf_fast.", fn, ": 'best_idx' is on ", best_idx.device(),
              " but 'logits' is on ", logits.device());
  check_shape(best_idx, "best_idx", {rows});
  TORCH_CHECK(best_idx.is_contiguous(), "elf_fast.", fn, ": 'best_idx' must be contiguous");
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "elf_fast.", fn, ": too many rows (", rows, ")");
  if (rows == 0 || tile == 0) return;

  const gpu::DeviceGuard device_guard(logits.device());
  gpu::launch<argmax_update_kernel>({static_cast<unsigned>(rows), kThreads, 0, gpu::current_stream()},
                                    logits.const_data_ptr<float>(), logits.stride(0), bias.const_data_ptr<float>(),
                                    tile, v0, best_val.mutable_data_ptr<float>(), best_idx.mutable_data_ptr<int64_t>());
}

// ---- cross-entropy -------------------------------------------------------------

// Online log-sum-exp state: max m and s = sum exp(x - m). Merges (m2, s2) into
// (m, s). -inf terms contribute nothing; a NaN m2 makes m and s NaN for good
// (later merges keep them NaN), so NaN logits give a NaN loss as in PyTorch.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  if (m2 > m || isnan(m2)) {
    s = s * expf(m - m2) + s2;  // m == -inf gives s * 0
    m = m2;
  } else if (m2 != -INFINITY) {
    s += s2 * expf(m2 - m);
  }
}

// Block-wide log-sum-exp; every thread gets m + log(s).
__device__ __forceinline__ float block_lse(float m, float s) {
  EF_SHARED_ARRAY(float, s_m, kWarps);
  EF_SHARED_ARRAY(float, s_s, kWarps);
  EF_SHARED_VAR(float, s_lse);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float m2 = __shfl_xor_sync(kFullMask, m, off);
    const float s2 = __shfl_xor_sync(kFullMask, s, off);
    lse_merge(m, s, m2, s2);
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < kWarps ? s_m[lane] : -INFINITY;
    s = lane < kWarps ? s_s[lane] : 0.f;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const float m2 = __shfl_xor_sync(kFullMask, m, off);
      const float s2 = __shfl_xor_sync(kFullMask, s, off);
      lse_merge(m, s, m2, s2);
    }
    if (lane == 0) s_lse = m + logf(s);
  }
  __syncthreads();
  return s_lse;
}

// grid: (rows,). logits (rows, V) contiguous, overwritten with the gradient if
// compute_grad; bias (V,); targets, weight, loss_rows (rows,).
__global__ void __launch_bounds__(kThreads)
    cross_entropy_rows_kernel(float* __restrict__ logits, const float* __restrict__ bias,
                              const int64_t* __restrict__ targets, const float* __restrict__ weight,
                              float* __restrict__ loss_rows, int64_t V, bool compute_grad) {
  const int64_t row = blockIdx.x;
  float* lr = logits + row * V;
  const int64_t target = targets[row];
  // The op's only check of the target ids (the driver does not read them: no host sync). Before
  // the zero-weight return, so that a bad id is an error on every row, as on the CPU and in the
  // reference. On a GPU a failed assert is a device-side assert (it poisons the CUDA context);
  // under the emulator a RuntimeError naming this condition.
  CUDA_KERNEL_ASSERT(target < V && "linear_cross_entropy: a target id is >= the vocabulary size");
  const float w = target >= 0 ? weight[row] : 0.f;

  // Zero-weight rows (ignored or masked): loss 0, gradient 0; w is uniform in
  // the block, so the early return is safe around the barriers below.
  if (w == 0.f) {
    if (threadIdx.x == 0) loss_rows[row] = 0.f;
    if (compute_grad) {
      for (int64_t j = threadIdx.x; j < V; j += kThreads) lr[j] = 0.f;
    }
    return;
  }

  // Read the target logit before the barriers in block_lse: pass 2 overwrites it.
  const float x_target = threadIdx.x == 0 ? lr[target] + bias[target] : 0.f;

  // Pass 1: online max + sum of exp.
  float m = -INFINITY, s = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) lse_merge(m, s, lr[j] + bias[j], 1.f);
  const float lse = block_lse(m, s);

  if (threadIdx.x == 0) loss_rows[row] = w * (lse - x_target);

  // Pass 2: w * (softmax - onehot(target)) in place.
  if (compute_grad) {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) {
      lr[j] = w * (expf(lr[j] + bias[j] - lse) - (j == target ? 1.f : 0.f));
    }
  }
}

// CrossEntropyRowsFn for CUDA: logits (rows, V) fp32 contiguous; bias (V,) fp32;
// targets (rows,) int64 (negative = ignored, else < V: asserted on the device); weight (rows,) fp32;
// loss_rows (rows,) fp32 output.
void cross_entropy_rows_cuda(Tensor& logits, const Tensor& bias, const Tensor& targets, const Tensor& weight,
                             Tensor& loss_rows, bool compute_grad) {
  constexpr const char* fn = "linear_cross_entropy";
  gpu::check_on_device(fn, logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "elf_fast.", fn, ": 'logits' must be 2-D (rows, V), got ", logits.sizes());
  check_fp32_cuda(logits, fn, "logits", logits);
  TORCH_CHECK(logits.is_contiguous(), "elf_fast.", fn, ": 'logits' must be contiguous");
  const int64_t rows = logits.size(0), V = logits.size(1);
  check_fp32_cuda(bias, fn, "bias", logits);
  check_shape(bias, "bias", {V});
  TORCH_CHECK(bias.is_contiguous(), "elf_fast.", fn, ": 'bias' must be contiguous");
  TORCH_CHECK(targets.scalar_type() == at::kLong, "elf_fast.", fn, ": 'targets' must be int64, got ",
              targets.scalar_type());
  TORCH_CHECK(targets.device() == logits.device(), "elf_fast.", fn, ": 'targets' is on ", targets.device(),
              " but 'logits' is on ", logits.device());
  check_shape(targets, "targets", {rows});
  TORCH_CHECK(targets.is_contiguous(), "elf_fast.", fn, ": 'targets' must be contiguous");
  check_fp32_cuda(weight, fn, "weight", logits);
  check_shape(weight, "weight", {rows});
  TORCH_CHECK(weight.is_contiguous(), "elf_fast.", fn, ": 'weight' must be contiguous");
  check_fp32_cuda(loss_rows, fn, "loss_rows", logits);
  check_shape(loss_rows, "loss_rows", {rows});
  TORCH_CHECK(loss_rows.is_contiguous(), "elf_fast.", fn, ": 'loss_rows' must be contiguous");
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "elf_fast.", fn, ": too many rows (", rows, ")");
  TORCH_CHECK(V > 0, "elf_fast.", fn, ": vocabulary size must be > 0");
  if (rows == 0) return;

  const gpu::DeviceGuard device_guard(logits.device());
  gpu::launch<cross_entropy_rows_kernel>({static_cast<unsigned>(rows), kThreads, 0, gpu::current_stream()},
                                         logits.mutable_data_ptr<float>(), bias.const_data_ptr<float>(),
                                         targets.const_data_ptr<int64_t>(), weight.const_data_ptr<float>(),
                                         loss_rows.mutable_data_ptr<float>(), V, compute_grad);
}

// ---- registered entry points ------------------------------------------------------

std::tuple<Tensor, Tensor> unembed_argmax_cuda(const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U,
                                               const Tensor& u, int64_t vocab_tile) {
  gpu::check_on_device("unembed_argmax", h, "h");
  const gpu::DeviceGuard device_guard(h.device());
  return unembed_argmax_driver(h, P, p, U, u, vocab_tile, &argmax_update_cuda);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_cuda(
    const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U, const Tensor& u, const Tensor& targets,
    const std::optional<Tensor>& weight, bool compute_grad, int64_t chunk) {
  gpu::check_on_device("linear_cross_entropy", h, "h");
  const gpu::DeviceGuard device_guard(h.device());
  return linear_cross_entropy_driver(h, P, p, U, u, targets, weight, compute_grad, chunk, &cross_entropy_rows_cuda);
}

}  // namespace

ELF_FAST_GPU_IMPL(m) {
  m.impl("unembed_argmax", &unembed_argmax_cuda);
  m.impl("linear_cross_entropy", &linear_cross_entropy_cuda);
}

}  // namespace elf_fast
