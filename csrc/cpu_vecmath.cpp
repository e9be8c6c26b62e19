// Batch routines of cpu_vecmath.h. Each is cloned for AVX-512, AVX2 and
// baseline x86-64 and picked at load time (GCC function multiversioning), so
// the library runs on any x86-64 without -march flags. The loops are
// structure-of-arrays with branch-free bodies so that every clone vectorises.
#include "cpu_vecmath.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "flow_step_math.h"
#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define EF_AVX2_PATH 1
#include <immintrin.h>
#else
#define EF_CLONES
#define EF_AVX2_PATH 0
#endif

namespace elf_fast::vecmath {

// Routines on long rows are compiled three ways (the clones: AVX-512 with 256-bit vectors,
// which GCC's AVX-512 tuning prefers, AVX2, baseline) plus once with 512-bit vectors, taken
// where the CPU has AVX-512BW (twice the elements per instruction: ~1.3x on the memory-bound
// bf16 flow step here). All are the same float32 operations (no FMA): bit-identical.
#if EF_AVX2_PATH
#define EF_WIDE __attribute__((target("avx512f,avx512bw,avx512vl,prefer-vector-width=512")))
static bool has_avx512bw() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}
#define EF_WIDE_FN(ret, name, params, args)                         \
  EF_WIDE static ret name##_512 params { return name##_body args; } \
  EF_CLONES static ret name##_clones params { return name##_body args; } \
  ret name params {                                                 \
    if (has_avx512bw()) return name##_512 args;                     \
    return name##_clones args;                                      \
  }
#else
#define EF_WIDE_FN(ret, name, params, args) \
  ret name params { return name##_body args; }
#endif
#define EF_WIDE_VARIANT(name, params, args) EF_WIDE_FN(void, name, params, args)

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
    if (r) philox_bump_key(k0, k1);
    for (int64_t i = 0; i < n; ++i) philox_round(c0[i], c1[i], c2[i], c3[i], k0, k1);
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
// reductions vectorise without reassociating a single running value. The row
// routines of the decode head's cross-entropy (add_bias_max .. scale_accumulate_to_bf16)
// are EF_WIDE_FNs: their rows are 30k+ floats, L2-resident.
constexpr int64_t kLanes = 16;

namespace {
// 16 floats as one GCC vector (lowered to one zmm, two ymm or four xmm registers per clone).
// The max reductions below are written on it: as a 16-lane array the "m < v ? v : m" blocks
// stay scalar (GCC 12 leaves that select unvectorised without -ffinite-math-only).
// (Only ever inlined, so the -Wpsabi note on returning one from a non-AVX-512 function is moot.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float F32x16 __attribute__((vector_size(64)));
typedef uint16_t U16x16 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline F32x16 load16(const float* p) {
  F32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline F32x16 load16(const uint16_t* p) {  // bf16 bits, widened
  U16x16 h;
  std::memcpy(&h, p, sizeof h);
  const U32x16 w = __builtin_convertvector(h, U32x16) << 16;
  F32x16 v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}
__attribute__((always_inline)) inline F32x16 splat16(float v) {
  F32x16 r;
  for (int k = 0; k < 16; ++k) r[k] = v;
  return r;
}
__attribute__((always_inline)) inline float load1(const float* p) { return *p; }
__attribute__((always_inline)) inline float load1(const uint16_t* p) { return bf16_bits_to_float(*p); }

// x[j] = in[j] (float, or bf16 bits widened) + b[j] over j < n; returns the max, by the same
// per-lane comparisons as a 16-lane scalar loop (max is exact: every clone gives the same bits).
template <typename T>
__attribute__((always_inline)) inline float bias_max_body(const T* in, const float* b, float* x, int64_t n) {
  const float ninf = -std::numeric_limits<float>::infinity();
  F32x16 m = splat16(ninf);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const F32x16 v = load16(in + j) + load16(b + j);
    std::memcpy(x + j, &v, sizeof v);
    m = m < v ? v : m;
  }
  float mx = m[0];
  for (; j < n; ++j) {
    const float v = load1(in + j) + b[j];
    x[j] = v;
    mx = mx < v ? v : mx;
  }
  for (int k = 1; k < kLanes; ++k) mx = mx < m[k] ? m[k] : mx;
  return mx;
}

// max_j (x[j] + b[j]) and its first index (-1 where no value is > -inf, NaN never taken), as the
// scan "v > best: take it" finds them: each lane keeps its first maximum, the lanes' results are
// merged by value and then by the smaller index, and the tail (the largest indices) is scanned last.
typedef int32_t I32x16 __attribute__((vector_size(64)));
__attribute__((always_inline)) inline float bias_argmax_body(const float* x, const float* b, int64_t n,
                                                             int64_t* arg) {
  const float ninf = -std::numeric_limits<float>::infinity();
  F32x16 m = splat16(ninf);
  I32x16 id = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
  I32x16 j16 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes, j16 += static_cast<int32_t>(kLanes)) {
    const F32x16 v = load16(x + j) + load16(b + j);
    const I32x16 gt = v > m;
    m = gt ? v : m;
    id = gt ? j16 : id;
  }
  float best = ninf;
  int64_t best_id = -1;
  for (int k = 0; k < kLanes; ++k) {
    if (m[k] > best || (m[k] == best && id[k] >= 0 && id[k] < best_id)) {
      best = m[k];
      best_id = id[k];
    }
  }
  for (; j < n; ++j) {
    const float v = x[j] + b[j];
    if (v > best) {
      best = v;
      best_id = j;
    }
  }
  *arg = best_id;
  return best;
}

__attribute__((always_inline)) inline float add_bias_max_body(float* x, const float* b, int64_t n) {
  return bias_max_body<float>(x, b, x, n);
}

__attribute__((always_inline)) inline float widen_bias_max_body(const uint16_t* in, const float* b, float* x,
                                                                int64_t n) {
  return bias_max_body<uint16_t>(in, b, x, n);
}

__attribute__((always_inline)) inline double exp_shift_sum_body(float* __restrict__ x, int64_t n, float shift,
                                                                bool store) {
  // Blocks of 256: the exps are one plain elementwise loop, their sum a
  // pairwise tree of elementwise halvings (vectorises; float is accurate
  // enough at 8 levels), the block sums add up in double.
  constexpr int64_t kBlock = 256;
  alignas(64) float e[kBlock];
  double total = 0.0;
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t len = n - j0 < kBlock ? n - j0 : kBlock;
    float* xb = x + j0;
    if (len == kBlock) {  // a fixed trip count: no vector epilogue
      for (int64_t k = 0; k < kBlock; ++k) e[k] = exp_nonpos(xb[k] - shift);
      if (store) std::memcpy(xb, e, sizeof e);
    } else {
      for (int64_t k = 0; k < len; ++k) e[k] = exp_nonpos(xb[k] - shift);
      for (int64_t k = len; k < kBlock; ++k) e[k] = 0.0f;
      if (store) std::memcpy(xb, e, len * sizeof(float));
    }
    for (int64_t h = kBlock / 2; h >= 1; h /= 2) {
      for (int64_t k = 0; k < h; ++k) e[k] += e[k + h];
    }
    total += e[0];
  }
  return total;
}

