// Fused flow step, CUDA kernel: CFG combine, velocity, Euler update, condition
// restore and SDE noise injection in one pass (one read of each input, one
// write of each output). The scalar set-up and the per-element arithmetic are
// flow_step_math.h's, shared with the CPU kernel (flow_step.cpp); the noise is
// philox.h's. Semantics: elf_fast.reference.flow_step.
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>

#include "flow_step_math.h"
#include "runtime.h"

namespace elf_fast {
namespace {

constexpr int kThreads = 256;

// Four consecutive elements; the alignment makes the compiler emit one
// vector load/store (16 bytes for float, 8 for half/bfloat16).
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

template <typename TZ, typename TX>
struct FlowPtrs {
  const TZ* z;         // (numel,)
  const TX* x_c;       // (numel,)
  const TX* x_u;       // (numel,) or nullptr (no CFG)
  const bool* mask;    // (numel / C,) or nullptr (no condition)
  const TZ* x_cond;    // (numel,) or nullptr, given with mask
  TZ* z_out;           // (numel,)
  TZ* x_out;           // (numel,)
};

// Each thread handles groups of 4 consecutive flat elements, so one Philox call
// (group g = e / 4) serves its 4 lanes. kVec: numel % 4 == 0 and every pointer
// is aligned to 4 elements, so whole groups move with vector loads/stores.
template <typename TZ, typename TX, bool kVec>
__global__ void __launch_bounds__(kThreads) flow_step_kernel(FlowPtrs<TZ, TX> p, FlowScalars s, int64_t numel,
                                                              int64_t C) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t e0 = g * 4;
    const int n = kVec ? 4 : static_cast<int>(numel - e0 < 4 ? numel - e0 : 4);

    // Per-lane condition flag: rows of length C may start or end inside the group.
    bool cond[4] = {false, false, false, false};
    bool any_cond = false;
    if (p.mask) {
      int64_t r = e0 / C, c = e0 - r * C;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (l < n) {
          cond[l] = p.mask[r];
          any_cond |= cond[l];
          if (++c == C) {
            c = 0;
            ++r;
          }
        }
      }
    }

    float zv[4], xc[4], xu[4] = {0.f, 0.f, 0.f, 0.f}, xcond[4] = {0.f, 0.f, 0.f, 0.f};
    if (kVec) {
      const Vec4<TZ> zq = *reinterpret_cast<const Vec4<TZ>*>(p.z + e0);
      const Vec4<TX> xq = *reinterpret_cast<const Vec4<TX>*>(p.x_c + e0);
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        zv[l] = static_cast<float>(zq.v[l]);
        xc[l] = static_cast<float>(xq.v[l]);
      }
      if (p.x_u) {
        const Vec4<TX> uq = *reinterpret_cast<const Vec4<TX>*>(p.x_u + e0);
#pragma unroll
        for (int l = 0; l < 4; ++l) xu[l] = static_cast<float>(uq.v[l]);
      }
      if (any_cond) {
        const Vec4<TZ> cq = *reinterpret_cast<const Vec4<TZ>*>(p.x_cond + e0);
#pragma unroll
        for (int l = 0; l < 4; ++l) xcond[l] = static_cast<float>(cq.v[l]);
      }
    } else {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (l < n) {
          zv[l] = static_cast<float>(p.z[e0 + l]);
          xc[l] = static_cast<float>(p.x_c[e0 + l]);
          if (p.x_u) xu[l] = static_cast<float>(p.x_u[e0 + l]);
          if (cond[l]) xcond[l] = static_cast<float>(p.x_cond[e0 + l]);
        }
      }
    }

    float eps[4] = {0.f, 0.f, 0.f, 0.f};
    if (s.noise) philox_normal4(s.group_base + static_cast<uint64_t>(g), s.offset, s.seed, eps);

    float zn[4], xo[4];
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      flow_element(zv[l], xc[l], p.x_u != nullptr, xu[l], cond[l], xcond[l], eps[l], s, zn[l], xo[l]);
    }

    if (kVec) {
      Vec4<TZ> zq, xq;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        zq.v[l] = static_cast<TZ>(zn[l]);
        xq.v[l] = static_cast<TZ>(xo[l]);
      }
      *reinterpret_cast<Vec4<TZ>*>(p.z_out + e0) = zq;
      *reinterpret_cast<Vec4<TZ>*>(p.x_out + e0) = xq;
    } else {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (l < n) {
          p.z_out[e0 + l] = static_cast<TZ>(zn[l]);
          p.x_out[e0 + l] = static_cast<TZ>(xo[l]);
        }
      }
    }
  }
}

