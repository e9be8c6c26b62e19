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
// cos and sin are float32.
//
// Backward kernels (CPU only; the autograd formulas that call them are in
// elf_fast/ops.py): each recomputes what it needs (the rows' RMS statistics,
// the sigmoid) from the saved inputs in float32, so the forward saves nothing
// but its inputs. Input gradients come out in the input dtype, rounded once;
// weight gradients are float32, summed per block of kGradRowBlock rows and the
// blocks then added in order, so the result does not depend on the thread count.
//
//   rms_norm_backward(g, x, w, eps) -> (gx, gw)
//       n = x r, r = rsqrt(mean(x^2) + eps):  gw = sum_rows g n,
//       gx = r (g w - n mean(g w n))
//   qk_norm_rope_backward(gq, gk, gv, qkv, wq, wk, cos, sin, heads, eps) -> (gqkv, gwq, gwk)
//       the rotation transposed (gm = R^T g), then rms_norm's backward per head
//       row; gv is moved back into the v third of gqkv
//   swiglu_backward(g, u) -> gu
//       s = sigmoid(a): ga = g b s (1 + a (1 - s)), gb = g a s
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_vecmath.h"
#include "elf_fast.h"

namespace elf_fast {

namespace {

// Rows as float32: a no-op view for float, a converted copy in `buf` otherwise (bf16 through
// the vectorised conversion).
template <typename T>
const float* as_float_row(const T* src, int64_t n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    buf.resize(n);
    if constexpr (std::is_same_v<T, at::BFloat16>) {
      vecmath::bf16_to_float(reinterpret_cast<const uint16_t*>(src), buf.data(), n);
    } else {
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
    }
    return buf.data();
  }
}

// A float32 row stored as T, rounded to nearest even (bf16 through the vectorised conversion).
template <typename T>
void store_row(const float* src, int64_t n, T* dst) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    vecmath::float_to_bf16(src, reinterpret_cast<uint16_t*>(dst), n);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
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
    std::vector<float> buf, obuf(D);
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = as_float_row(xp + r * D, D, buf);
      T* yr = yp + r * D;
      const float inv = 1.f / std::sqrt(vecmath::sum_squares(xr, D) / static_cast<float>(D) + eps);
      if constexpr (std::is_same_v<T, float>) {
        for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * inv * wp[i];
      } else {
        for (int64_t i = 0; i < D; ++i) obuf[i] = xr[i] * inv * wp[i];
        store_row(obuf.data(), D, yr);
      }
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
    std::vector<float> buf, obuf(s.hd);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / s.T, t = i % s.T;
      const float* c = cs + t * half;
      const float* sv = sn + t * half;
      for (int which = 0; which < 3; ++which) {
        for (int64_t h = 0; h < s.heads; ++h) {
          const T* in = src + i * 3 * H + which * H + h * s.hd;
          T* out = outs[which] + ((b * s.heads + h) * s.T + t) * s.hd;
          if (which == 2) {
            std::memcpy(out, in, s.hd * sizeof(T));
            continue;
          }
          const float* xf = as_float_row(in, s.hd, buf);
          const float inv = 1.f / std::sqrt(vecmath::sum_squares(xf, s.hd) / static_cast<float>(s.hd) + eps);
          if constexpr (std::is_same_v<T, float>) {
            vecmath::norm_rope_row(xf, inv, ws[which], c, sv, half, out);
          } else {
            vecmath::norm_rope_row(xf, inv, ws[which], c, sv, half, obuf.data());
            store_row(obuf.data(), s.hd, out);
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

// ---- backward ------------------------------------------------------------------
constexpr int64_t kGradRowBlock = 64;

void check_grad(const char* op, const Tensor& g, const char* name, const Tensor& like, at::IntArrayRef shape) {
  TORCH_CHECK(g.device() == like.device() && g.scalar_type() == like.scalar_type(), op, ": '", name,
              "' must be a ", like.scalar_type(), " tensor on ", like.device(), ", got ", g.scalar_type(), " on ",
              g.device());
  TORCH_CHECK(g.sizes() == shape, op, ": '", name, "' must have shape ", shape, ", got ", g.sizes());
  TORCH_CHECK(g.is_contiguous(), op, ": '", name, "' must be contiguous");
}

// rms_norm's backward for one row of D values (float32 x, g; gx in T through `gxf`, a float
// scratch row of D where T is not float): accumulates g n into gw_acc, writes gx.
template <typename T>
inline void rms_row_backward(const float* xf, const float* g, const float* w, int64_t D, float eps, float* gw_acc,
                             float* gxf, T* gx) {
  if constexpr (std::is_same_v<T, float>) {
    vecmath::rms_backward_row(xf, g, w, D, eps, gw_acc, gx);
  } else {
    vecmath::rms_backward_row(xf, g, w, D, eps, gw_acc, gxf);
    store_row(gxf, D, gx);
  }
}

// Sums partial (blocks, n) row by row, in order, into out (n,).
void sum_blocks(const float* partial, int64_t blocks, int64_t n, float* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = 0.f;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int64_t j = 0; j < n; ++j) out[j] += partial[blk * n + j];
  }
}

template <typename T>
void rms_norm_backward_cpu_impl(const Tensor& grad, const Tensor& x, const Tensor& weight, float eps, Tensor& gx,
                                Tensor& gw) {
  const int64_t D = x.size(-1), rows = x.numel() / D;
  const int64_t blocks = (rows + kGradRowBlock - 1) / kGradRowBlock;
  std::vector<float> partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * D), 0.f);
  const T* xp = x.data_ptr<T>();
  const T* gp = grad.data_ptr<T>();
  const float* wp = weight.data_ptr<float>();
  T* gxp = gx.data_ptr<T>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> xbuf, gbuf, gxf(D);
    for (int64_t blk = b0; blk < b1; ++blk) {
      float* acc = partial.data() + blk * D;
      const int64_t r1 = std::min(rows, (blk + 1) * kGradRowBlock);
      for (int64_t r = blk * kGradRowBlock; r < r1; ++r) {
        const float* xf = as_float_row(xp + r * D, D, xbuf);
        const float* g = as_float_row(gp + r * D, D, gbuf);
        rms_row_backward(xf, g, wp, D, eps, acc, gxf.data(), gxp + r * D);
      }
    }
  });
  sum_blocks(partial.data(), blocks, D, gw.data_ptr<float>());
}

