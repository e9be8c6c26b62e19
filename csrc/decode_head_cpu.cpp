// Decode head, CPU row kernels: the running argmax of unembed_argmax and the
// per-row cross-entropy (+ gradient) of linear_cross_entropy, which the
// device-generic drivers (decode_head.cpp) call on each fp32 logits block;
// contracts: ArgmaxUpdateFn / CrossEntropyRowsFn in elf_fast.h.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "cpu_vecmath.h"
#include "elf_fast.h"

namespace elf_fast {
namespace {

void argmax_update_cpu(const Tensor& logits, const Tensor& bias, int64_t v0, Tensor& best_val, Tensor& best_idx) {
  const int64_t rows = logits.size(0), tile = logits.size(1), ld = logits.stride(0);
  const float* L = logits.const_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  float* bv = best_val.mutable_data_ptr<float>();
  int64_t* bi = best_idx.mutable_data_ptr<int64_t>();
  TORCH_CHECK(tile < (int64_t{1} << 31), "elf_fast.unembed_argmax: a vocabulary tile of ", tile,
              " columns is too wide (< 2^31)");
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t arg = -1;
      const float m = vecmath::bias_argmax(L + r * ld, b, tile, &arg);  // the first maximum of the tile
      if (arg >= 0 && m > bv[r]) {
        bv[r] = m;
        bi[r] = v0 + arg;
      }
    }
  });
}

// Target ids are validated here (the driver does not read them, see decode_head.cpp): every id
// must be < V, on zero-weight rows too (as in the reference, whose F.cross_entropy rejects them);
// the CUDA kernel asserts the same rule on the device.
void check_target_ids(const int64_t* tg, int64_t rows, int64_t V) {
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(tg[r] < V, "elf_fast.linear_cross_entropy: 'targets' holds id ", tg[r],
                ", >= the vocabulary size ", V, " (ids must be < V; negative ids mark ignored rows)");
  }
}

// One row's cross-entropy from its biased logits (row, in place, fp32) and their max m: returns
// the loss and, where the row has a gradient (compute_grad, a target, a nonzero weight), leaves
// exp(row - m) in row and sets *scale to w / sum, so that dL/dlogits = row * scale - w at the
// target. One exp per logit: the pass that sums exp(x - max) keeps those values when the
// gradient is wanted. A row without one (*has_grad false) is left to the caller to zero.
inline float cross_entropy_row(float* row, float m, int64_t V, int64_t t, float w, bool compute_grad, bool* has_grad,
                               float* scale) {
  const float wr = t >= 0 ? w : 0.0f;
  const float xt = t >= 0 ? row[t] : 0.0f;
  const bool grad = compute_grad && wr != 0.0f;
  const double s = vecmath::exp_shift_sum(row, V, m, grad);
  const float lse = m + static_cast<float>(std::log(s));
  *has_grad = grad;
  *scale = grad ? static_cast<float>(wr / s) : 0.0f;
  return t >= 0 && wr != 0.0f ? wr * (lse - xt) : 0.0f;
}

void cross_entropy_rows_cpu(Tensor& logits, const Tensor& bias, const Tensor& targets, const Tensor& weight,
                            Tensor& loss_rows, bool compute_grad) {
  const int64_t rows = logits.size(0), V = logits.size(1);
  float* L = logits.mutable_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  const int64_t* tg = targets.const_data_ptr<int64_t>();
  check_target_ids(tg, rows, V);
  const float* w = weight.const_data_ptr<float>();
  float* loss = loss_rows.mutable_data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = L + r * V;
      bool grad = false;
      float a = 0.0f;
      loss[r] = cross_entropy_row(row, vecmath::add_bias_max(row, b, V), V, tg[r], w[r], compute_grad, &grad, &a);
      if (grad) {
        vecmath::scale(row, V, a);
        row[tg[r]] -= w[r];
      } else if (compute_grad) {
        std::fill(row, row + V, 0.0f);
      }
    }
  });
}

