// Self-condition projection on CUDA: the device-generic GEMM code of
// selfcond_proj.cpp, registered for the CUDA key with z's device made current
// so its allocations and library calls land on that device and stream.
// selfcond_proj_folded (inference), fp32: one fused kernel (both GEMMs per row tile, 3xTF32
// mma.sync with the split in registers, the intermediate in shared memory); where it does not
// apply (C or R not a multiple of 8, R > 128, before sm_80, ELF_FAST_SELFCOND_FUSED=0), 3xTF32
// through cuBLAS with operands split by tf32_split_kernel (csrc/split_gemm.h). The emulation
// build runs both forms on the CPU (mma emulated; cuBLAS replaced by fp32 GEMMs).
// selfcond_proj (training, differentiable) keeps plain GEMMs, which follow the global
// TF32 setting like every other fp32 GEMM of the network (docs/method.md §7.6).
#include <algorithm>
#include <limits>

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

// ---- selfcond_proj_folded, fused: both GEMMs per tile of kSM rows, 3xTF32 on tensor cores ----
// Stage 1: a = z M_z^T + x_prev M_x^T + b1 (kSM x R, R <= kSN) with z / x_prev and M staged
// through shared memory kSK columns at a time; a stays in shared memory. Stage 2: h0 = a W_p2^T
// + b_p2, kSN output columns at a time. Every fragment is split into TF32 hi + lo in registers
// (split_gemm.h's rule) and multiplied as lo.hi + hi.lo + hi.hi (three mma.sync m16n8k8), so
// nothing is split in memory and a never leaves the chip. 8 warps, 2 x 4, 32 x 32 each.
// Needs fp32, C % 8 == 0, R % 8 == 0, R <= kSN, sm_80+.
constexpr int kSM = 64;
constexpr int kSN = 128;
constexpr int kSK = 32;
constexpr int kSThreads = 256;
constexpr int kSS = kSK + 4;  // staged row stride in floats (+4: rows start 4 banks apart)
constexpr int kAS = kSN + 4;  // row stride of a in shared memory

__device__ __forceinline__ void split_fragment(float x, uint32_t& hi, uint32_t& lo) {
  float h, l;
  tf32_split(x, h, l);
  hi = __float_as_uint(h);
  lo = __float_as_uint(l);
}

// acc (this warp's 32 x 32 tile) += A[rows, ak .. ak+8) . B[cols, bk .. bk+8)^T in 3xTF32, with
// A row-major (stride as) and B holding the right operand's columns as rows (stride bs).
template <typename PA, typename PB>
__device__ __forceinline__ void warp_mma_3xtf32(float (&acc)[2][4][4], PA A, int as, int ak, PB B, int bs, int bk,
                                                int wm, int wn, int g, int t) {
  uint32_t ah[2][4], al[2][4], bh[4][2], bl[4][2];
  for (int mi = 0; mi < 2; ++mi) {
    const int r = wm * 32 + mi * 16 + g;
    split_fragment(A[r * as + ak + t], ah[mi][0], al[mi][0]);
    split_fragment(A[(r + 8) * as + ak + t], ah[mi][1], al[mi][1]);
    split_fragment(A[r * as + ak + t + 4], ah[mi][2], al[mi][2]);
    split_fragment(A[(r + 8) * as + ak + t + 4], ah[mi][3], al[mi][3]);
  }
  for (int ni = 0; ni < 4; ++ni) {
    const int n = wn * 32 + ni * 8 + g;
    split_fragment(B[n * bs + bk + t], bh[ni][0], bl[ni][0]);
    split_fragment(B[n * bs + bk + t + 4], bh[ni][1], bl[ni][1]);
  }
  for (int mi = 0; mi < 2; ++mi) {
    for (int ni = 0; ni < 4; ++ni) {
      gpu::mma_tf32_m16n8k8(acc[mi][ni], al[mi], bh[ni]);
      gpu::mma_tf32_m16n8k8(acc[mi][ni], ah[mi], bl[ni]);
      gpu::mma_tf32_m16n8k8(acc[mi][ni], ah[mi], bh[ni]);
    }
  }
}

__device__ __forceinline__ void zero_acc(float (&acc)[2][4][4]) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
}

// acc += part with fp32 round-to-nearest adds (CUDA cores). Each staged k chunk is accumulated
// by the tensor cores from zero and added here: the tensor cores' truncating accumulation
// (docs/method.md §7.5) then loses bits against a chunk's partial sum, not against the whole
// running sum, whose toward-zero bias would otherwise grow with K (measured under the emulator's
// model at C 512, blocks of 8, 22 kept bits, toward zero: 1.0e-5 of the output's scale without
// this, 2.0e-6 with it; 2.4e-6 and 5.2e-7 at 24 kept bits).
__device__ __forceinline__ void add_acc(float (&acc)[2][4][4], const float (&part)[2][4][4]) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = __fadd_rn(acc[mi][ni][r], part[mi][ni][r]);
}