template <typename T>
void qk_norm_rope_backward_cpu_impl(const T* gq, const T* gk, const T* gv, const T* src, const float* wq,
                                    const float* wk, const float* cs, const float* sn, const QkvShape& s, float eps,
                                    T* gsrc, float* gwq, float* gwk) {
  const int64_t half = s.hd / 2, H = s.heads * s.hd, rows = s.B * s.T;
  const int64_t blocks = (rows + kGradRowBlock - 1) / kGradRowBlock;
  // partial[blk] = (gwq, gwk) of the rows of block blk
  std::vector<float> partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * 2 * s.hd), 0.f);
  const T* grads[2] = {gq, gk};
  const float* ws[2] = {wq, wk};
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> xbuf, gbuf, gm(s.hd), gxf(s.hd);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i1 = std::min(rows, (blk + 1) * kGradRowBlock);
      for (int64_t i = blk * kGradRowBlock; i < i1; ++i) {
        const int64_t b = i / s.T, t = i % s.T;
        const float* c = cs + t * half;
        const float* sv = sn + t * half;
        for (int64_t h = 0; h < s.heads; ++h) {
          const int64_t o = ((b * s.heads + h) * s.T + t) * s.hd;  // offset in the (B, heads, T, hd) grads
          for (int which = 0; which < 2; ++which) {
            const float* xf = as_float_row(src + i * 3 * H + which * H + h * s.hd, s.hd, xbuf);
            const float* g = as_float_row(grads[which] + o, s.hd, gbuf);
            vecmath::rope_backward_row(g, c, sv, half, gm.data());  // the rotation by -angle: gm = R^T g
            rms_row_backward(xf, gm.data(), ws[which], s.hd, eps, partial.data() + (blk * 2 + which) * s.hd,
                             gxf.data(), gsrc + i * 3 * H + which * H + h * s.hd);
          }
          std::memcpy(gsrc + i * 3 * H + 2 * H + h * s.hd, gv + o, s.hd * sizeof(T));  // v: moved back
        }
      }
    }
  });
  std::vector<float> both(2 * s.hd);
  sum_blocks(partial.data(), blocks, 2 * s.hd, both.data());
  for (int64_t j = 0; j < s.hd; ++j) {
    gwq[j] = both[j];
    gwk[j] = both[s.hd + j];
  }
}

