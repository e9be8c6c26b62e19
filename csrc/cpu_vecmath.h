// Branch-free float32 math for the CPU kernels' hot loops.
//
// The scalar functions below are written so that a loop calling them over an
// array vectorises: bit manipulation instead of frexp/ldexp, selects instead
// of branches, float rounding tricks instead of floor/nearbyint. Over their
// whole domain of use each is within 1 ulp of glibc (exhaustive sweeps over
// the 2^23 Philox uniforms for log/sin/cos and over every float in [-87.3, 0]
// for exp; tests/test_vecmath.py checks the noise against the reference). The
// batch routines, defined in cpu_vecmath.cpp, are built for AVX-512, AVX2 and
// plain x86-64 (GCC function multiversioning) and use them.
//
// The build passes -ffp-contract=off: the AVX-512 clone could otherwise fuse
// multiply-adds (AVX-512F has FMA), so clones, and thus machines, would differ
// in the last bit. Without it every clone gives bit-identical results (silu_mul's
// explicit AVX2 + FMA path, below, is the one exception).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace elf_fast {
struct FlowScalars;  // flow_step_math.h
}

namespace elf_fast::vecmath {

inline uint32_t as_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float as_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Round t (|t| < 2^22) to the nearest integer, returned as int and, in ft, as
// float: adding 1.5 * 2^23 leaves the integer in the low mantissa bits. Unlike
// a float -> int -> float round trip (which GCC folds into truncf, and then
// fails to if-convert around), this is plain float arithmetic that vectorises.
inline int32_t round_to_int(float t, float& ft) {
  const float big = t + 12582912.0f;
  ft = big - 12582912.0f;
  return static_cast<int32_t>(as_bits(big) - 0x4B400000u);
}

// Natural log of a normal float u in (0, 1) (Cephes logf): u = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log u = log1p(m - 1) + e ln2, log1p by a minimax
// polynomial, ln2 split in two so e ln2 adds no rounding error.
inline float log_unit(float u) {
  const uint32_t bits = as_bits(u);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126);
  float m = as_float((bits & 0x007FFFFFu) | 0x3F000000u);  // [0.5, 1)
  const bool lo = m < 0.707106781186547524f;
  e = lo ? e - 1.0f : e;
  m = lo ? m + m - 1.0f : m - 1.0f;  // exact: Sterbenz
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * z;
  y += e * -2.12194440e-4f;
  y -= 0.5f * z;
  return (m + y) + e * 0.693359375f;
}

// sin and cos of th in [0, 2 pi] (Cephes sinf/cosf): th = j pi/2 + r by a
// three-part Cody-Waite split of pi/2 (j * part exact for small j), minimax
// polynomials for sin r and cos r on [-pi/4, pi/4], then the quadrant j mod 4
// swaps them and flips signs.
inline void sincos_2pi(float th, float& s, float& c) {
  float fj;
  const int32_t j = round_to_int(th * 0.636619772367581343f, fj);
  const float r = ((th - fj * 1.5703125f) - fj * 4.837512969970703125e-4f) - fj * 7.54978995489188216e-8f;
  const float z = r * r;
  const float sr = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float cr = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                   0.5f * z + 1.0f;
  const bool swap = j & 1;
  const uint32_t sin_sign = static_cast<uint32_t>(j & 2) << 30;        // quadrants 2, 3
  const uint32_t cos_sign = static_cast<uint32_t>((j + 1) & 2) << 30;  // quadrants 1, 2
  s = as_float(as_bits(swap ? cr : sr) ^ sin_sign);
  c = as_float(as_bits(swap ? sr : cr) ^ cos_sign);
}

// exp(x) for x <= 0 (Cephes expf): x = n ln2 + r with ln2 split in two, exp r
// by a minimax polynomial, 2^n from the exponent bits. 0 below -87.3, where
// exp(x) < 2^-126 would need a subnormal scale.
inline float exp_nonpos(float x) {
  const float xc = x < -87.3f ? -87.3f : x;  // keeps n >= -126; NaN passes through
  float fn;
  const int32_t n = round_to_int(xc * 1.44269504088896341f, fn);
  const float r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * (r * r) + r) + 1.0f;
  const float y = p * as_float(static_cast<uint32_t>(n + 127) << 23);
  return x < -87.3f ? 0.0f : y;
}

// ---- batch routines (cpu_vecmath.cpp) ---------------------------------------

// Most Philox groups one philox_normal_batch call handles (4 normals each).
constexpr int64_t kMaxNormalGroups = 256;

// The normals of elements 4 g0 .. 4 (g0 + n) - 1 into out[0 .. 4n), n <= 256:
// the same function as philox_normal4 (philox.h) per group, up to the last ulp
// of log/sin/cos.
void philox_normal_batch(uint64_t g0, int64_t n, uint64_t offset, uint64_t seed, float* out);

// x[j] += b[j] for j < n; returns max_j x[j] (-inf for n = 0).
float add_bias_max(float* x, const float* b, int64_t n);
// max_j (x[j] + b[j]) over j < n (n < 2^31) and, in *arg, its first index: what the scan
// "v > best: take it" from best = -inf finds (-inf and -1 when no value exceeds -inf; NaN is never taken).
float bias_argmax(const float* x, const float* b, int64_t n, int64_t* arg);
// x[j] = in[j] (bf16 bits, widened) + b[j] for j < n; returns max_j x[j] (-inf for n = 0).
float widen_bias_max(const uint16_t* in, const float* b, float* x, int64_t n);

