// Kernels that test the SIMT emulator itself: each exists in a correct form and in
// deliberately broken forms (a missing or divergent barrier, a barrier some threads
// never reach, out-of-bounds global and shared accesses, bad shuffle masks, ...).
// tests/test_emulator.py runs them through elf_fast._C_emu._selftest and checks that
// the correct forms compute the right answer and every broken form is reported.
// Written as device code against csrc/cuda/runtime.h, like the real kernels.
#include <map>
#include <string>

#include "../cuda/runtime.h"

namespace elf_fast {
namespace {

constexpr int kBlock = 128;

// Sum of x (n floats) into out[0], one block of kBlock threads.
//   0 correct; 1 no barrier after the partial sums are stored (race);
//   2 a barrier inside a branch only some threads take (divergent);
//   3 threads past n return before the barrier (barrier reached by part of the block);
//   4 reads one element past the shared array; 5 reads a shared word nobody wrote.
__global__ void block_sum_kernel(const float* x, float* out, int n, int variant) {
  EF_SHARED_ARRAY(float, partial, kBlock);
  const int t = static_cast<int>(threadIdx.x);
  if (variant == 3 && t >= n) return;
  float s = 0.f;
  for (int i = t; i < n; i += kBlock) s += x[i];
  if (variant != 5 || t != 7) partial[t] = s;
  if (variant == 2) {
    if (t < 64) __syncthreads();
  } else if (variant != 1) {
    __syncthreads();
  }
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (t < stride) partial[t] = partial[t] + partial[t + stride + (variant == 4 && stride == 1 ? kBlock - 1 : 0)];
    __syncthreads();
  }
  if (t == 0) out[0] = partial[0];
}

// Warp reduction of x[0..31] into out[0] with one warp of 32 threads.
//   0 correct (__shfl_xor_sync); 1 mask excludes the calling lane;
//   2 reads from a lane outside the mask; 3 lanes >= 16 return before the shuffle;
//   4 mask names lanes the block does not have (launched with 16 threads);
//   5 __shfl_down_sync + __ballot_sync + __syncwarp, correct.
__global__ void warp_sum_kernel(const float* x, float* out, int variant) {
  const int lane = static_cast<int>(threadIdx.x);
  float v = x[lane];
  if (variant == 3 && lane >= 16) return;
  unsigned mask = 0xffffffffu;
  if (variant == 1 && lane == 5) mask = 0xffffffdfu;
  if (variant == 2) {
    const unsigned low = 0x0000ffffu;
    if (lane < 16) v += __shfl_sync(low, v, lane + 16);
    if (lane == 0) out[0] = v;
    return;
  }
  if (variant == 5) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(mask, v, static_cast<unsigned>(off));
    const unsigned ballot = __ballot_sync(mask, lane % 2 == 0);
    __syncwarp();
    if (lane == 0) out[0] = ballot == 0x55555555u ? v : -1.f;
    return;
  }
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(mask, v, off);
  if (lane == 0) out[0] = v;
}

// out[i] = 2 * x[i] for i < n, grid-stride.
//   0 correct; 1 off-by-one tail (i <= n): reads and writes one element past the end;
//   2 writes out[-1]; 3 asserts x[i] >= 0 (CUDA_KERNEL_ASSERT).
__global__ void scale_kernel(const float* x, float* out, int64_t n, int variant) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t limit = variant == 1 ? n + 1 : n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < limit; i += stride) {
    if (variant == 3) CUDA_KERNEL_ASSERT(x[i] >= 0.f);
    out[variant == 2 && i == 0 ? -1 : i] = 2.f * x[i];
  }
}

// Reverses x (n <= blockDim.x floats) through dynamic shared memory.
//   0 correct; 1 indexes one past the launch's dynamic shared memory.
__global__ void reverse_kernel(const float* x, float* out, int n, int variant) {
  EF_SHARED_DYNAMIC(float, buf);
  const int t = static_cast<int>(threadIdx.x);
  if (t < n) buf[t] = x[t];
  __syncthreads();
  if (t < n) out[t] = buf[n - 1 - t + (variant == 1 && t == 0 ? 1 : 0)];
}

