// Fused flow step, CPU kernel: CFG combine, velocity, Euler update, condition
// restore and SDE noise injection in one pass over the data; the arithmetic is
// flow_step_math.h's, shared with the CUDA kernel.
// Semantics: elf_fast.reference.flow_step.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "cpu_vecmath.h"
#include "elf_fast.h"
#include "flow_step_math.h"

namespace elf_fast {

namespace {

// Rows of one dtype to and from float32: float rows are used in place, bfloat16 rows
// converted by the vectorised vecmath routines, float16 rows element by element (c10::Half).
template <typename T>
const float* load_f32(const T* p, float* buf, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return p;
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    vecmath::bf16_to_float(reinterpret_cast<const uint16_t*>(p), buf, n);
    return buf;
  } else {
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(p[j]);
    return buf;
  }
}

template <typename T>
float* out_f32(T* p, float* buf) {  // where the float32 results go before store_f32
  if constexpr (std::is_same_v<T, float>) {
    return p;
  } else {
    return buf;
  }
}

template <typename T>
void store_f32(const float* buf, T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    // computed in place
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    vecmath::float_to_bf16(buf, reinterpret_cast<uint16_t*>(p), n);
  } else {
    for (int64_t j = 0; j < n; ++j) p[j] = static_cast<T>(buf[j]);
  }
}

template <typename TZ, typename TX>
void flow_step_cpu_typed(const Tensor& z, const Tensor& x_c, const std::optional<Tensor>& x_u,
                         const std::optional<Tensor>& cond_mask, const std::optional<Tensor>& x_cond,
                         const FlowStepArgs& a, Tensor& z_out, Tensor& x_out) {
  const int64_t numel = z.numel();
  const int64_t C = z.size(-1);
  const TZ* zp = z.const_data_ptr<TZ>();
  const TX* xcp = x_c.const_data_ptr<TX>();
  const TX* xup = x_u.has_value() ? x_u->const_data_ptr<TX>() : nullptr;
  const bool* mp = cond_mask.has_value() ? cond_mask->const_data_ptr<bool>() : nullptr;
  const TZ* xcondp = x_cond.has_value() ? x_cond->const_data_ptr<TZ>() : nullptr;
  TZ* zo = z_out.mutable_data_ptr<TZ>();
  TZ* xo = x_out.mutable_data_ptr<TZ>();

  const FlowScalars s = flow_scalars(a);

  // Blocks of kBlock elements (the noise of one block is one vectorised batch,
  // philox_normal_batch, the CPU counterpart of philox_normal4), cut at row ends: a row's
  // mask is read once, a condition row is a copy of x_cond (through float32, as the
  // per-element form), any other row segment one vectorised pass: bf16 rows converted in
  // registers (flow_span_bf16), other dtypes through float32 buffers (flow_span).
  constexpr int64_t kBlock = 4 * vecmath::kMaxNormalGroups;
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, 16, [&](int64_t b0, int64_t b1) {
    alignas(64) float eps[kBlock], zb[kBlock], xcb[kBlock], xub[kBlock], zob[kBlock], xob[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e0 = b * kBlock, e1 = std::min(numel, e0 + kBlock);
      if (s.noise) {
        vecmath::philox_normal_batch(s.group_base + static_cast<uint64_t>(e0 / 4), (e1 - e0 + 3) / 4, s.offset, s.seed,
                                     eps);
      }
      for (int64_t g0 = e0; g0 < e1;) {
        const int64_t row = g0 / C;
        const int64_t g1 = std::min(e1, (row + 1) * C);
        const int64_t n = g1 - g0, k = g0 - e0;
        const float* ep = s.noise ? eps + k : nullptr;
        if constexpr (std::is_same_v<TZ, at::BFloat16> && std::is_same_v<TX, at::BFloat16>) {
          auto bits = [](const at::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); };
          auto wbits = [](at::BFloat16* p) { return reinterpret_cast<uint16_t*>(p); };
          if (mp && mp[row]) {
            vecmath::bf16_copy2(bits(xcondp + g0), wbits(zo + g0), wbits(xo + g0), n);
          } else {
            vecmath::flow_span_bf16(s, bits(zp + g0), bits(xcp + g0), xup ? bits(xup + g0) : nullptr, ep,
                                    wbits(zo + g0), wbits(xo + g0), n);
          }
        } else if (mp && mp[row]) {
          const float* xf = load_f32(xcondp + g0, xcb + k, n);
          store_f32(xf, zo + g0, n);
          store_f32(xf, xo + g0, n);
          if constexpr (std::is_same_v<TZ, float>) {  // load_f32 returned x_cond itself
            std::copy(xf, xf + n, zo + g0);
            std::copy(xf, xf + n, xo + g0);
          }
        } else {
          const float* zf = load_f32(zp + g0, zb + k, n);
          const float* xcf = load_f32(xcp + g0, xcb + k, n);
          const float* xuf = xup ? load_f32(xup + g0, xub + k, n) : nullptr;
          float* zof = out_f32(zo + g0, zob + k);
          float* xof = out_f32(xo + g0, xob + k);
          vecmath::flow_span(s, zf, xcf, xuf, ep, zof, xof, n);
          store_f32(zof, zo + g0, n);
          store_f32(xof, xo + g0, n);
        }
        g0 = g1;
      }
    }
  });
}

std::tuple<Tensor, Tensor> flow_step_cpu(const Tensor& z, const Tensor& x_c, const std::optional<Tensor>& x_u,
                                         const std::optional<Tensor>& cond_mask,
                                         const std::optional<Tensor>& x_cond, double t, double t_next, double cfg,
                                         double alpha, double sigma_n, double t_eps, int64_t seed, int64_t offset,
                                         int64_t index_base) {
  const FlowStepArgs a{t, t_next, cfg, alpha, sigma_n, t_eps, seed, offset, index_base};
  auto [z_out, x_out] = flow_step_prepare(z, x_c, x_u, cond_mask, x_cond, a);
  TORCH_CHECK(z.device().is_cpu(), "elf_fast.flow_step (CPU kernel): 'z' must be on the CPU");
  ELF_FAST_DISPATCH_FLOATS(z.scalar_type(), "flow_step_z", [&] {
    using TZ = scalar_t;
    ELF_FAST_DISPATCH_FLOATS(x_c.scalar_type(), "flow_step_x", [&] {
      flow_step_cpu_typed<TZ, scalar_t>(z, x_c, x_u, cond_mask, x_cond, a, z_out, x_out);
    });
  });
  return {z_out, x_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(elf_fast, CPU, m) { m.impl("flow_step", &flow_step_cpu); }

}  // namespace elf_fast