// cross_entropy_rows_cpu on bf16 logits (CrossEntropyRowsBf16Fn): each row is widened (bias
// added, max taken, in one pass) into a V-float buffer (L2-resident), its exps taken there, and
// its gradient scaled, added to the bias gradient and rounded back over the bf16 row in one more
// pass, so the fp32 (rows, V) block, its two conversions and the column sum of the fp32 path are
// not needed. Same float operations as cross_entropy_rows_cpu, so the same bits. With several
// threads, each adds into its own (V,) partial, summed into grad_bias at the end.
void cross_entropy_rows_bf16_cpu(Tensor& logits, const Tensor& bias, const Tensor& targets, const Tensor& weight,
                                 Tensor& loss_rows, bool compute_grad, Tensor& grad_bias) {
  const int64_t rows = logits.size(0), V = logits.size(1);
  TORCH_INTERNAL_ASSERT(logits.scalar_type() == at::kBFloat16 && logits.is_contiguous());
  auto* L = reinterpret_cast<uint16_t*>(logits.mutable_data_ptr<at::BFloat16>());
  const float* b = bias.const_data_ptr<float>();
  const int64_t* tg = targets.const_data_ptr<int64_t>();
  check_target_ids(tg, rows, V);
  const float* w = weight.const_data_ptr<float>();
  float* loss = loss_rows.mutable_data_ptr<float>();
  const int threads = compute_grad ? at::get_num_threads() : 1;
  Tensor partial;  // (threads, V): per-thread bias-gradient sums when several threads add
  if (compute_grad && threads > 1) partial = at::zeros({threads, V}, grad_bias.options());
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(V);
    float* row = buf.data();
    float* acc = !compute_grad ? nullptr
                 : threads > 1 ? partial.mutable_data_ptr<float>() + at::get_thread_num() * V
                               : grad_bias.mutable_data_ptr<float>();
    for (int64_t r = r0; r < r1; ++r) {
      uint16_t* out = L + r * V;
      bool grad = false;
      float a = 0.0f;
      loss[r] = cross_entropy_row(row, vecmath::widen_bias_max(out, b, row, V), V, tg[r], w[r], compute_grad,
                                  &grad, &a);
      if (grad) {  // the target's element apart: row[t] * a - w
        const int64_t t = tg[r];
        vecmath::scale_accumulate_to_bf16(row, a, acc, out, t);
        const float gt = row[t] * a - w[r];
        acc[t] += gt;
        out[t] = vecmath::float_to_bf16_bits(gt);
        vecmath::scale_accumulate_to_bf16(row + t + 1, a, acc + t + 1, out + t + 1, V - t - 1);
      } else if (compute_grad) {
        std::fill(out, out + V, uint16_t{0});
      }
    }
  });
  if (partial.defined()) grad_bias.add_(partial.sum(0));
}

std::tuple<Tensor, Tensor> unembed_argmax_cpu(const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U,
                                              const Tensor& u, int64_t vocab_tile) {
  TORCH_CHECK(h.device().is_cpu(), "elf_fast.unembed_argmax (CPU kernel): 'h' must be on the CPU");
  return unembed_argmax_driver(h, P, p, U, u, vocab_tile, &argmax_update_cpu);
}

// Whether oneDNN runs bf16 GEMMs natively here (AVX512-BF16 / AMX and not capped below them,
// e.g. by ONEDNN_MAX_CPU_ISA; elsewhere it emulates them, ~100x slower): the same query as
// elf_fast.muon.cpu_has_native_bf16, asked once.
bool onednn_native_bf16() {
  static const bool native = [] {
    const auto op = c10::Dispatcher::singleton().findOp(c10::OperatorName("mkldnn::_is_mkldnn_bf16_supported", ""));
    return op.has_value() && op->typed<bool()>().call();
  }();
  return native;
}

// bf16 inputs run the vocabulary GEMMs in bf16 where bf16 is native (linear_cross_entropy_driver,
// rows_bf16); ELF_FAST_LCE_CPU_BF16=0 keeps them fp32 on the upcast inputs (as on other CPUs).
bool lce_bf16_gemm(const Tensor& h) {
  if (h.scalar_type() != at::kBFloat16) return false;
  const char* env = std::getenv("ELF_FAST_LCE_CPU_BF16");
  return !(env != nullptr && std::string(env) == "0") && onednn_native_bf16();
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_cpu(
    const Tensor& h, const Tensor& P, const Tensor& p, const Tensor& U, const Tensor& u, const Tensor& targets,
    const std::optional<Tensor>& weight, bool compute_grad, int64_t chunk) {
  TORCH_CHECK(h.device().is_cpu(), "elf_fast.linear_cross_entropy (CPU kernel): 'h' must be on the CPU");
  return linear_cross_entropy_driver(h, P, p, U, u, targets, weight, compute_grad, chunk, &cross_entropy_rows_cpu,
                                     nullptr, lce_bf16_gemm(h) ? &cross_entropy_rows_bf16_cpu : nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(elf_fast, CPU, m) {
  m.impl("unembed_argmax", &unembed_argmax_cpu);
  m.impl("linear_cross_entropy", &linear_cross_entropy_cpu);
}

}  // namespace elf_fast