// Sum of x (n floats) staged through n floats of dynamic shared memory plus a 4 KiB static
// array (the emulator checks static + dynamic against the device profile's limit).
__global__ void smem_sum_kernel(const float* x, float* out, int n) {
  EF_SHARED_DYNAMIC(float, buf);
  EF_SHARED_ARRAY(float, part, 1024);
  const int t = static_cast<int>(threadIdx.x);
  for (int i = t; i < n; i += blockDim.x) buf[i] = x[i];
  __syncthreads();
  float s = 0.f;
  for (int i = t; i < n; i += blockDim.x) s += buf[i];
  part[t] = s;
  __syncthreads();
  if (t == 0) {
    float total = 0.f;
    for (int i = 0; i < static_cast<int>(blockDim.x); ++i) total += part[i];
    out[0] = total;
  }
}

// Histogram of int(x[i]) mod 8 over n values into out[0..7] (as floats), one block of kBlock
// threads with shared-memory atomics. 0 correct; 1 no barrier between zeroing the bins and the
// atomics; 2 global atomics straight into out (zeroed by the host) instead of shared ones.
__global__ void histogram_kernel(const float* x, float* out, int n, int variant) {
  EF_SHARED_ARRAY(int, bins, 8);
  const int t = static_cast<int>(threadIdx.x);
  if (variant == 2) {
    for (int i = t; i < n; i += kBlock) atomicAdd(out + static_cast<int>(x[i]) % 8, 1.f);
    return;
  }
  if (t < 8) bins[t] = 0;
  if (variant != 1) __syncthreads();
  for (int i = t; i < n; i += kBlock) atomicAdd(&bins[static_cast<int>(x[i]) % 8], 1);
  __syncthreads();
  if (t < 8) out[t] = static_cast<float>(bins[t]);
}

