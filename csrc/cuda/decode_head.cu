// Decode head, CUDA kernels. unembed_argmax: the candidate search over each block of
// bf16-pass logits and the fp32 rescoring of the exact driver (decode_head.cpp,
// unembed_argmax_exact_driver; contracts ArgmaxCandidatesFn / ArgmaxRescoreFn in
// elf_fast.h). linear_cross_entropy: the per-row cross-entropy (+ gradient) on each
// fp32 logits block of its driver (CrossEntropyRowsFn).
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
// (every comparison with it is false): a row's id is the arg max of its non-NaN
// logits, id 0 (value -inf) when it has none, as on the CPU and in the reference.
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

void check_fp32_cuda(const Tensor& t, const char* fn, const char* name, const Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "elf_fast.", fn, ": '", name, "' must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "elf_fast.", fn, ": '", name, "' is on ", t.device(), " but 'logits' is on ",
              ref.device());
}

// ---- exact argmax from the bf16 pass: candidates, then fp32 rescoring --------------

// E_j of ApproxLogitBound (elf_fast.h): how far the bf16-pass logit a (bias included)
// of an id with column norm un may lie from its fp32 logit, for a row of norm yn.
__device__ __forceinline__ float approx_error(const ApproxLogitBound& b, float a, float bias, float yn, float un) {
  return b.eps_s * (yn * un) + b.abs_in * (yn + un) + b.eps_u * fabsf(bias) + b.rel * fabsf(a) + b.tiny;
}

// Block-wide max and "any" flag over a block of any whole number of warps (<= kThreads);
// every thread gets both.
__device__ __forceinline__ void block_max_any(float& m, int& any) {
  EF_SHARED_ARRAY(float, s_max, kWarps);
  EF_SHARED_ARRAY(int, s_any, kWarps);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    m = fmaxf(m, __shfl_xor_sync(kFullMask, m, off));
    any |= __shfl_xor_sync(kFullMask, any, off);
  }
  if (lane == 0) {
    s_max[warp] = m;
    s_any[warp] = any;
  }
  __syncthreads();
  m = s_max[0];
  any = s_any[0];
  for (int w = 1; w < warps; ++w) {
    m = fmaxf(m, s_max[w]);
    any |= s_any[w];
  }
}

