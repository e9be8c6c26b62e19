// Philox4x32-10 counter-based RNG and Box-Muller normals, shared by the C++ and
// CUDA kernels (and the CUDA emulation build). Bit-for-bit the algorithm of elf_fast.reference.philox_normal:
// element e of a flat tensor draws from counter (e/4 lo, e/4 hi, offset lo,
// offset hi) under key (seed lo, seed hi); lane e%4 picks one of four normals.
#pragma once
#include <cstdint>
#include <cmath>

#include "host_device.h"

namespace elf_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t x[4];
};

// One Philox4x32 round on counter (c0, c1, c2, c3) under key (k0, k1): the one
// definition that the scalar generator below and the CPU kernel's vectorised batch
// (cpu_vecmath.cpp) both run.
EF_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c0 = n0;
  c1 = static_cast<uint32_t>(p1);
  c2 = n2;
  c3 = static_cast<uint32_t>(p0);
}

// The key for round r (0..9) is (seed lo + r W0, seed hi + r W1).
EF_HD void philox_bump_key(uint32_t& k0, uint32_t& k1) {
  k0 += kPhiloxW0;
  k1 += kPhiloxW1;
}

EF_HD Philox4 philox4x32_10(uint64_t group, uint64_t offset, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(group), c1 = static_cast<uint32_t>(group >> 32);
  uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    if (r) philox_bump_key(k0, k1);
    philox_round(c0, c1, c2, c3, k0, k1);
  }
  return Philox4{{c0, c1, c2, c3}};
}

// 23 random bits -> (0, 1), exactly representable in float32, never 0 or 1.
EF_HD float philox_uniform(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

// Four standard normals for elements 4*group .. 4*group+3.
EF_HD void philox_normal4(uint64_t group, uint64_t offset, uint64_t seed, float out[4]) {
  const Philox4 r = philox4x32_10(group, offset, seed);
  const float two_pi = 6.28318530717958647692f;
  const float r01 = sqrtf(-2.0f * logf(philox_uniform(r.x[0])));
  const float th01 = two_pi * philox_uniform(r.x[1]);
  const float r23 = sqrtf(-2.0f * logf(philox_uniform(r.x[2])));
  const float th23 = two_pi * philox_uniform(r.x[3]);
  out[0] = r01 * cosf(th01);
  out[1] = r01 * sinf(th01);
  out[2] = r23 * cosf(th23);
  out[3] = r23 * sinf(th23);
}

}  // namespace elf_fast