__attribute__((always_inline)) inline void scale_body(float* __restrict__ x, int64_t n, float a) {
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

__attribute__((always_inline)) inline void scale_accumulate_to_bf16_body(const float* __restrict__ x, float a,
                                                                         float* __restrict__ acc,
                                                                         uint16_t* __restrict__ out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float g = x[j] * a;
    acc[j] += g;
    out[j] = float_to_bf16_bits(g);
  }
}

__attribute__((always_inline)) inline void bf16_to_float_body(const uint16_t* __restrict__ in, float* __restrict__ out,
                                                              int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = bf16_bits_to_float(in[j]);
}
}  // namespace

EF_WIDE_FN(float, add_bias_max, (float* x, const float* b, int64_t n), (x, b, n))
EF_WIDE_FN(float, bias_argmax, (const float* x, const float* b, int64_t n, int64_t* arg), (x, b, n, arg))
EF_WIDE_FN(float, widen_bias_max, (const uint16_t* in, const float* b, float* x, int64_t n), (in, b, x, n))
EF_WIDE_FN(double, exp_shift_sum, (float* x, int64_t n, float shift, bool store), (x, n, shift, store))
EF_WIDE_VARIANT(scale, (float* x, int64_t n, float a), (x, n, a))
EF_WIDE_VARIANT(scale_accumulate_to_bf16, (const float* x, float a, float* acc, uint16_t* out, int64_t n),
                (x, a, acc, out, n))
EF_WIDE_VARIANT(bf16_to_float, (const uint16_t* in, float* out, int64_t n), (in, out, n))

namespace {
EF_CLONES void silu_mul_portable(const float* a, const float* g, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float x = a[j];
    const float e = exp_nonpos(x < 0.0f ? x : -x);  // exp(-|x|) in (0, 1]
    const float r = 1.0f / (1.0f + e);
    const float sig = x < 0.0f ? e * r : r;
    out[j] = x * sig * g[j];
  }
}
}  // namespace