// grid: (rows,). approx row r: approx + r * ld (tile columns, ids v0...); bias, col_norm
// (tile,); row_norm, threshold, cand_count (rows,); cand_ub, cand_id (rows, K).
// Keeps, per row, every id j with a_j + E_j >= T, where T = max over the ids seen so far
// of a_i - E_i: the fp32 maximum r_max >= r_i >= a_i - E_i, so the arg max has
// a_j + E_j >= r_j = r_max >= T. The kept list is pruned against each new T.
__global__ void __launch_bounds__(kThreads)
    argmax_candidates_kernel(const float* __restrict__ approx, int64_t ld, const float* __restrict__ bias,
                             const float* __restrict__ col_norm, int64_t tile, int64_t v0,
                             const float* __restrict__ row_norm, ApproxLogitBound b, float* __restrict__ threshold,
                             float* __restrict__ cand_ub, int32_t* __restrict__ cand_id,
                             int32_t* __restrict__ cand_count) {
  constexpr int K = static_cast<int>(kMaxArgmaxCandidates);
  EF_SHARED_VAR(int, s_count);
  const int64_t row = blockIdx.x;
  const int count0 = cand_count[row];
  if (count0 < 0) return;  // already to be rescored in full (uniform across the block)
  const float* ar = approx + row * ld;
  const float yn = row_norm[row];

  // Pass 1: this tile's max of a_j - E_j. An id with a = -inf (a masked token) can never
  // be the unique maximum and is skipped; NaN, +inf or a non-finite bound send the row to
  // the full rescoring.
  float lo = -INFINITY;
  int bad = 0;
  for (int64_t j = threadIdx.x; j < tile; j += blockDim.x) {
    const float a = ar[j] + bias[j];
    if (a == -INFINITY) continue;
    const float e = approx_error(b, a, bias[j], yn, col_norm[j]);
    if (!isfinite(a) || !isfinite(e)) {
      bad = 1;
    } else {
      lo = fmaxf(lo, a - e);
    }
  }
  block_max_any(lo, bad);
  const float T = fmaxf(threshold[row], lo);
  if (bad) {
    if (threadIdx.x == 0) cand_count[row] = -1;
    return;
  }
  float* ub_r = cand_ub + row * K;
  int32_t* id_r = cand_id + row * K;
  // Prune the kept ids against the new threshold (thread 0; at most K entries).
  if (threadIdx.x == 0) {
    int n = 0;
    for (int c = 0; c < count0; ++c) {
      if (ub_r[c] >= T) {
        ub_r[n] = ub_r[c];
        id_r[n] = id_r[c];
        ++n;
      }
    }
    s_count = n;
  }
  __syncthreads();
  // Pass 2: append this tile's ids that reach T.
  for (int64_t j = threadIdx.x; j < tile; j += blockDim.x) {
    const float a = ar[j] + bias[j];
    if (a == -INFINITY) continue;
    const float ub = a + approx_error(b, a, bias[j], yn, col_norm[j]);
    if (ub >= T) {
      const int slot = atomicAdd(&s_count, 1);
      if (slot < K) {
        ub_r[slot] = ub;
        id_r[slot] = static_cast<int32_t>(v0 + j);
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int n = s_count;
    cand_count[row] = n > K ? -1 : n;
    threshold[row] = T;
  }
}

// grid: (N,). One warp per kept id: the fp32 dot product y_r . U^T_j (lanes over k, then a
// butterfly sum) plus the bias. Rows rescored in full (cand_count <= 0) are
// argmax_full_rows_kernel's: they return at once here.
__global__ void __launch_bounds__(kThreads)
    argmax_rescore_kernel(const float* __restrict__ y, const float* __restrict__ Ut, const float* __restrict__ bias,
                          int64_t C, int64_t V, const float* __restrict__ threshold,
                          const float* __restrict__ cand_ub, const int32_t* __restrict__ cand_id,
                          const int32_t* __restrict__ cand_count, int64_t* __restrict__ best_idx,
                          float* __restrict__ best_val) {
  constexpr int K = static_cast<int>(kMaxArgmaxCandidates);
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* yr = y + row * C;
  const int n = cand_count[row];
  // -1 (too many or non-finite) or 0 (nothing finite kept): argmax_full_rows_kernel's row
  if (n <= 0) return;  // uniform across the block
  const float T = threshold[row];
  float v = -INFINITY;
  int64_t idx = INT64_MAX;
  for (int c = warp; c < n; c += kWarps) {
    if (!(cand_ub[row * K + c] >= T)) continue;  // kept before T rose (warp-uniform)
    const int64_t j = cand_id[row * K + c];
    const float* ur = Ut + j * C;
    float s = 0.f;
    for (int64_t k = lane; k < C; k += 32) s += yr[k] * ur[k];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(kFullMask, s, off);
    argmax_merge(v, idx, s + bias[j], j);
  }
  block_argmax(v, idx);
  if (threadIdx.x == 0) {
    best_idx[row] = idx == INT64_MAX ? 0 : idx;  // a row of NaN only: id 0, like the running argmax
    best_val[row] = v;
  }
}

// grid: (ceil(N / kFullRows),). The rows rescored over the whole vocabulary (cand_count <= 0:
// more than K near-ties, NaN or +inf, nothing finite kept), kFullRows at a time: a tiled fp32
// GEMM of those rows against U^T (kFullIds ids x kFullK channels staged in shared memory, each
// thread 2 rows x 4 ids) with the running argmax as its epilogue. U^T is read once per
// kFullRows such rows, where one block per row (one warp per id) read all of it for every row:
// a batch of near-uniform logits (an untrained model, NaN inputs) costs an fp32 GEMM, not N
// passes over U. A block whose rows all have candidates returns after one look at their counts.
constexpr int kFullRows = 32;
constexpr int kFullIds = 64;
constexpr int kFullK = 32;

__global__ void __launch_bounds__(kThreads)
    argmax_full_rows_kernel(const float* __restrict__ y, const float* __restrict__ Ut,
                            const float* __restrict__ bias, int64_t N, int64_t C, int64_t V,
                            const int32_t* __restrict__ cand_count, int64_t* __restrict__ best_idx,
                            float* __restrict__ best_val) {
  static_assert(kThreads == 16 * (kFullRows / 2) && kFullIds == 4 * 16, "2 rows x 4 ids a thread");
  EF_SHARED_ARRAY(int64_t, s_rows, kFullRows);  // this block's full rows, compacted
  EF_SHARED_VAR(int, s_nrows);
  EF_SHARED_ARRAY2(float, s_y, kFullRows, kFullK + 1);
  EF_SHARED_ARRAY2(float, s_u, kFullIds, kFullK + 1);
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kFullRows;
  if (tid == 0) {
    int n = 0;
    for (int i = 0; i < kFullRows && r0 + i < N; ++i) {
      if (cand_count[r0 + i] <= 0) s_rows[n++] = r0 + i;
    }
    s_nrows = n;
  }
  __syncthreads();
  const int nrows = s_nrows;
  if (nrows == 0) return;  // uniform across the block
  const int ty = tid / 16, tx = tid % 16;  // rows 2 ty, 2 ty + 1 of the block; ids 4 tx .. 4 tx + 3 of a tile
  float bv[2] = {-INFINITY, -INFINITY};
  int64_t bi[2] = {INT64_MAX, INT64_MAX};
  for (int64_t v0 = 0; v0 < V; v0 += kFullIds) {
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    for (int64_t k0 = 0; k0 < C; k0 += kFullK) {
      __syncthreads();  // the previous chunk is consumed
      for (int i = tid; i < kFullRows * kFullK; i += kThreads) {
        const int r = i / kFullK, k = i % kFullK;
        s_y[r][k] = r < nrows && k0 + k < C ? y[s_rows[r] * C + k0 + k] : 0.f;
      }
      for (int i = tid; i < kFullIds * kFullK; i += kThreads) {
        const int n = i / kFullK, k = i % kFullK;
        s_u[n][k] = v0 + n < V && k0 + k < C ? Ut[(v0 + n) * C + k0 + k] : 0.f;
      }
      __syncthreads();
      for (int k = 0; k < kFullK; ++k) {
        const float a0 = s_y[2 * ty][k], a1 = s_y[2 * ty + 1][k];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float b = s_u[4 * tx + j][k];
          acc[0][j] += a0 * b;
          acc[1][j] += a1 * b;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t id = v0 + 4 * tx + j;
        if (id < V) argmax_merge(bv[i], bi[i], acc[i][j] + bias[id], id);
      }
    }
  }
  // over the 16 threads of each row pair (a half-warp: xor offsets below 16 stay inside it)
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int off = 8; off > 0; off /= 2) {
      const float v2 = __shfl_xor_sync(kFullMask, bv[i], off);
      const int64_t i2 = __shfl_xor_sync(kFullMask, bi[i], off);
      argmax_merge(bv[i], bi[i], v2, i2);
    }
    const int r = 2 * ty + i;
    if (tx == 0 && r < nrows) {
      best_idx[s_rows[r]] = bi[i] == INT64_MAX ? 0 : bi[i];  // a row of NaN only: id 0, like the running argmax
      best_val[s_rows[r]] = bv[i];
    }
  }
}

