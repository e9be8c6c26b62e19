// fp32-accurate GEMMs on TF32 tensor cores: the split-precision "3xTF32" product.
//
// An fp32 operand x is split into x = hi + lo (+ a remainder of at most 2^-22 |x|), hi and lo
// both exact TF32 values (fp32 with the low 13 mantissa bits zero), and
//   a b ~= hi_a hi_b + hi_a lo_b + lo_a hi_b,
// three GEMMs whose every product is exact on a TF32 tensor core (11 x 11 significant bits fit
// in fp32's 24) and which accumulate in fp32. lo_a lo_b is dropped.
//
// ---- the rounding rule (tf32_round_bits: one definition for the CPU loop, the CUDA kernel
// and its emulation) ----------------------------------------------------------------------
// On the fp32 bit pattern u, with mag = u & 0x7fffffff and sign = u & 0x80000000:
//   * inf and NaN (mag >= 0x7f800000) are returned unchanged (a NaN keeps its payload);
//   * else r = (mag + 0x1000) & 0xffffe000: round to nearest on the magnitude keeping 10
//     mantissa bits, ties (low 13 bits exactly 0x1000) away from zero, as PTX's
//     cvt.rna.tf32.f32; a carry out of the mantissa bumps the exponent, which is the correct
//     rounding (also from the largest subnormals to the smallest normal: subnormals are
//     rounded on the same 2^-136 grid as the smallest normals' mantissas);
//   * a finite value never rounds to infinity: r is capped at 0x7f7fe000, the largest finite
//     TF32 value (values within half a TF32 ulp of FLT_MAX round down instead of up);
//   * result = r | sign (rounding is symmetric: -x rounds to -round(x); -0 stays -0).
// Unsigned arithmetic on mag cannot overflow (mag + 0x1000 <= 0x7f800fff for finite input).
// The split (tf32_split): hi = round(x); lo = round(x - hi); for non-finite x, hi = x, lo = 0.
// x - hi is exact in fp32 (both are multiples of x's ulp and |x - hi| <= 2^-11 |x|).
//
// ---- error of one product, relative to |a| |b| (u = 2^-24, normal operands) ----------
//   |a - hi_a| <= 2^-11 |a|     (half a TF32 ulp: 10 stored mantissa bits)
//   |lo_a| <= 2^-11 |a|,  |a - hi_a - lo_a| <= 2^-11 |a - hi_a| <= 2^-22 |a|
//   a b - (hi_a hi_b + hi_a lo_b + lo_a hi_b)
//     = lo_a lo_b + e_a b + (hi_a + lo_a) e_b     with e = x - hi - lo
//   |.| <= (2^-22 + 2^-22 + 2^-22) |a| |b| (1 + 2^-10) ~= 7.2e-7 |a| |b|   (= 12 u)
// The three partial products are exact in fp32 (TF32 tensor cores form exact products and
// accumulate in fp32); each GEMM accumulates its K terms in fp32 like an fp32 GEMM (error
// <= gamma_K sum_k |a_k b_k|, gamma_K ~ K u), and adding the three partial results costs two
// more fp32 roundings of the output. So the split adds at most 12 u per product to the fp32
// GEMM's own bound: for selfcond_proj (K = C <= 1024 in the bottleneck, K = R = 128 in proj2)
// that is 12 u beside gamma_K = 128 u .. 1024 u. Against the criterion (max |error|
// <= 1e-5 x max |output|): with uncorrelated signs the per-product errors add like a random
// walk, <= 12 u sqrt(K) rms|a_k b_k| against |output| ~ sqrt(K) rms|a_k b_k|, so <= ~7e-7 of
// the output per GEMM, ~1.5e-6 for the two GEMMs in sequence: well inside 1e-5, and of the
// order of the fp32 rounding noise itself (~u sqrt(K) rms). Only heavy cancellation
// (|output| << sum |a_k b_k|) makes the relative error larger -- exactly as for an fp32 GEMM,
// whose own worst-case bound gamma_K is 6e-5 at K = 1024.
// (Plain TF32, one product, errs by up to 2^-10 |a| |b| ~ 1e-3: 1,400 times more.)
// Subnormal operands lose relative accuracy (their TF32 grid is absolute, 2^-136), as they do
// in fp32 itself; non-finite inputs give non-finite outputs (an inf may come out as NaN
// through inf x 0 in a cross term).
#pragma once
#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace elf_fast {

constexpr uint32_t kTf32Half = 0x1000u;        // half a TF32 ulp on the fp32 bit pattern
constexpr uint32_t kTf32Keep = 0xffffe000u;    // sign, exponent and the top 10 mantissa bits
constexpr uint32_t kTf32MaxFinite = 0x7f7fe000u;
constexpr uint32_t kFp32ExpMask = 0x7f800000u;

EF_HD uint32_t ef_float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

