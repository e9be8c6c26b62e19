// Fused flow step, CPU kernel: CFG combine, velocity, Euler update, condition
// restore and SDE noise injection in one pass over the data; the arithmetic is
// flow_step_math.h's, shared with the CUDA kernel.
// Semantics: elf_fast.reference.flow_step.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu_vecmath.h"
#include "elf_fast.h"
#include "flow_step_math.h"

namespace elf_fast {

namespace {

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

  // Elements per inner block: the noise of one block is one vectorised batch
  // (philox_normal_batch, the CPU counterpart of philox_normal4).
  constexpr int64_t kBlock = 4 * vecmath::kMaxNormalGroups;
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, 16, [&](int64_t b0, int64_t b1) {
    alignas(64) float eps[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e0 = b * kBlock, e1 = std::min(numel, e0 + kBlock);
      if (s.noise) {
        vecmath::philox_normal_batch(s.group_base + static_cast<uint64_t>(e0 / 4), (e1 - e0 + 3) / 4, s.offset, s.seed,
                                     eps);
      }
      for (int64_t e = e0; e < e1; ++e) {
        const bool cond = mp && mp[e / C];
        float zn, x;
        flow_element(static_cast<float>(zp[e]), static_cast<float>(xcp[e]), xup != nullptr,
                     xup ? static_cast<float>(xup[e]) : 0.f, cond, cond ? static_cast<float>(xcondp[e]) : 0.f,
                     s.noise ? eps[e - e0] : 0.f, s, zn, x);
        zo[e] = static_cast<TZ>(zn);
        xo[e] = static_cast<TZ>(x);
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