// ---- the fused form: bf16 tensor-core GEMM with the candidate search as its epilogue ----
// One CTA owns kFM rows for the whole vocabulary: it keeps their bf16 rows (A) in shared
// memory, walks the vocabulary in tiles of kFN columns (B = bf16 U^T rows, staged kFK deep),
// computes each (kFM x kFN) tile of a_j in registers with mma.sync (8 warps in 4 x 2, 32 rows
// x 64 columns each) and runs argmax_candidates_kernel's two passes on it there: no logits
// block is written. U^T is read once per CTA (N / kFM times in all, from L2): 128 rows per
// CTA keep that traffic near the GEMM's own time. Needs C % 16 == 0, C <= kFusedMaxC and
// fused_smem_bytes(C) within the device's shared memory per block (all of it dynamic: at C 512
// 183 KiB, which fits sm_90's 227 KiB but not sm_80's 163 KiB or sm_86/89's 99 KiB; there the
// launcher declines and the driver runs the blocked form).
constexpr int kFM = 128;
constexpr int kFN = 128;
constexpr int kFK = 64;
constexpr int kFusedThreads = 256;
constexpr int64_t kFusedMaxC = 640;
constexpr int kBS = kFK / 2 + 4;  // B row stride in words (+4: rows start 4 banks apart)
// Row state after the A and B tiles, in 4-byte words: T, count, K (ub, id) pairs, and the two
// column warps' partial (lo, bad) per row.
constexpr int kRowStateWords = kFM * (2 + 2 * static_cast<int>(kMaxArgmaxCandidates) + 4);