EF_HD float ef_bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// The rule above, on the bit pattern.
EF_HD uint32_t tf32_round_bits(uint32_t u) {
  const uint32_t mag = u & 0x7fffffffu;
  if (mag >= kFp32ExpMask) return u;  // inf, NaN
  uint32_t r = (mag + kTf32Half) & kTf32Keep;
  if (r > kTf32MaxFinite) r = kTf32MaxFinite;
  return r | (u & 0x80000000u);
}

EF_HD void tf32_split(float x, float& hi, float& lo) {
  const uint32_t u = ef_float_bits(x);
  if ((u & kFp32ExpMask) == kFp32ExpMask) {  // inf, NaN
    hi = x;
    lo = 0.f;
    return;
  }
  hi = ef_bits_float(tf32_round_bits(u));
  lo = ef_bits_float(tf32_round_bits(ef_float_bits(x - hi)));
}

}  // namespace elf_fast

// ---- host side: the split as tensors, the 3-GEMM product, the TF32 scope ------------------
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <string>

namespace elf_fast {

// An fp32 matrix as its TF32 halves; views (t, narrow) apply to both.
struct Tf32Split {
  at::Tensor hi, lo;
  Tf32Split t() const { return {hi.t(), lo.t()}; }
  Tf32Split narrow(int64_t dim, int64_t start, int64_t length) const {
    return {hi.narrow(dim, start, length), lo.narrow(dim, start, length)};
  }
};

// A device's split of an fp32 tensor (any strides) into contiguous hi / lo of its shape, by
// the rule above: tf32_split_cpu (split_gemm.cpp, a parallel loop) or the CUDA kernel
// tf32_split_cuda (csrc/cuda/selfcond_proj.cu; in the emulation build, that kernel emulated).
using Tf32SplitFn = Tf32Split (*)(const at::Tensor& x);
Tf32Split tf32_split_cpu(const at::Tensor& x);
Tf32Split tf32_split_cuda(const at::Tensor& x);  // defined only where csrc/cuda is built

// out += a b (fp32, 2-D, out (n, m), a (n, k), b (k, m)) as lo_a hi_b + hi_a lo_b + hi_a hi_b
// (the small terms first), each an fp32 GEMM through ATen run with TF32 tensor cores on for
// CUDA tensors (Tf32TensorCoreScope). On the CPU (the emulation build) the same three GEMMs run
// in fp32: the split logic is exercised, its accuracy is then trivially fp32's.
void addmm_3xtf32_(at::Tensor& out, const Tf32Split& a, const Tf32Split& b);
// bias + a b, bias broadcast like at::addmm's.
at::Tensor addmm_3xtf32(const at::Tensor& bias, const Tf32Split& a, const Tf32Split& b);
at::Tensor addmm_3xtf32(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b, Tf32SplitFn split);

// For its lifetime, cuBLAS runs fp32 GEMMs on TF32 tensor cores; on exit (also by an
// exception) the previous setting is restored. It engages only when asked (`engage`: the
// tensors are on CUDA), when TF32 is not already on, and when the setting is in a state it can
// restore exactly: the CUDA matmul precision (ATen's new API, what cuBLAS reads) is "none" or
// "ieee" and the legacy float32 matmul precision is "highest" (consistent with it). Then it sets
// both with setAllowTF32CuBLAS(true) (so TunableOp, which reads the legacy flag, agrees) and on
// exit writes back "highest" and the previous CUDA matmul precision. In a state mixed by the
// legacy and new APIs it leaves everything alone: the GEMMs then run in full fp32 (correct,
// without tensor cores). The setting is process-global: another thread's fp32 cuBLAS GEMM that
// starts while a scope is open also gets TF32 (docs/method.md §7.6); a scope that finds TF32
// already on because another thread's scope set it leaves it alone, so its remaining GEMMs may
// run in plain fp32 once that scope closes (correct, slower). A cuBLAS call with its own compute
// type (the fused kernel, see selfcond_proj.cpp) would need no global state at all.
class Tf32TensorCoreScope {
 public:
  explicit Tf32TensorCoreScope(bool engage);
  ~Tf32TensorCoreScope();
  Tf32TensorCoreScope(const Tf32TensorCoreScope&) = delete;
  Tf32TensorCoreScope& operator=(const Tf32TensorCoreScope&) = delete;
  bool engaged() const { return engaged_; }

 private:
  bool engaged_ = false;
  at::Float32Precision previous_ = at::Float32Precision::NONE;
};

// Test hook (tests/test_selfcond_proj.py, through the modules' _tf32_scope_probe): opens a scope
// with engage = true and returns the CUDA matmul precision seen inside ("tf32" when it engaged);
// with `fail` it throws from inside the scope, whose destructor must still restore the setting.
std::string tf32_scope_probe(bool fail);

}  // namespace elf_fast