// sum_j exp(x[j] - shift), for shift >= max_j x[j]; with store, x[j] becomes
// exp(x[j] - shift).
double exp_shift_sum(float* x, int64_t n, float shift, bool store);

// x[j] *= a for j < n.
void scale(float* x, int64_t n, float a);

// out[j] = silu(a[j]) * g[j] = a[j] * sigmoid(a[j]) * g[j], sigmoid from exp_nonpos(-|a|)
// (within a few ulp of 1 / (1 + exp(-a))). On CPUs with AVX2 + FMA + F16C (checked at run
// time) an intrinsics loop with fused multiply-adds does it, so results differ from the
// portable loop's in the last bit or two; the other routines here are bit-identical everywhere.
void silu_mul(const float* a, const float* g, float* out, int64_t n);

// Whether this CPU has AVX2, FMA and F16C, which the 16-bit silu_mul variants require.
bool has_avx2_fma();

// silu_mul on raw bfloat16 / float16 bits: converted in registers, computed in float32 and
// rounded once to nearest even (NaN -> the canonical quiet NaN for bf16), as c10 converts.
// Only when has_avx2_fma(); callers fall back to silu_mul on float rows otherwise.
void silu_mul_bf16(const uint16_t* a, const uint16_t* g, uint16_t* out, int64_t n);
void silu_mul_f16(const uint16_t* a, const uint16_t* g, uint16_t* out, int64_t n);

// bfloat16 bits <-> float32 as c10::BFloat16 converts: widening is a shift; narrowing rounds
// to nearest even, NaN -> 0x7FC0. Branch-free, so that loops over them vectorise.
inline float bf16_bits_to_float(uint16_t h) { return as_float(static_cast<uint32_t>(h) << 16); }
inline uint16_t float_to_bf16_bits(float v) {
  const uint32_t b = as_bits(v);
  const uint32_t r = (b + (((b >> 16) & 1u) + 0x7FFFu)) >> 16;
  return static_cast<uint16_t>(v != v ? 0x7FC0u : r);
}
void bf16_to_float(const uint16_t* in, float* out, int64_t n);
void float_to_bf16(const float* in, uint16_t* out, int64_t n);
// With g = x[j] * a: acc[j] += g and out[j] = g rounded to bf16, in one pass.
void scale_accumulate_to_bf16(const float* x, float a, float* acc, uint16_t* out, int64_t n);
// out1[j] = out2[j] = in[j] converted to float32 and back (the identity, except NaN -> 0x7FC0).
void bf16_copy2(const uint16_t* in, uint16_t* out1, uint16_t* out2, int64_t n);

// flow_step's per-element update (flow_step_math.h's flow_element, not at a condition
// position) over n contiguous float32 elements: xu (CFG's unconditional branch) and eps
// (the SDE noise, used when s.noise) may be null. Bit-identical to flow_element in every clone.
void flow_span(const FlowScalars& s, const float* z, const float* xc, const float* xu, const float* eps, float* zo,
               float* xo, int64_t n);
// The same with bfloat16 inputs and outputs (raw bits), converted in registers: one pass.
void flow_span_bf16(const FlowScalars& s, const uint16_t* z, const uint16_t* xc, const uint16_t* xu, const float* eps,
                    uint16_t* zo, uint16_t* xo, int64_t n);

// swiglu's backward over n elements: with s = sigmoid(a[j]) (as silu_mul's portable loop),
// ga[j] = g[j] b[j] s (1 + a[j] (1 - s)) and gb[j] = g[j] a[j] s, all float32 (no FMA), so
// every clone gives the same bits. The bf16 variant converts in registers and rounds once.
void silu_mul_backward(const float* a, const float* b, const float* g, float* ga, float* gb, int64_t n);
void silu_mul_backward_bf16(const uint16_t* a, const uint16_t* b, const uint16_t* g, uint16_t* ga, uint16_t* gb,
                            int64_t n);

// One row of rms_norm's backward, y = x r w with r = rsqrt(mean(x^2) + eps): with
// c = mean(g w x) r^2, gx[j] = r (g[j] w[j] - x[j] c) and gw_acc[j] += g[j] x[j] r. The two
// row sums over 16 interleaved partial sums, as sum_squares.
void rms_backward_row(const float* x, const float* g, const float* w, int64_t n, float eps, float* gw_acc,
                      float* gx);
// qk_norm_rope's forward for one head row: (a, b) = (x[2j], x[2j+1]) inv w, then
// out[2j] = a c[j] - b s[j], out[2j+1] = b c[j] + a s[j], for j < half.
void norm_rope_row(const float* x, float inv, const float* w, const float* c, const float* s, int64_t half,
                   float* out);
// The interleaved RoPE rotation transposed (by -angle): gm[2j] = g[2j] c[j] + g[2j+1] s[j],
// gm[2j+1] = g[2j+1] c[j] - g[2j] s[j], for j < half.
void rope_backward_row(const float* g, const float* c, const float* s, int64_t half, float* gm);

// sum_j x[j]^2 over 16 interleaved partial sums (so that it vectorises), added in order.
float sum_squares(const float* x, int64_t n);

}  // namespace elf_fast::vecmath