// The fused kernel's shared memory per block, bytes: A (kFM rows of C/2 + 4 words), the B stage
// (kFN x kBS words) and the row state.
constexpr size_t fused_smem_bytes(int64_t C) {
  return sizeof(uint32_t) * static_cast<size_t>(kFM * (C / 2 + 4) + kFN * kBS + kRowStateWords);
}

__global__ void __launch_bounds__(kFusedThreads)
    fused_argmax_candidates_kernel(const uint32_t* __restrict__ y2, const uint32_t* __restrict__ ut2,
                                   const float* __restrict__ bias, const float* __restrict__ col_norm,
                                   const float* __restrict__ row_norm, int64_t N, int64_t V, int C,
                                   ApproxLogitBound b, float* __restrict__ threshold, float* __restrict__ cand_ub,
                                   int32_t* __restrict__ cand_id, int32_t* __restrict__ cand_count) {
  constexpr int K = static_cast<int>(kMaxArgmaxCandidates);
  EF_SHARED_DYNAMIC(uint32_t, smem);  // fused_smem_bytes(C): A, the B stage, the row state
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kFM;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int wm = warp / 2, wn = warp % 2;  // this warp's rows wm*32.., columns wn*64..
  const int CW = C / 2, AS = CW + 4;       // words per row of y2 / of A in shared memory
  auto A_s = smem;
  auto B_s = smem + kFM * AS;
  auto state = B_s + kFN * kBS;
  auto s_T = gpu::shared_as<float>(state);          // (kFM,) running threshold
  auto s_cnt = gpu::shared_as<int>(state + kFM);    // (kFM,) kept ids (> K: rescore in full)
  auto s_ub = gpu::shared_as<float>(state + 2 * kFM);             // (kFM, K)
  auto s_id = gpu::shared_as<int>(state + (2 + K) * kFM);         // (kFM, K)
  auto s_lo = gpu::shared_as<float>(state + (2 + 2 * K) * kFM);   // (2, kFM)
  auto s_bad = gpu::shared_as<int>(state + (4 + 2 * K) * kFM);    // (2, kFM)

  for (int i = tid; i < kFM * CW; i += kFusedThreads) {
    const int r = i / CW, w = i % CW;
    A_s[r * AS + w] = row0 + r < N ? y2[(row0 + r) * CW + w] : 0u;
  }
  for (int r = tid; r < kFM; r += kFusedThreads) {
    s_T[r] = -INFINITY;
    s_cnt[r] = 0;
  }
  float yn[2][2];  // norms of this thread's rows wm*32 + mi*16 + g + 8 hh
  #pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    #pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int64_t row = row0 + wm * 32 + mi * 16 + g + 8 * hh;
      yn[mi][hh] = row < N ? row_norm[row] : 0.f;
    }
  }

  for (int64_t v0 = 0; v0 < V; v0 += kFN) {
    float acc[2][8][4];
    #pragma unroll
    for (int mi = 0; mi < 2; ++mi)
      #pragma unroll
      for (int ni = 0; ni < 8; ++ni)
        #pragma unroll
        for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
    for (int k0 = 0; k0 < C; k0 += kFK) {
      const int kw = min(kFK, C - k0) / 2;  // words this stage (a multiple of 8)
      __syncthreads();                      // A is loaded; the previous stage's B is consumed
      for (int i = tid; i < kFN * kw; i += kFusedThreads) {
        const int n = i / kw, w = i % kw;
        B_s[n * kBS + w] = v0 + n < V ? ut2[(v0 + n) * CW + k0 / 2 + w] : 0u;
      }
      __syncthreads();
      for (int ks = 0; ks < 2 * kw; ks += 16) {
        const int aw = (k0 + ks) / 2, bw = ks / 2;
        uint32_t a[2][4], bf[8][2];
        #pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int r = wm * 32 + mi * 16 + g;
          a[mi][0] = A_s[r * AS + aw + t];
          a[mi][1] = A_s[(r + 8) * AS + aw + t];
          a[mi][2] = A_s[r * AS + aw + t + 4];
          a[mi][3] = A_s[(r + 8) * AS + aw + t + 4];
        }
        #pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
          const int n = wn * 64 + ni * 8 + g;
          bf[ni][0] = B_s[n * kBS + bw + t];
          bf[ni][1] = B_s[n * kBS + bw + t + 4];
        }
        #pragma unroll
        for (int mi = 0; mi < 2; ++mi)
          #pragma unroll
          for (int ni = 0; ni < 8; ++ni) gpu::mma_bf16_m16n8k16(acc[mi][ni], a[mi], bf[ni]);
      }
    }

    // Epilogue, pass 1: per row, this tile's max of a_j - E_j (element (mi, ni, r) is row
    // wm*32 + mi*16 + g + 8 (r/2), column wn*64 + ni*8 + 2t + r%2), over the quad's four
    // lanes, then over the two column warps through shared memory.
    float lo[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};
    int bad[2][2] = {{0, 0}, {0, 0}};
    #pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      #pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int64_t v = v0 + wn * 64 + ni * 8 + 2 * t + r % 2;
          if (v >= V) continue;
          const float a = acc[mi][ni][r] + bias[v];
          acc[mi][ni][r] = a;
          if (a == -INFINITY) continue;
          const float e = approx_error(b, a, bias[v], yn[mi][r / 2], col_norm[v]);
          if (!isfinite(a) || !isfinite(e)) {
            bad[mi][r / 2] = 1;
          } else {
            lo[mi][r / 2] = fmaxf(lo[mi][r / 2], a - e);
          }
        }
      }
    }
    #pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      #pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        #pragma unroll
        for (int off = 1; off < 4; off *= 2) {
          lo[mi][hh] = fmaxf(lo[mi][hh], __shfl_xor_sync(kFullMask, lo[mi][hh], off));
          bad[mi][hh] |= __shfl_xor_sync(kFullMask, bad[mi][hh], off);
        }
        if (t == 0) {
          const int row = wm * 32 + mi * 16 + g + 8 * hh;
          s_lo[wn * kFM + row] = lo[mi][hh];
          s_bad[wn * kFM + row] = bad[mi][hh];
        }
      }
    }
    __syncthreads();
    // The new threshold per row; prune its kept ids (one thread per row). A count above K
    // means the row is rescored in full: it stays so.
    if (tid < kFM) {
      float T = s_T[tid];
      int any_bad = 0;
      #pragma unroll
      for (int w = 0; w < 2; ++w) {
        T = fmaxf(T, s_lo[w * kFM + tid]);
        any_bad |= s_bad[w * kFM + tid];
      }
      int n = s_cnt[tid];
      if (any_bad) {
        n = K + 1;
      } else if (n <= K) {
        int kept = 0;
        for (int c = 0; c < n; ++c) {
          if (s_ub[tid * K + c] >= T) {
            s_ub[tid * K + kept] = s_ub[tid * K + c];
            s_id[tid * K + kept] = s_id[tid * K + c];
            ++kept;
          }
        }
        n = kept;
      }
      s_T[tid] = T;
      s_cnt[tid] = n;
    }
    __syncthreads();
    // Pass 2: keep the ids that reach the row's threshold.
    #pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      #pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int64_t v = v0 + wn * 64 + ni * 8 + 2 * t + r % 2;
          const float a = acc[mi][ni][r];
          if (v >= V || a == -INFINITY) continue;
          const int row = wm * 32 + mi * 16 + g + 8 * (r / 2);
          const float ub = a + approx_error(b, a, bias[v], yn[mi][r / 2], col_norm[v]);
          if (ub >= s_T[row]) {
            const int slot = atomicAdd(&s_cnt[row], 1);
            if (slot < K) {
              s_ub[row * K + slot] = ub;
              s_id[row * K + slot] = static_cast<int>(v);
            }
          }
        }
      }
    }
    __syncthreads();
  }

  for (int r = tid; r < kFM; r += kFusedThreads) {
    if (row0 + r >= N) continue;
    const int n = s_cnt[r];
    threshold[row0 + r] = s_T[r];
    cand_count[row0 + r] = n > K ? -1 : n;
    // a row rescored in full (n > K) has no list to copy: its slots may never have been written
    for (int c = 0; c < (n > K ? 0 : n); ++c) {
      cand_ub[(row0 + r) * K + c] = s_ub[r * K + c];
      cand_id[(row0 + r) * K + c] = s_id[r * K + c];
    }
  }
}

