// Fused transformer-block element-wise ops, CPU kernels (their argument checks,
// shared with the CUDA kernels, are in checks.cpp). Semantics: elf_fast.reference.{rms_norm, qk_norm_rope, swiglu}.
//
//   rms_norm(x, w, eps)              y = x * rsqrt(mean(x^2) + eps) * w
//   qk_norm_rope(qkv, wq, wk, cos, sin, heads, eps) -> (q, k, v)
//       qkv (B, T, 3 * heads * hd) as a Linear writes it; q and k are RMS-normed
//       over hd and rotated (interleaved pairs), v is only moved; all three come
//       out (B, heads, T, hd) contiguous, the layout SDPA reads.
//   swiglu(u)                        silu(u[..., :F]) * u[..., F:]
//
// Every value is computed in float32 and rounded once to the input dtype (the
// PyTorch modules round after the norm and again after the rotation). Weights,
// cos and sin are float32. These ops serve inference (and the no-grad forwards
// of training): they have no backward.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu_vecmath.h"
#include "elf_fast.h"

namespace elf_fast {

namespace {

// Rows as float32: a no-op view for float, a converted copy in `buf` otherwise.
template <typename T>
const float* as_float_row(const T* src, int64_t n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    buf.resize(n);
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
    return buf.data();
  }
}

template <typename T>
Tensor rms_norm_cpu_impl(const Tensor& x, const Tensor& weight, float eps) {
  auto y = at::empty_like(x);
  const int64_t D = x.size(-1), rows = x.numel() / D;
  const T* xp = x.data_ptr<T>();
  const float* wp = weight.data_ptr<float>();
  T* yp = y.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 16384 / D);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = as_float_row(xp + r * D, D, buf);
      T* yr = yp + r * D;
      const float inv = 1.f / std::sqrt(vecmath::sum_squares(xr, D) / static_cast<float>(D) + eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = static_cast<T>(xr[i] * inv * wp[i]);
    }
  });
  return y;
}

template <typename T>
void qk_norm_rope_cpu_impl(const Tensor& qkv, const float* wq, const float* wk, const float* cs, const float* sn,
                           const QkvShape& s, float eps, Tensor& q, Tensor& k, Tensor& v) {
  const int64_t half = s.hd / 2, H = s.heads * s.hd;
  const T* src = qkv.data_ptr<T>();
  T* outs[3] = {q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>()};
  const float* ws[2] = {wq, wk};
  // one task = one (b, t) row of qkv: all heads of q, k and v
  at::parallel_for(0, s.B * s.T, std::max<int64_t>(1, 8192 / (3 * H)), [&](int64_t i0, int64_t i1) {
    std::vector<float> buf;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / s.T, t = i % s.T;
      const float* c = cs + t * half;
      const float* sv = sn + t * half;
      for (int which = 0; which < 3; ++which) {
        for (int64_t h = 0; h < s.heads; ++h) {
          const T* in = src + i * 3 * H + which * H + h * s.hd;
          T* out = outs[which] + ((b * s.heads + h) * s.T + t) * s.hd;
          if (which == 2) {
            for (int64_t j = 0; j < s.hd; ++j) out[j] = in[j];
            continue;
          }
          const float* xf = as_float_row(in, s.hd, buf);
          const float inv = 1.f / std::sqrt(vecmath::sum_squares(xf, s.hd) / static_cast<float>(s.hd) + eps);
          const float* w = ws[which];
          for (int64_t j = 0; j < half; ++j) {
            const float a = xf[2 * j] * inv * w[2 * j];
            const float bb = xf[2 * j + 1] * inv * w[2 * j + 1];
            out[2 * j] = static_cast<T>(a * c[j] - bb * sv[j]);
            out[2 * j + 1] = static_cast<T>(bb * c[j] + a * sv[j]);
          }
        }
      }
    }
  });
}

template <typename T>
Tensor swiglu_cpu_impl(const Tensor& u) {
  const int64_t F = u.size(-1) / 2, rows = u.numel() / (2 * F);
  auto sizes = u.sizes().vec();
  sizes.back() = F;
  auto y = at::empty(sizes, u.options());
  const T* up = u.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  if constexpr (std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>) {
    if (vecmath::has_avx2_fma()) {  // converts in registers: no float row buffers
      const auto* u16 = reinterpret_cast<const uint16_t*>(up);
      auto* y16 = reinterpret_cast<uint16_t*>(yp);
      at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / F), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          if constexpr (std::is_same_v<T, at::BFloat16>) {
            vecmath::silu_mul_bf16(u16 + r * 2 * F, u16 + r * 2 * F + F, y16 + r * F, F);
          } else {
            vecmath::silu_mul_f16(u16 + r * 2 * F, u16 + r * 2 * F + F, y16 + r * F, F);
          }
        }
      });
      return y;
    }
  }
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / F), [&](int64_t r0, int64_t r1) {
    std::vector<float> abuf, gbuf, obuf;
    if constexpr (!std::is_same_v<T, float>) obuf.resize(F);
    for (int64_t r = r0; r < r1; ++r) {
      const float* a = as_float_row(up + r * 2 * F, F, abuf);
      const float* g = as_float_row(up + r * 2 * F + F, F, gbuf);
      if constexpr (std::is_same_v<T, float>) {
        vecmath::silu_mul(a, g, yp + r * F, F);
      } else {
        vecmath::silu_mul(a, g, obuf.data(), F);
        for (int64_t i = 0; i < F; ++i) yp[r * F + i] = static_cast<T>(obuf[i]);
      }
    }
  });
  return y;
}

Tensor rms_norm_cpu(const Tensor& x, const Tensor& weight, double eps) {
  rms_norm_check(x, weight, eps);
  Tensor y;
  ELF_FAST_DISPATCH_FLOATS(x.scalar_type(), "rms_norm", [&] {
    y = rms_norm_cpu_impl<scalar_t>(x, weight, static_cast<float>(eps));
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> qk_norm_rope_cpu(const Tensor& qkv, const Tensor& wq, const Tensor& wk,
                                                    const Tensor& cos, const Tensor& sin, int64_t heads,
                                                    double eps) {
  const auto s = qk_norm_rope_check(qkv, wq, wk, cos, sin, heads, eps);
  auto q = at::empty({s.B, s.heads, s.T, s.hd}, qkv.options());
  auto k = at::empty_like(q), v = at::empty_like(q);
  ELF_FAST_DISPATCH_FLOATS(qkv.scalar_type(), "qk_norm_rope", [&] {
    qk_norm_rope_cpu_impl<scalar_t>(qkv, wq.data_ptr<float>(), wk.data_ptr<float>(), cos.data_ptr<float>(),
                                    sin.data_ptr<float>(), s, static_cast<float>(eps), q, k, v);
  });
  return {q, k, v};
}

Tensor swiglu_cpu(const Tensor& u) {
  swiglu_check(u);
  Tensor y;
  ELF_FAST_DISPATCH_FLOATS(u.scalar_type(), "swiglu", [&] { y = swiglu_cpu_impl<scalar_t>(u); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(elf_fast, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("qk_norm_rope", &qk_norm_rope_cpu);
  m.impl("swiglu", &swiglu_cpu);
}

}  // namespace elf_fast