#if EF_AVX2_PATH
// ---- AVX2 + FMA silu_mul ------------------------------------------------------
// The same exp_nonpos and sigmoid as the portable loop, eight lanes at a time
// with fused multiply-adds (so within an ulp or two of it, not bit-identical),
// and with the bf16 / fp16 conversions done in registers: the portable loop
// leaves the float <-> bf16 rounding to scalar code, which costs more than the
// math. Two vectors per iteration for instruction-level parallelism; the tail
// goes through a zero-padded stack buffer so that every element takes the
// same arithmetic.
namespace {
#define EF_AVX2 __attribute__((target("avx2,fma,f16c")))

EF_AVX2 inline __m256 exp_nonpos8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 xc = _mm256_max_ps(lo, x);  // max_ps returns its second operand for NaN: NaN passes
  const __m256 fn = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i n = _mm256_cvtps_epi32(fn);
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
  const __m256 y = _mm256_mul_ps(p, scale);
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);  // 0 below -87.3
}

EF_AVX2 inline __m256 silu_mul8(__m256 x, __m256 g) {
  const __m256 neg_abs = _mm256_or_ps(x, _mm256_set1_ps(-0.0f));
  const __m256 e = exp_nonpos8(neg_abs);  // exp(-|x|) in (0, 1]
  const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  const __m256 sig = _mm256_blendv_ps(r, _mm256_mul_ps(e, r), x);  // sign bit of x: sigmoid(x) = e / (1 + e)
  return _mm256_mul_ps(_mm256_mul_ps(x, sig), g);
}

struct F32 {
  using T = float;
  EF_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  EF_AVX2 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
};

struct BF16 {  // bf16 <-> float as c10::BFloat16: widen by a shift; round to nearest even, NaN -> 0x7FC0
  using T = uint16_t;
  EF_AVX2 static __m256 load(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  EF_AVX2 static void store(uint16_t* p, __m256 v) {
    const __m256i b = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    __m256i h = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    h = _mm256_blendv_epi8(h, _mm256_set1_epi32(0x7FC0), nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);  // lanes 0, 2
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
};

struct F16 {  // F16C: round to nearest even, as c10::Half
  using T = uint16_t;
  EF_AVX2 static __m256 load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  EF_AVX2 static void store(uint16_t* p, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
};

template <typename IO>
EF_AVX2 void silu_mul_avx2(const typename IO::T* a, const typename IO::T* g, typename IO::T* out, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 y0 = silu_mul8(IO::load(a + j), IO::load(g + j));
    const __m256 y1 = silu_mul8(IO::load(a + j + 8), IO::load(g + j + 8));
    IO::store(out + j, y0);
    IO::store(out + j + 8, y1);
  }
  for (; j < n; j += 8) {
    const int64_t len = n - j < 8 ? n - j : 8;
    typename IO::T ta[8] = {}, tg[8] = {}, to[8];
    std::memcpy(ta, a + j, len * sizeof(typename IO::T));
    std::memcpy(tg, g + j, len * sizeof(typename IO::T));
    IO::store(to, silu_mul8(IO::load(ta), IO::load(tg)));
    std::memcpy(out + j, to, len * sizeof(typename IO::T));
  }
}
#undef EF_AVX2
}  // namespace

bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
}

void silu_mul(const float* a, const float* g, float* out, int64_t n) {
  if (has_avx2_fma()) return silu_mul_avx2<F32>(a, g, out, n);
  silu_mul_portable(a, g, out, n);
}

void silu_mul_bf16(const uint16_t* a, const uint16_t* g, uint16_t* out, int64_t n) {
  TORCH_INTERNAL_ASSERT(has_avx2_fma());
  silu_mul_avx2<BF16>(a, g, out, n);
}

void silu_mul_f16(const uint16_t* a, const uint16_t* g, uint16_t* out, int64_t n) {
  TORCH_INTERNAL_ASSERT(has_avx2_fma());
  silu_mul_avx2<F16>(a, g, out, n);
}
#else
bool has_avx2_fma() { return false; }
void silu_mul(const float* a, const float* g, float* out, int64_t n) { silu_mul_portable(a, g, out, n); }
void silu_mul_bf16(const uint16_t*, const uint16_t*, uint16_t*, int64_t) { TORCH_INTERNAL_ASSERT(false); }
void silu_mul_f16(const uint16_t*, const uint16_t*, uint16_t*, int64_t) { TORCH_INTERNAL_ASSERT(false); }
#endif