void check_contiguous_on(const char* fn, const Tensor& t, const char* name, at::ScalarType dt,
                         at::IntArrayRef shape, const Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == dt, "elf_fast.", fn, ": '", name, "' must be ", dt, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "elf_fast.", fn, ": '", name, "' is on ", t.device(), " but the logits are on ",
              ref.device());
  check_shape(t, name, shape);
  TORCH_CHECK(t.is_contiguous(), "elf_fast.", fn, ": '", name, "' must be contiguous");
}

// The per-row candidate state of ArgmaxCandidatesFn / ArgmaxRescoreFn (elf_fast.h), `rows` rows.
void check_candidate_state(const char* fn, int64_t rows, const Tensor& threshold, const Tensor& cand_ub,
                           const Tensor& cand_id, const Tensor& cand_count, const Tensor& ref) {
  const int64_t K = kMaxArgmaxCandidates;
  check_contiguous_on(fn, threshold, "threshold", at::kFloat, {rows}, ref);
  check_contiguous_on(fn, cand_ub, "cand_ub", at::kFloat, {rows, K}, ref);
  check_contiguous_on(fn, cand_id, "cand_id", at::kInt, {rows, K}, ref);
  check_contiguous_on(fn, cand_count, "cand_count", at::kInt, {rows}, ref);
}