template <typename T>
void swiglu_backward_cpu_impl(const Tensor& grad, const Tensor& u, Tensor& gu) {
  const int64_t F = u.size(-1) / 2, rows = u.numel() / (2 * F);
  const T* up = u.data_ptr<T>();
  const T* gp = grad.data_ptr<T>();
  T* gup = gu.data_ptr<T>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / F), [&](int64_t r0, int64_t r1) {
    std::vector<float> abuf, bbuf, gbuf, ga, gb;
    if constexpr (!std::is_same_v<T, float>) {
      ga.resize(F);
      gb.resize(F);
    }
    for (int64_t r = r0; r < r1; ++r) {
      const T* ur = up + r * 2 * F;
      T* gur = gup + r * 2 * F;
      if constexpr (std::is_same_v<T, float>) {
        vecmath::silu_mul_backward(ur, ur + F, gp + r * F, gur, gur + F, F);
      } else if constexpr (std::is_same_v<T, at::BFloat16>) {
        vecmath::silu_mul_backward_bf16(reinterpret_cast<const uint16_t*>(ur), reinterpret_cast<const uint16_t*>(ur + F),
                                        reinterpret_cast<const uint16_t*>(gp + r * F),
                                        reinterpret_cast<uint16_t*>(gur), reinterpret_cast<uint16_t*>(gur + F), F);
      } else {
        const float* a = as_float_row(ur, F, abuf);
        const float* b = as_float_row(ur + F, F, bbuf);
        const float* g = as_float_row(gp + r * F, F, gbuf);
        vecmath::silu_mul_backward(a, b, g, ga.data(), gb.data(), F);
        store_row(ga.data(), F, gur);
        store_row(gb.data(), F, gur + F);
      }
    }
  });
}

std::tuple<Tensor, Tensor> rms_norm_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                                 double eps) {
  rms_norm_check(x, weight, eps);
  TORCH_CHECK(x.is_contiguous(), "rms_norm_backward: 'x' must be contiguous");
  check_grad("rms_norm_backward", grad, "grad", x, x.sizes());
  auto gx = at::empty_like(x);
  auto gw = at::empty({x.size(-1)}, weight.options());
  ELF_FAST_DISPATCH_FLOATS(x.scalar_type(), "rms_norm_backward", [&] {
    rms_norm_backward_cpu_impl<scalar_t>(grad, x, weight, static_cast<float>(eps), gx, gw);
  });
  return {gx, gw};
}

std::tuple<Tensor, Tensor, Tensor> qk_norm_rope_backward_cpu(const Tensor& gq, const Tensor& gk, const Tensor& gv,
                                                             const Tensor& qkv, const Tensor& wq, const Tensor& wk,
                                                             const Tensor& cos, const Tensor& sin, int64_t heads,
                                                             double eps) {
  const auto s = qk_norm_rope_check(qkv, wq, wk, cos, sin, heads, eps);
  const std::vector<int64_t> shape{s.B, s.heads, s.T, s.hd};
  check_grad("qk_norm_rope_backward", gq, "grad_q", qkv, shape);
  check_grad("qk_norm_rope_backward", gk, "grad_k", qkv, shape);
  check_grad("qk_norm_rope_backward", gv, "grad_v", qkv, shape);
  auto gqkv = at::empty_like(qkv);
  auto gwq = at::empty({s.hd}, wq.options()), gwk = at::empty({s.hd}, wk.options());
  ELF_FAST_DISPATCH_FLOATS(qkv.scalar_type(), "qk_norm_rope_backward", [&] {
    qk_norm_rope_backward_cpu_impl<scalar_t>(gq.data_ptr<scalar_t>(), gk.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(),
                                             qkv.data_ptr<scalar_t>(), wq.data_ptr<float>(), wk.data_ptr<float>(),
                                             cos.data_ptr<float>(), sin.data_ptr<float>(), s, static_cast<float>(eps),
                                             gqkv.data_ptr<scalar_t>(), gwq.data_ptr<float>(), gwk.data_ptr<float>());
  });
  return {gqkv, gwq, gwk};
}

Tensor swiglu_backward_cpu(const Tensor& grad, const Tensor& u) {
  swiglu_check(u);
  TORCH_CHECK(u.is_contiguous(), "swiglu_backward: 'u' must be contiguous");
  auto shape = u.sizes().vec();
  shape.back() /= 2;
  check_grad("swiglu_backward", grad, "grad", u, shape);
  auto gu = at::empty_like(u);
  ELF_FAST_DISPATCH_FLOATS(u.scalar_type(), "swiglu_backward", [&] { swiglu_backward_cpu_impl<scalar_t>(grad, u, gu); });
  return gu;
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
  m.impl("rms_norm_backward", &rms_norm_backward_cpu);
  m.impl("qk_norm_rope_backward", &qk_norm_rope_backward_cpu);
  m.impl("swiglu_backward", &swiglu_backward_cpu);
}

}  // namespace elf_fast
