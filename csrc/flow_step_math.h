// The flow step's arithmetic, written once for the CPU kernel (flow_step.cpp), the CUDA
// kernel (cuda/flow_step.cu) and its emulation build: the host-side scalar set-up and the
// per-element update. Meaning: elf_fast.reference.flow_step.
#pragma once
#include <algorithm>
#include <cstdint>

#include "elf_fast.h"
#include "philox.h"

namespace elf_fast {

// Scalars in float32, converted from the op's double arguments in one place.
struct FlowScalars {
  float cfg, inv, dt, alpha, noise_scale;
  bool noise;
  uint64_t seed, offset;
  uint64_t group_base;  // index_base / 4: the Philox group of the call's element 0
};

inline FlowScalars flow_scalars(const FlowStepArgs& a) {
  FlowScalars s;
  s.cfg = static_cast<float>(a.cfg);
  s.inv = static_cast<float>(1.0 / std::max(1.0 - a.t, a.t_eps));  // velocity (x - z) / max(1 - t, t_eps)
  s.dt = static_cast<float>(a.t_next - a.t);
  s.noise = a.alpha < 1.0;
  s.alpha = static_cast<float>(a.alpha);
  s.noise_scale = static_cast<float>((1.0 - a.alpha) * a.sigma_n);
  s.seed = static_cast<uint64_t>(a.seed);
  s.offset = static_cast<uint64_t>(a.offset);
  s.group_base = static_cast<uint64_t>(a.index_base) / 4;
  return s;
}

// float32 operations rounded one at a time: on the GPU the __f*_rn intrinsics keep
// nvcc from contracting a * b + c into an FMA; the host builds use -ffp-contract=off.
#if defined(__CUDA_ARCH__)
EF_HD float rn_add(float a, float b) { return __fadd_rn(a, b); }
EF_HD float rn_sub(float a, float b) { return __fsub_rn(a, b); }
EF_HD float rn_mul(float a, float b) { return __fmul_rn(a, b); }
#else
EF_HD float rn_add(float a, float b) { return a + b; }
EF_HD float rn_sub(float a, float b) { return a - b; }
EF_HD float rn_mul(float a, float b) { return a * b; }
#endif

// One element: CFG combine (when x_u is given), Euler update of z with the clamped
// velocity, then either the condition restore (cond: z and x take x_cond) or the SDE
// noise injection z <- alpha z + (1 - alpha) sigma_n eps.
EF_HD void flow_element(float zv, float x, bool has_u, float xu, bool cond, float xcond, float eps,
                        const FlowScalars& s, float& zn_out, float& x_out) {
  if (has_u) x = rn_add(xu, rn_mul(s.cfg, rn_sub(x, xu)));
  float zn = rn_add(zv, rn_mul(s.dt, rn_mul(rn_sub(x, zv), s.inv)));
  if (cond) {
    x = xcond;
    zn = x;
  } else if (s.noise) {
    zn = rn_add(rn_mul(s.alpha, zn), rn_mul(s.noise_scale, eps));
  }
  zn_out = zn;
  x_out = x;
}

}  // namespace elf_fast