EF_CLONES void float_to_bf16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = float_to_bf16_bits(in[j]);
}

namespace {
// flow_element over n elements with the CFG and noise flags fixed at compile time, so that
// the branches leave the loop and it vectorises; Load / Store convert one element.
template <bool kCfg, bool kNoise, typename TI, typename TO, typename Load, typename Store>
__attribute__((always_inline)) inline void flow_loop(FlowScalars s, const TI* __restrict__ z, const TI* __restrict__ xc, const TI* __restrict__ xu,
                      const float* __restrict__ eps, TO* __restrict__ zo, TO* __restrict__ xo, int64_t n, Load load,
                      Store store) {
  s.noise = kNoise;
  for (int64_t j = 0; j < n; ++j) {
    float zn, x;
    flow_element(load(z[j]), load(xc[j]), kCfg, kCfg ? load(xu[j]) : 0.f, false, 0.f, kNoise ? eps[j] : 0.f, s, zn,
                 x);
    zo[j] = store(zn);
    xo[j] = store(x);
  }
}

template <typename TI, typename TO, typename Load, typename Store>
__attribute__((always_inline)) inline void flow_loops(const FlowScalars& s, const TI* z, const TI* xc, const TI* xu, const float* eps, TO* zo, TO* xo,
                       int64_t n, Load load, Store store) {
  if (xu && s.noise) {
    flow_loop<true, true>(s, z, xc, xu, eps, zo, xo, n, load, store);
  } else if (xu) {
    flow_loop<true, false>(s, z, xc, xu, eps, zo, xo, n, load, store);
  } else if (s.noise) {
    flow_loop<false, true>(s, z, xc, xu, eps, zo, xo, n, load, store);
  } else {
    flow_loop<false, false>(s, z, xc, xu, eps, zo, xo, n, load, store);
  }
}
}  // namespace

// The flow_step loops below are EF_WIDE_VARIANTs (see the top of this file).

namespace {
__attribute__((always_inline)) inline void bf16_copy2_body(const uint16_t* __restrict__ in, uint16_t* __restrict__ out1,
                            uint16_t* __restrict__ out2, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t h = float_to_bf16_bits(bf16_bits_to_float(in[j]));
    out1[j] = h;
    out2[j] = h;
  }
}

__attribute__((always_inline)) inline void flow_span_body(const FlowScalars& s, const float* z, const float* xc, const float* xu, const float* eps,
                           float* zo, float* xo, int64_t n) {
  flow_loops(s, z, xc, xu, eps, zo, xo, n, [](float v) { return v; }, [](float v) { return v; });
}

__attribute__((always_inline)) inline void flow_span_bf16_body(const FlowScalars& s, const uint16_t* z, const uint16_t* xc, const uint16_t* xu,
                                const float* eps, uint16_t* zo, uint16_t* xo, int64_t n) {
  flow_loops(s, z, xc, xu, eps, zo, xo, n, bf16_bits_to_float, float_to_bf16_bits);
}
}  // namespace

EF_WIDE_VARIANT(bf16_copy2, (const uint16_t* in, uint16_t* out1, uint16_t* out2, int64_t n), (in, out1, out2, n))
EF_WIDE_VARIANT(flow_span,
                (const FlowScalars& s, const float* z, const float* xc, const float* xu, const float* eps, float* zo,
                 float* xo, int64_t n),
                (s, z, xc, xu, eps, zo, xo, n))
EF_WIDE_VARIANT(flow_span_bf16,
                (const FlowScalars& s, const uint16_t* z, const uint16_t* xc, const uint16_t* xu, const float* eps,
                 uint16_t* zo, uint16_t* xo, int64_t n),
                (s, z, xc, xu, eps, zo, xo, n))

