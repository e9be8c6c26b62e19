// Fused transformer-block element-wise ops, CUDA kernels. Same contract and
// float32 arithmetic as block_ops.cpp; semantics in
// elf_fast.reference.{rms_norm, qk_norm_rope, swiglu}.
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>

#include "runtime.h"

namespace elf_fast {
namespace {

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per row; blockDim.x is a multiple of 32 (<= 1024).
template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ y,
                                int64_t D, float eps) {
  EF_SHARED_ARRAY(float, partial, 32);
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  T* yr = y + row * D;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = static_cast<float>(xr[i]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp;
  if (lane == 0) partial[wid] = ss;
  __syncthreads();
  if (wid == 0) {
    ss = lane < static_cast<int>(blockDim.x / kWarp) ? partial[lane] : 0.f;
    ss = warp_sum(ss);
    if (lane == 0) partial[0] = ss;
  }
  __syncthreads();
  const float inv = rsqrtf(partial[0] / static_cast<float>(D) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = static_cast<T>(static_cast<float>(xr[i]) * inv * w[i]);
}

// One warp per (b, t, which, head) vector of hd values; which = 0 (q), 1 (k), 2 (v).
template <typename T>
__global__ void qk_norm_rope_kernel(const T* __restrict__ qkv, const float* __restrict__ wq,
                                    const float* __restrict__ wk, const float* __restrict__ cs,
                                    const float* __restrict__ sn, T* __restrict__ q, T* __restrict__ k,
                                    T* __restrict__ v, int64_t B, int64_t T_, int64_t heads, int64_t hd, float eps) {
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarp;
  const int64_t total = B * T_ * 3 * heads;
  if (item >= total) return;  // whole warps exit together: item is uniform within a warp
  const int lane = threadIdx.x % kWarp;
  const int64_t h = item % heads;
  const int64_t which = (item / heads) % 3;
  const int64_t bt = item / (3 * heads);
  const int64_t b = bt / T_, t = bt % T_;
  const T* in = qkv + bt * 3 * heads * hd + which * heads * hd + h * hd;
  T* out = (which == 0 ? q : which == 1 ? k : v) + ((b * heads + h) * T_ + t) * hd;
  if (which == 2) {
    for (int64_t j = lane; j < hd; j += kWarp) out[j] = in[j];
    return;
  }
  float ss = 0.f;
  for (int64_t j = lane; j < hd; j += kWarp) {
    const float x = static_cast<float>(in[j]);
    ss += x * x;
  }
  ss = warp_sum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(hd) + eps);
  const float* w = which == 0 ? wq : wk;
  const int64_t half = hd / 2;
  const float* c = cs + t * half;
  const float* s = sn + t * half;
  for (int64_t j = lane; j < half; j += kWarp) {
    const float a = static_cast<float>(in[2 * j]) * inv * w[2 * j];
    const float bb = static_cast<float>(in[2 * j + 1]) * inv * w[2 * j + 1];
    out[2 * j] = static_cast<T>(a * c[j] - bb * s[j]);
    out[2 * j + 1] = static_cast<T>(bb * c[j] + a * s[j]);
  }
}

template <typename T>
__global__ void swiglu_kernel(const T* __restrict__ u, T* __restrict__ y, int64_t rows, int64_t F) {
  const int64_t n = rows * F;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / F, c = i % F;
    const float a = static_cast<float>(u[r * 2 * F + c]);
    const float g = static_cast<float>(u[r * 2 * F + F + c]);
    y[i] = static_cast<T>(a / (1.f + expf(-a)) * g);
  }
}

Tensor rms_norm_cuda(const Tensor& x, const Tensor& weight, double eps) {
  rms_norm_check(x, weight, eps);
  gpu::check_on_device("rms_norm", x, "x");
  const gpu::DeviceGuard guard(x.device());
  auto y = at::empty_like(x);
  const int64_t D = x.size(-1), rows = x.numel() / D;
  if (rows == 0) return y;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(kWarp, (D / 4 + kWarp - 1) / kWarp * kWarp)));
  ELF_FAST_DISPATCH_FLOATS(x.scalar_type(), "rms_norm_cuda", [&] {
    gpu::launch<rms_norm_kernel<scalar_t>>(
        {static_cast<unsigned>(rows), static_cast<unsigned>(threads), 0, gpu::current_stream()},
        x.const_data_ptr<scalar_t>(), weight.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(), D,
        static_cast<float>(eps));
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> qk_norm_rope_cuda(const Tensor& qkv, const Tensor& wq, const Tensor& wk,
                                                     const Tensor& cos, const Tensor& sin, int64_t heads,
                                                     double eps) {
  const auto s = qk_norm_rope_check(qkv, wq, wk, cos, sin, heads, eps);
  gpu::check_on_device("qk_norm_rope", qkv, "qkv");
  const gpu::DeviceGuard guard(qkv.device());
  auto q = at::empty({s.B, s.heads, s.T, s.hd}, qkv.options());
  auto k = at::empty_like(q), v = at::empty_like(q);
  const int64_t items = s.B * s.T * 3 * s.heads;
  if (items == 0) return {q, k, v};
  constexpr int kThreads = 256, kWarpsPerBlock = kThreads / kWarp;
  const auto blocks = static_cast<unsigned>((items + kWarpsPerBlock - 1) / kWarpsPerBlock);
  ELF_FAST_DISPATCH_FLOATS(qkv.scalar_type(), "qk_norm_rope_cuda", [&] {
    gpu::launch<qk_norm_rope_kernel<scalar_t>>(
        {blocks, kThreads, 0, gpu::current_stream()}, qkv.const_data_ptr<scalar_t>(), wq.const_data_ptr<float>(),
        wk.const_data_ptr<float>(), cos.const_data_ptr<float>(), sin.const_data_ptr<float>(),
        q.mutable_data_ptr<scalar_t>(), k.mutable_data_ptr<scalar_t>(), v.mutable_data_ptr<scalar_t>(), s.B, s.T,
        s.heads, s.hd, static_cast<float>(eps));
  });
  return {q, k, v};
}

Tensor swiglu_cuda(const Tensor& u) {
  swiglu_check(u);
  gpu::check_on_device("swiglu", u, "u");
  const gpu::DeviceGuard guard(u.device());
  const int64_t F = u.size(-1) / 2, rows = u.numel() / (2 * F);
  auto sizes = u.sizes().vec();
  sizes.back() = F;
  auto y = at::empty(sizes, u.options());
  const int64_t n = rows * F;
  if (n == 0) return y;
  constexpr int kThreads = 256;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8));
  ELF_FAST_DISPATCH_FLOATS(u.scalar_type(), "swiglu_cuda", [&] {
    gpu::launch<swiglu_kernel<scalar_t>>({blocks, kThreads, 0, gpu::current_stream()}, u.const_data_ptr<scalar_t>(),
                                         y.mutable_data_ptr<scalar_t>(), rows, F);
  });
  return y;
}

}  // namespace

ELF_FAST_GPU_IMPL(m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("qk_norm_rope", &qk_norm_rope_cuda);
  m.impl("swiglu", &swiglu_cuda);
}

}  // namespace elf_fast