__global__ void __launch_bounds__(kSThreads)
    selfcond_folded_fused_kernel(const float* __restrict__ z, const float* __restrict__ x,
                                 const float* __restrict__ m, const float* __restrict__ b1,
                                 const float* __restrict__ w2, const float* __restrict__ b2, float* __restrict__ out,
                                 int64_t N, int C, int R, int H) {
  EF_SHARED_DYNAMIC(float, smem);
  auto X_s = smem;               // kSM x kSS: a chunk of z or x_prev
  auto W_s = smem + kSM * kSS;   // kSN x kSS: a chunk of M or W_p2
  auto A_s = W_s + kSN * kSS;    // kSM x kAS: a
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kSM;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int wm = warp / 4, wn = warp % 4;
  float acc[2][4][4];

  zero_acc(acc);
  for (int part = 0; part < (x != nullptr ? 2 : 1); ++part) {
    const float* src = part == 0 ? z : x;
    for (int k0 = 0; k0 < C; k0 += kSK) {
      const int kc = min(kSK, C - k0);  // a multiple of 8
      __syncthreads();                  // the previous chunk is consumed
      for (int i = tid; i < kSM * kSK; i += kSThreads) {
        const int r = i / kSK, k = i % kSK;
        X_s[r * kSS + k] = row0 + r < N && k < kc ? src[(row0 + r) * C + k0 + k] : 0.f;
      }
      for (int i = tid; i < kSN * kSK; i += kSThreads) {
        const int n = i / kSK, k = i % kSK;
        W_s[n * kSS + k] = n < R && k < kc ? m[static_cast<int64_t>(n) * 2 * C + part * C + k0 + k] : 0.f;
      }
      __syncthreads();
      float part_acc[2][4][4];
      zero_acc(part_acc);
      for (int ks = 0; ks < kc; ks += 8) warp_mma_3xtf32(part_acc, X_s, kSS, ks, W_s, kSS, ks, wm, wn, g, t);
      add_acc(acc, part_acc);
    }
  }
  for (int mi = 0; mi < 2; ++mi) {
    for (int ni = 0; ni < 4; ++ni) {
      for (int r = 0; r < 4; ++r) {
        const int row = wm * 32 + mi * 16 + g + 8 * (r / 2), col = wn * 32 + ni * 8 + 2 * t + r % 2;
        A_s[row * kAS + col] = col < R ? acc[mi][ni][r] + b1[col] : 0.f;
      }
    }
  }

  for (int n0 = 0; n0 < H; n0 += kSN) {
    zero_acc(acc);
    for (int k0 = 0; k0 < R; k0 += kSK) {
      const int kc = min(kSK, R - k0);
      __syncthreads();  // a is complete; the previous chunk of W_p2 is consumed
      for (int i = tid; i < kSN * kSK; i += kSThreads) {
        const int n = i / kSK, k = i % kSK;
        W_s[n * kSS + k] = n0 + n < H && k < kc ? w2[static_cast<int64_t>(n0 + n) * R + k0 + k] : 0.f;
      }
      __syncthreads();
      float part_acc[2][4][4];
      zero_acc(part_acc);
      for (int ks = 0; ks < kc; ks += 8) warp_mma_3xtf32(part_acc, A_s, kAS, k0 + ks, W_s, kSS, ks, wm, wn, g, t);
      add_acc(acc, part_acc);
    }
    for (int mi = 0; mi < 2; ++mi) {
      for (int ni = 0; ni < 4; ++ni) {
        for (int r = 0; r < 4; ++r) {
          const int64_t row = row0 + wm * 32 + mi * 16 + g + 8 * (r / 2);
          const int col = n0 + wn * 32 + ni * 8 + 2 * t + r % 2;
          if (row < N && col < H) out[row * H + col] = acc[mi][ni][r] + b2[col];
        }
      }
    }
  }
}

// SelfcondFusedFn (elf_fast.h): false where the fused kernel does not apply.
bool selfcond_folded_fused_cuda(const Tensor& z2, const std::optional<Tensor>& x2, const Tensor& m, const Tensor& b1,
                                const Tensor& w_p2, const Tensor& b_p2, Tensor& out) {
  const int64_t N = z2.size(0), C = z2.size(1), R = m.size(0), H = w_p2.size(0);
  if (z2.scalar_type() != at::kFloat || C % 8 != 0 || R % 8 != 0 || R > kSN || !gpu::tensor_cores_bf16(z2)) {
    return false;
  }
  if (C > std::numeric_limits<int>::max() / 2 || H > std::numeric_limits<int>::max()) return false;
  const size_t smem = sizeof(float) * static_cast<size_t>(kSM * kSS + kSN * kSS + kSM * kAS);  // 60 KiB
  if (!gpu::smem_fits<selfcond_folded_fused_kernel>(z2, smem)) return false;
  const auto zc = z2.contiguous();
  const auto xc = x2.has_value() ? x2->contiguous() : Tensor();
  const auto mc = m.contiguous(), b1c = b1.contiguous(), w2c = w_p2.contiguous(), b2c = b_p2.contiguous();
  if (N == 0) return true;
  gpu::allow_dynamic_smem<selfcond_folded_fused_kernel>(smem);
  gpu::launch<selfcond_folded_fused_kernel>(
      {static_cast<unsigned>((N + kSM - 1) / kSM), kSThreads, smem, gpu::current_stream()}, zc.const_data_ptr<float>(),
      x2.has_value() ? xc.const_data_ptr<float>() : nullptr, mc.const_data_ptr<float>(), b1c.const_data_ptr<float>(),
      w2c.const_data_ptr<float>(), b2c.const_data_ptr<float>(), out.mutable_data_ptr<float>(), N,
      static_cast<int>(C), static_cast<int>(R), static_cast<int>(H));
  return true;
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
  return selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2, &tf32_split_cuda, &selfcond_folded_fused_cuda);
}

}  // namespace

ELF_FAST_GPU_IMPL(m) {
  m.impl("selfcond_proj", &selfcond_proj_cuda);
  m.impl("selfcond_proj_backward", &selfcond_proj_backward_cuda);
  m.impl("selfcond_proj_folded", &selfcond_proj_folded_cuda);
}

}  // namespace elf_fast