template <typename T>
bool aligned4(const T* ptr) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % (4 * sizeof(T)) == 0;
}

template <typename TZ, typename TX>
void flow_step_cuda_typed(const Tensor& z, const Tensor& x_c, const std::optional<Tensor>& x_u,
                          const std::optional<Tensor>& cond_mask, const std::optional<Tensor>& x_cond,
                          const FlowStepArgs& a, Tensor& z_out, Tensor& x_out) {
  const int64_t numel = z.numel();
  if (numel == 0) return;

  FlowPtrs<TZ, TX> p;
  p.z = z.const_data_ptr<TZ>();
  p.x_c = x_c.const_data_ptr<TX>();
  p.x_u = x_u.has_value() ? x_u->const_data_ptr<TX>() : nullptr;
  p.mask = cond_mask.has_value() ? cond_mask->const_data_ptr<bool>() : nullptr;
  p.x_cond = x_cond.has_value() ? x_cond->const_data_ptr<TZ>() : nullptr;
  p.z_out = z_out.mutable_data_ptr<TZ>();
  p.x_out = x_out.mutable_data_ptr<TZ>();

  const FlowScalars s = flow_scalars(a);
  const int64_t C = z.size(-1);

  const bool vec = numel % 4 == 0 && aligned4(p.z) && aligned4(p.x_c) && aligned4(p.x_u) && aligned4(p.x_cond) &&
                   aligned4(p.z_out) && aligned4(p.x_out);

  // Enough blocks to fill the GPU; the grid-stride loop covers the rest.
  const int64_t groups = (numel + 3) / 4;
  const int64_t max_blocks = static_cast<int64_t>(gpu::sm_count()) * (2048 / kThreads) * 4;
  const auto blocks = static_cast<unsigned>(std::min((groups + kThreads - 1) / kThreads, max_blocks));
  const gpu::LaunchConfig cfg{blocks, kThreads, 0, gpu::current_stream()};
  if (vec) {
    gpu::launch<flow_step_kernel<TZ, TX, true>>(cfg, p, s, numel, C);
  } else {
    gpu::launch<flow_step_kernel<TZ, TX, false>>(cfg, p, s, numel, C);
  }
}

std::tuple<Tensor, Tensor> flow_step_cuda(const Tensor& z, const Tensor& x_c, const std::optional<Tensor>& x_u,
                                          const std::optional<Tensor>& cond_mask,
                                          const std::optional<Tensor>& x_cond, double t, double t_next, double cfg,
                                          double alpha, double sigma_n, double t_eps, int64_t seed, int64_t offset,
                                          int64_t index_base) {
  const FlowStepArgs a{t, t_next, cfg, alpha, sigma_n, t_eps, seed, offset, index_base};
  auto [z_out, x_out] = flow_step_prepare(z, x_c, x_u, cond_mask, x_cond, a);
  gpu::check_on_device("flow_step", z, "z");
  const gpu::DeviceGuard device_guard(z.device());
  ELF_FAST_DISPATCH_FLOATS(z.scalar_type(), "flow_step_z", [&] {
    using TZ = scalar_t;
    ELF_FAST_DISPATCH_FLOATS(x_c.scalar_type(), "flow_step_x", [&] {
      flow_step_cuda_typed<TZ, scalar_t>(z, x_c, x_u, cond_mask, x_cond, a, z_out, x_out);
    });
  });
  return {z_out, x_out};
}

}  // namespace

ELF_FAST_GPU_IMPL(m) { m.impl("flow_step", &flow_step_cuda); }

}  // namespace elf_fast