// ArgmaxCandidatesFn for CUDA (contract in elf_fast.h).
void argmax_candidates_cuda(const Tensor& approx, const Tensor& bias, const Tensor& col_norm, int64_t v0,
                            const Tensor& row_norm, const ApproxLogitBound& bound, Tensor& threshold,
                            Tensor& cand_ub, Tensor& cand_id, Tensor& cand_count) {
  constexpr const char* fn = "unembed_argmax";
  gpu::check_on_device(fn, approx, "approx");
  TORCH_CHECK(approx.dim() == 2 && approx.scalar_type() == at::kFloat, "elf_fast.", fn,
              ": 'approx' must be 2-D fp32, got ", approx.sizes(), " ", approx.scalar_type());
  const int64_t rows = approx.size(0), tile = approx.size(1);
  TORCH_CHECK(tile <= 1 || approx.stride(1) == 1, "elf_fast.", fn, ": 'approx' must have column stride 1");
  check_contiguous_on(fn, bias, "bias", at::kFloat, {tile}, approx);
  check_contiguous_on(fn, col_norm, "col_norm", at::kFloat, {tile}, approx);
  check_contiguous_on(fn, row_norm, "row_norm", at::kFloat, {rows}, approx);
  check_candidate_state(fn, rows, threshold, cand_ub, cand_id, cand_count, approx);
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "elf_fast.", fn, ": too many rows (", rows, ")");
  if (rows == 0 || tile == 0) return;
  const gpu::DeviceGuard device_guard(approx.device());
  // A narrow tile gets a narrow block (whole warps, at most kThreads).
  const auto threads = static_cast<unsigned>(std::min<int64_t>(kThreads, (tile + 31) / 32 * 32));
  gpu::launch<argmax_candidates_kernel>(
      {static_cast<unsigned>(rows), threads, 0, gpu::current_stream()}, approx.const_data_ptr<float>(),
      approx.stride(0), bias.const_data_ptr<float>(), col_norm.const_data_ptr<float>(), tile, v0,
      row_norm.const_data_ptr<float>(), bound, threshold.mutable_data_ptr<float>(), cand_ub.mutable_data_ptr<float>(),
      cand_id.mutable_data_ptr<int32_t>(), cand_count.mutable_data_ptr<int32_t>());
}