namespace {
// swiglu's backward for one element: a, b in, g = dL/d(silu(a) b); the sigmoid as silu_mul_portable.
__attribute__((always_inline)) inline void silu_mul_grad_element(float x, float b, float g, float& ga, float& gb) {
  const float e = exp_nonpos(x < 0.0f ? x : -x);  // exp(-|x|) in (0, 1]
  const float r = 1.0f / (1.0f + e);
  const float sig = x < 0.0f ? e * r : r;
  ga = g * b * (sig * (1.0f + x * (1.0f - sig)));
  gb = g * (x * sig);
}

__attribute__((always_inline)) inline void silu_mul_backward_body(const float* __restrict__ a, const float* __restrict__ b,
                                                                  const float* __restrict__ g, float* __restrict__ ga,
                                                                  float* __restrict__ gb, int64_t n) {
  for (int64_t j = 0; j < n; ++j) silu_mul_grad_element(a[j], b[j], g[j], ga[j], gb[j]);
}

// The bf16 loop runs over a multiple of kSiluBlock elements; the rest goes through zero-padded
// stack buffers, so that the tail of every row (F = 341 in the built-in model: 21 elements)
// takes the vector arithmetic too (measured here: ~15 % faster at F = 341; for float32 the
// same change measured slower, so that loop is left plain).
constexpr int64_t kSiluBlock = 32;

__attribute__((always_inline)) inline void silu_mul_backward_bf16_body(const uint16_t* __restrict__ a,
                                                                       const uint16_t* __restrict__ b,
                                                                       const uint16_t* __restrict__ g,
                                                                       uint16_t* __restrict__ ga,
                                                                       uint16_t* __restrict__ gb, int64_t n) {
  const int64_t whole = n - n % kSiluBlock;
  for (int64_t j = 0; j < whole; ++j) {
    float da, db;
    silu_mul_grad_element(bf16_bits_to_float(a[j]), bf16_bits_to_float(b[j]), bf16_bits_to_float(g[j]), da, db);
    ga[j] = float_to_bf16_bits(da);
    gb[j] = float_to_bf16_bits(db);
  }
  if (whole < n) {
    alignas(64) uint16_t ta[kSiluBlock] = {}, tb[kSiluBlock] = {}, tg[kSiluBlock] = {}, oa[kSiluBlock], ob[kSiluBlock];
    const int64_t r = n - whole;
    for (int64_t j = 0; j < r; ++j) {
      ta[j] = a[whole + j];
      tb[j] = b[whole + j];
      tg[j] = g[whole + j];
    }
    for (int64_t j = 0; j < kSiluBlock; ++j) {
      float da, db;
      silu_mul_grad_element(bf16_bits_to_float(ta[j]), bf16_bits_to_float(tb[j]), bf16_bits_to_float(tg[j]), da, db);
      oa[j] = float_to_bf16_bits(da);
      ob[j] = float_to_bf16_bits(db);
    }
    for (int64_t j = 0; j < r; ++j) {
      ga[whole + j] = oa[j];
      gb[whole + j] = ob[j];
    }
  }
}
}  // namespace

EF_WIDE_VARIANT(silu_mul_backward,
                (const float* a, const float* b, const float* g, float* ga, float* gb, int64_t n),
                (a, b, g, ga, gb, n))
EF_WIDE_VARIANT(silu_mul_backward_bf16,
                (const uint16_t* a, const uint16_t* b, const uint16_t* g, uint16_t* ga, uint16_t* gb, int64_t n),
                (a, b, g, ga, gb, n))

EF_CLONES void rms_backward_row(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ w,
                                int64_t n, float eps, float* __restrict__ gw_acc, float* __restrict__ gx) {
  constexpr int64_t kLanes = 16;
  const float ss = sum_squares(x, n);  // the forward's statistic, the same bits
  float dt[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) dt[k] += (g[j + k] * w[j + k]) * x[j + k];
  }
  for (int64_t k = 0; j + k < n; ++k) dt[k] += (g[j + k] * w[j + k]) * x[j + k];
  float d = 0.0f;
  for (int64_t k = 0; k < kLanes; ++k) d += dt[k];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  const float c = d * inv * inv / static_cast<float>(n);  // mean(g w n) / r, n = x r
  for (int64_t i = 0; i < n; ++i) {
    gw_acc[i] += g[i] * (x[i] * inv);
    gx[i] = inv * (g[i] * w[i] - x[i] * c);
  }
}

EF_CLONES void norm_rope_row(const float* __restrict__ x, float inv, const float* __restrict__ w,
                             const float* __restrict__ c, const float* __restrict__ s, int64_t half,
                             float* __restrict__ out) {
  for (int64_t j = 0; j < half; ++j) {
    const float a = x[2 * j] * inv * w[2 * j];
    const float b = x[2 * j + 1] * inv * w[2 * j + 1];
    out[2 * j] = a * c[j] - b * s[j];
    out[2 * j + 1] = b * c[j] + a * s[j];
  }
}

EF_CLONES void rope_backward_row(const float* __restrict__ g, const float* __restrict__ c,
                                 const float* __restrict__ s, int64_t half, float* __restrict__ gm) {
  for (int64_t j = 0; j < half; ++j) {
    const float g0 = g[2 * j], g1 = g[2 * j + 1];
    gm[2 * j] = g0 * c[j] + g1 * s[j];
    gm[2 * j + 1] = g1 * c[j] - g0 * s[j];
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
