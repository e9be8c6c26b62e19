// Batch routines of cpu_vecmath.h. Each is cloned for AVX-512, AVX2 and
// baseline x86-64 and picked at load time (GCC function multiversioning), so
// the library runs on any x86-64 without -march flags. The loops are
// structure-of-arrays with branch-free bodies so that every clone vectorises.
#include "cpu_vecmath.h"

#include <limits>

#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EF_CLONES
#endif

namespace elf_fast::vecmath {

EF_CLONES void philox_normal_batch(uint64_t g0, int64_t n, uint64_t offset, uint64_t seed, float* out) {
  alignas(64) uint32_t c0[kMaxNormalGroups], c1[kMaxNormalGroups], c2[kMaxNormalGroups], c3[kMaxNormalGroups];
  const uint32_t glo = static_cast<uint32_t>(g0), ghi = static_cast<uint32_t>(g0 >> 32);
  const uint32_t olo = static_cast<uint32_t>(offset), ohi = static_cast<uint32_t>(offset >> 32);
  for (int64_t i = 0; i < n; ++i) {
    c0[i] = glo + static_cast<uint32_t>(i);
    c1[i] = ghi + (c0[i] < glo);  // carry into the high word of g0 + i
    c2[i] = olo;
    c3[i] = ohi;
  }
  // Rounds outer, groups inner: each round is one vectorised pass over the groups.
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0[i];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2[i];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[i] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[i] ^ k1;
      c0[i] = n0;
      c1[i] = static_cast<uint32_t>(p1);
      c2[i] = n2;
      c3[i] = static_cast<uint32_t>(p0);
    }
  }
  // Box-Muller exactly as philox_normal4: r = sqrt(-2 ln u0), th = 2 pi u1.
  const float two_pi = 6.28318530717958647692f;
  for (int64_t i = 0; i < n; ++i) {
    const float r01 = sqrtf(-2.0f * log_unit(philox_uniform(c0[i])));
    const float r23 = sqrtf(-2.0f * log_unit(philox_uniform(c2[i])));
    float s01, co01, s23, co23;
    sincos_2pi(two_pi * philox_uniform(c1[i]), s01, co01);
    sincos_2pi(two_pi * philox_uniform(c3[i]), s23, co23);
    out[4 * i + 0] = r01 * co01;
    out[4 * i + 1] = r01 * s01;
    out[4 * i + 2] = r23 * co23;
    out[4 * i + 3] = r23 * s23;
  }
}

// 16 independent lanes: a vector register (or two) of accumulators, so the
// reductions vectorise without reassociating a single running value.
constexpr int64_t kLanes = 16;

EF_CLONES float add_bias_max(float* x, const float* b, int64_t n) {
  float m[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) m[k] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const float v = x[j + k] + b[j + k];
      x[j + k] = v;
      m[k] = m[k] < v ? v : m[k];
    }
  }
  for (; j < n; ++j) {
    x[j] += b[j];
    m[0] = m[0] < x[j] ? x[j] : m[0];
  }
  float mx = m[0];
  for (int64_t k = 1; k < kLanes; ++k) mx = mx < m[k] ? m[k] : mx;
  return mx;
}

EF_CLONES double exp_shift_sum(float* x, int64_t n, float shift, bool store) {
  // Blocks of 256: the exps are one plain elementwise loop, their sum a
  // pairwise tree of elementwise halvings (vectorises; float is accurate
  // enough at 8 levels), the block sums add up in double.
  constexpr int64_t kBlock = 256;
  alignas(64) float e[kBlock];
  double total = 0.0;
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t len = n - j0 < kBlock ? n - j0 : kBlock;
    float* xb = x + j0;
    for (int64_t k = 0; k < len; ++k) e[k] = exp_nonpos(xb[k] - shift);
    for (int64_t k = len; k < kBlock; ++k) e[k] = 0.0f;
    if (store) {
      for (int64_t k = 0; k < len; ++k) xb[k] = e[k];
    }
    for (int64_t h = kBlock / 2; h >= 1; h /= 2) {
      for (int64_t k = 0; k < h; ++k) e[k] += e[k + h];
    }
    total += e[0];
  }
  return total;
}

EF_CLONES void scale(float* x, int64_t n, float a) {
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

EF_CLONES void silu_mul(const float* a, const float* g, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float x = a[j];
    const float e = exp_nonpos(x < 0.0f ? x : -x);  // exp(-|x|) in (0, 1]
    const float r = 1.0f / (1.0f + e);
    const float sig = x < 0.0f ? e * r : r;
    out[j] = x * sig * g[j];
  }
}

EF_CLONES float sum_squares(const float* x, int64_t n) {
  constexpr int64_t kLanes = 16;
  float part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) part[k] += x[j + k] * x[j + k];
  }
  for (int64_t k = 0; j + k < n; ++k) part[k] += x[j + k] * x[j + k];
  float total = 0.0f;
  for (int64_t k = 0; k < kLanes; ++k) total += part[k];
  return total;
}

}  // namespace elf_fast::vecmath