// ArgmaxFusedFn for CUDA (contract in elf_fast.h): false when this head or device cannot
// take the fused kernel (the driver then uses the blocked GEMM + argmax_candidates_cuda).
bool argmax_candidates_fused_cuda(const Tensor& y_lp, const Tensor& Ut_lp, const Tensor& bias, const Tensor& col_norm,
                                  const Tensor& row_norm, const ApproxLogitBound& bound, Tensor& threshold,
                                  Tensor& cand_ub, Tensor& cand_id, Tensor& cand_count) {
  constexpr const char* fn = "unembed_argmax";
  gpu::check_on_device(fn, y_lp, "y_lp");
  const int64_t N = y_lp.size(0), C = y_lp.size(1), V = Ut_lp.size(0);
  if (C % 16 != 0 || C > kFusedMaxC || !gpu::tensor_cores_bf16(y_lp)) return false;
  const gpu::DeviceGuard device_guard(y_lp.device());
  const size_t smem = fused_smem_bytes(C);
  if (!gpu::smem_fits<fused_argmax_candidates_kernel>(y_lp, smem)) return false;  // e.g. C 512 before sm_90
  check_contiguous_on(fn, y_lp, "y_lp", at::kBFloat16, {N, C}, y_lp);
  check_contiguous_on(fn, Ut_lp, "Ut_lp", at::kBFloat16, {V, C}, y_lp);
  check_contiguous_on(fn, bias, "bias", at::kFloat, {V}, y_lp);
  check_contiguous_on(fn, col_norm, "col_norm", at::kFloat, {V}, y_lp);
  check_contiguous_on(fn, row_norm, "row_norm", at::kFloat, {N}, y_lp);
  check_candidate_state(fn, N, threshold, cand_ub, cand_id, cand_count, y_lp);
  if (N == 0) return true;
  gpu::allow_dynamic_smem<fused_argmax_candidates_kernel>(smem);
  // bf16 pairs as 32-bit words (rows of even length start 4-byte aligned)
  const auto* y2 = reinterpret_cast<const uint32_t*>(y_lp.const_data_ptr<at::BFloat16>());
  const auto* ut2 = reinterpret_cast<const uint32_t*>(Ut_lp.const_data_ptr<at::BFloat16>());
  gpu::launch<fused_argmax_candidates_kernel>(
      {static_cast<unsigned>((N + kFM - 1) / kFM), kFusedThreads, smem, gpu::current_stream()}, y2, ut2,
      bias.const_data_ptr<float>(), col_norm.const_data_ptr<float>(), row_norm.const_data_ptr<float>(), N, V,
      static_cast<int>(C), bound, threshold.mutable_data_ptr<float>(), cand_ub.mutable_data_ptr<float>(),
      cand_id.mutable_data_ptr<int32_t>(), cand_count.mutable_data_ptr<int32_t>());
  return true;
}