// One lane's (g = lane / 4, t = lane % 4) operand fragments in PTX's layouts, read from row-major
// fp32 values exactly representable in the operand type. bf16 m16n8k16: A 16x16, B 16x8.
__device__ void bf16_fragments(const float* A, const float* B, int g, int t, uint32_t a[4], uint32_t b[2]) {
  auto bits = [](float f) { return __float_as_uint(f) >> 16; };  // exact for bf16 values
  auto pack = [&](float lo, float hi) { return bits(lo) | (bits(hi) << 16); };
  a[0] = pack(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
  a[1] = pack(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
  a[2] = pack(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
  a[3] = pack(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
  b[0] = pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
  b[1] = pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
}

// tf32 m16n8k8: A 16x8, B 8x8 (registers hold the fp32 bits).
__device__ void tf32_fragments(const float* A, const float* B, int g, int t, uint32_t a[4], uint32_t b[2]) {
  a[0] = __float_as_uint(A[g * 8 + t]);
  a[1] = __float_as_uint(A[(g + 8) * 8 + t]);
  a[2] = __float_as_uint(A[g * 8 + t + 4]);
  a[3] = __float_as_uint(A[(g + 8) * 8 + t + 4]);
  b[0] = __float_as_uint(B[t * 8 + g]);
  b[1] = __float_as_uint(B[(t + 4) * 8 + g]);
}

// The lane's four accumulator values into row-major D (16 x 8).
__device__ void store_accumulator(float* D, int g, int t, const float d[4]) {
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// D = A B for A 16x16 (x[0..255], row-major) and B 16x8 (x[256..383], row-major), values
// exactly representable in bf16, through one gpu::mma_bf16_m16n8k16 with fragments loaded as
// its layout says. 0 correct; 1 lanes >= 16 return before the mma (it needs the whole warp).
__global__ void mma_kernel(const float* x, float* out, int variant) {
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  if (variant == 1 && lane >= 16) return;
  uint32_t a[4], b[2];
  bf16_fragments(x, x + 256, g, t, a, b);
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  gpu::mma_bf16_m16n8k16(d, a, b);
  store_accumulator(out, g, t, d);
}

// D = A B for A 16x8 (x[0..127]) and B 8x8 (x[128..191]), row-major, TF32-representable values,
// through one gpu::mma_tf32_m16n8k8.
__global__ void mma_tf32_kernel(const float* x, float* out) {
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  uint32_t a[4], b[2];
  tf32_fragments(x, x + 128, g, t, a, b);
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  gpu::mma_tf32_m16n8k8(d, a, b);
  store_accumulator(out, g, t, d);
}

// Known-answer probes of the tensor cores' accumulation (the emulated twin of
// scripts/tc_probe.cu): x holds `count` problems, each A, B and the accumulator C (16 x 8),
// row-major fp32 values exactly representable in the operand type; D = C + A B through one
// mma. variant 0: bf16 m16n8k16 (A 16x16, B 16x8: 384 + 128 floats a problem); 1: tf32
// m16n8k8 (A 16x8, B 8x8: 192 + 128).
__global__ void mma_probe_kernel(const float* x, float* out, int variant) {
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  const int K = variant == 0 ? 16 : 8, stride = 16 * K + K * 8 + 128;
  const float* A = x + static_cast<int64_t>(blockIdx.x) * stride;
  const float* B = A + 16 * K;
  const float* C = B + K * 8;
  float* D = out + static_cast<int64_t>(blockIdx.x) * 128;
  float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  uint32_t a[4], b[2];
  if (variant == 0) {
    bf16_fragments(A, B, g, t, a, b);
    gpu::mma_bf16_m16n8k16(d, a, b);
  } else {
    tf32_fragments(A, B, g, t, a, b);
    gpu::mma_tf32_m16n8k8(d, a, b);
  }
  store_accumulator(D, g, t, d);
}

at::Tensor run(const std::string& name, const at::Tensor& x, int64_t variant) {
  TORCH_CHECK(x.is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(), "_selftest: x must be contiguous "
              "float32 on the CPU");
  const auto v = static_cast<int>(variant);
  const int64_t n = x.numel();
  if (name == "block_sum") {
    auto out = at::empty({1}, x.options());
    gpu::launch<block_sum_kernel>({1, kBlock}, x.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                  static_cast<int>(n), v);
    return out;
  }
  if (name == "warp_sum") {
    TORCH_CHECK(n == 32, "_selftest warp_sum: x must have 32 elements");
    auto out = at::empty({1}, x.options());
    gpu::launch<warp_sum_kernel>({1, v == 4 ? 16u : 32u}, x.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                 v);
    return out;
  }
  if (name == "scale") {
    auto out = at::empty_like(x);
    if (n == 0) return out;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + 63) / 64, 3));
    gpu::launch<scale_kernel>({blocks, 64}, x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), n, v);
    return out;
  }
  if (name == "histogram") {
    auto out = at::zeros({8}, x.options());
    gpu::launch<histogram_kernel>({1, kBlock}, x.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                  static_cast<int>(n), v);
    return out;
  }
  if (name == "reverse") {
    TORCH_CHECK(n >= 1 && n <= 256, "_selftest reverse: 1 to 256 elements");
    auto out = at::empty_like(x);
    gpu::launch<reverse_kernel>({1, 256, static_cast<size_t>(n) * sizeof(float)}, x.const_data_ptr<float>(),
                                out.mutable_data_ptr<float>(), static_cast<int>(n), v);
    return out;
  }
  if (name == "smem_sum") {
    auto out = at::empty({1}, x.options());
    gpu::launch<smem_sum_kernel>({1, 1024, static_cast<size_t>(n) * sizeof(float)}, x.const_data_ptr<float>(),
                                 out.mutable_data_ptr<float>(), static_cast<int>(n));
    return out;
  }
  if (name == "mma") {
    TORCH_CHECK(n == 384, "_selftest mma: x must hold A (16x16) then B (16x8)");
    auto out = at::empty({16, 8}, x.options());
    gpu::launch<mma_kernel>({1, 32}, x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), v);
    return out;
  }
  if (name == "mma_tf32") {
    TORCH_CHECK(n == 192, "_selftest mma_tf32: x must hold A (16x8) then B (8x8)");
    auto out = at::empty({16, 8}, x.options());
    gpu::launch<mma_tf32_kernel>({1, 32}, x.const_data_ptr<float>(), out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "mma_probe") {
    TORCH_CHECK(v == 0 || v == 1, "_selftest mma_probe: variant 0 (bf16) or 1 (tf32)");
    const int64_t per = v == 0 ? 384 + 128 : 192 + 128;
    TORCH_CHECK(n > 0 && n % per == 0, "_selftest mma_probe: x must hold whole problems of ", per, " floats");
    auto out = at::empty({n / per, 16, 8}, x.options());
    gpu::launch<mma_probe_kernel>({static_cast<unsigned>(n / per), 32}, x.const_data_ptr<float>(),
                                  out.mutable_data_ptr<float>(), v);
    return out;
  }
  TORCH_CHECK(false, "_selftest: unknown kernel '", name, "'");
}

}  // namespace

at::Tensor emulator_selftest(const std::string& name, const at::Tensor& x, int64_t variant) {
  return run(name, x, variant);
}

}  // namespace elf_fast