// ArgmaxRescoreFn for CUDA (contract in elf_fast.h).
void argmax_rescore_cuda(const Tensor& y, const Tensor& Ut, const Tensor& bias, const Tensor& threshold,
                         const Tensor& cand_ub, const Tensor& cand_id, const Tensor& cand_count, Tensor& best_idx,
                         Tensor& best_val) {
  constexpr const char* fn = "unembed_argmax";
  gpu::check_on_device(fn, y, "y");
  TORCH_CHECK(y.dim() == 2, "elf_fast.", fn, ": 'y' must be 2-D, got ", y.sizes());
  const int64_t N = y.size(0), C = y.size(1), V = Ut.size(0);
  check_contiguous_on(fn, y, "y", at::kFloat, {N, C}, y);
  check_contiguous_on(fn, Ut, "Ut", at::kFloat, {V, C}, y);
  check_contiguous_on(fn, bias, "bias", at::kFloat, {V}, y);
  check_candidate_state(fn, N, threshold, cand_ub, cand_id, cand_count, y);
  check_contiguous_on(fn, best_idx, "best_idx", at::kLong, {N}, y);
  check_contiguous_on(fn, best_val, "best_val", at::kFloat, {N}, y);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "elf_fast.", fn, ": too many rows (", N, ")");
  if (N == 0) return;
  const gpu::DeviceGuard device_guard(y.device());
  gpu::launch<argmax_full_rows_kernel>(
      {static_cast<unsigned>((N + kFullRows - 1) / kFullRows), kThreads, 0, gpu::current_stream()},
      y.const_data_ptr<float>(), Ut.const_data_ptr<float>(), bias.const_data_ptr<float>(), N, C, V,
      cand_count.const_data_ptr<int32_t>(), best_idx.mutable_data_ptr<int64_t>(), best_val.mutable_data_ptr<float>());
  gpu::launch<argmax_rescore_kernel>({static_cast<unsigned>(N), kThreads, 0, gpu::current_stream()},
                                     y.const_data_ptr<float>(), Ut.const_data_ptr<float>(),
                                     bias.const_data_ptr<float>(), C, V, threshold.const_data_ptr<float>(),
                                     cand_ub.const_data_ptr<float>(), cand_id.const_data_ptr<int32_t>(),
                                     cand_count.const_data_ptr<int32_t>(), best_idx.mutable_data_ptr<int64_t>(),
                                     best_val.mutable_data_ptr<float>());
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
  return unembed_argmax_exact_driver(h, P, p, U, u, vocab_tile, &argmax_candidates_cuda, &argmax_rescore_cuda,
                                     &argmax_candidates_fused_cuda);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_cuda(
    const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U, const Tensor& u, const Tensor& targets,
    const std::optional<Tensor>& weight, bool compute_grad, int64_t chunk) {
  gpu::check_on_device("linear_cross_entropy", h, "h");
  const gpu::DeviceGuard device_guard(h.device());
  return linear_cross_entropy_driver(h, P, p, U, u, targets, weight, compute_grad, chunk, &cross_entropy_rows_cuda,
                                     &tf32_split_cuda);
}

}  // namespace

ELF_FAST_GPU_IMPL(m) {
  m.impl("unembed_argmax", &unembed_argmax_cuda);
  m.impl("linear_cross_entropy", &linear_cross_entropy_cuda);
}

}  // namespace elf_fast
