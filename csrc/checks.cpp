// Argument validation shared by every op and device (CPU, CUDA, the CUDA emulation
// build): each op's input rules are written here once. Messages name the argument.
#include "elf_fast.h"

#include <cmath>
#include <sstream>
#include <utility>

namespace elf_fast {

void check_float_tensor(const Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "elf_fast: argument '", name, "' is undefined");
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, "elf_fast: argument '", name,
              "' must be float32, bfloat16 or float16, got ", st);
  TORCH_CHECK(t.is_contiguous(), "elf_fast: argument '", name, "' must be contiguous (call .contiguous())");
}

void check_same_device(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), "elf_fast: argument '", name_b, "' is on ", b.device(), " but '",
              name_a, "' is on ", a.device());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "elf_fast: argument '", name, "' must have shape ", expected, ", got ",
              t.sizes());
}

// ---- flow step ------------------------------------------------------------------
std::tuple<Tensor, Tensor> flow_step_prepare(const Tensor& z, const Tensor& x_c,
                                             const std::optional<Tensor>& x_u,
                                             const std::optional<Tensor>& cond_mask,
                                             const std::optional<Tensor>& x_cond,
                                             const FlowStepArgs& a) {
  check_float_tensor(z, "z");
  TORCH_CHECK(z.dim() >= 1 && z.size(-1) > 0, "elf_fast.flow_step: 'z' must be (..., C) with C > 0, got ",
              z.sizes());
  check_float_tensor(x_c, "x_c");
  check_same_device(z, "z", x_c, "x_c");
  check_shape(x_c, "x_c", z.sizes());
  if (x_u.has_value()) {
    check_float_tensor(*x_u, "x_u");
    check_same_device(z, "z", *x_u, "x_u");
    check_shape(*x_u, "x_u", z.sizes());
    TORCH_CHECK(x_u->scalar_type() == x_c.scalar_type(), "elf_fast.flow_step: 'x_u' dtype ",
                x_u->scalar_type(), " differs from 'x_c' dtype ", x_c.scalar_type());
  }
  TORCH_CHECK(cond_mask.has_value() == x_cond.has_value(),
              "elf_fast.flow_step: 'cond_mask' and 'x_cond' must be given together");
  if (cond_mask.has_value()) {
    const Tensor& m = *cond_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool, "elf_fast.flow_step: 'cond_mask' must be bool, got ",
                m.scalar_type());
    TORCH_CHECK(m.is_contiguous(), "elf_fast.flow_step: 'cond_mask' must be contiguous");
    check_same_device(z, "z", m, "cond_mask");
    check_shape(m, "cond_mask", z.sizes().slice(0, z.dim() - 1));
    check_float_tensor(*x_cond, "x_cond");
    check_same_device(z, "z", *x_cond, "x_cond");
    check_shape(*x_cond, "x_cond", z.sizes());
    TORCH_CHECK(x_cond->scalar_type() == z.scalar_type(), "elf_fast.flow_step: 'x_cond' dtype ",
                x_cond->scalar_type(), " differs from 'z' dtype ", z.scalar_type());
  }
  // NaN / inf scalars are refused (elf_fast/op_rules.py: the same rule for the wrappers and the reference)
  for (const auto& [name, v] : {std::pair<const char*, double>{"t", a.t}, {"t_next", a.t_next}, {"cfg", a.cfg},
                                {"sigma_n", a.sigma_n}, {"t_eps", a.t_eps}}) {
    TORCH_CHECK(std::isfinite(v), "elf_fast.flow_step: '", name, "' must be a finite number, got ", v);
  }
  TORCH_CHECK(a.alpha >= 0.0 && a.alpha <= 1.0, "elf_fast.flow_step: 'alpha' must be in [0, 1], got ", a.alpha);
  TORCH_CHECK(a.t_eps > 0.0, "elf_fast.flow_step: 't_eps' must be > 0, got ", a.t_eps);
  TORCH_CHECK(a.index_base >= 0 && a.index_base % 4 == 0,
              "elf_fast.flow_step: 'index_base' must be a multiple of 4 and >= 0, got ", a.index_base);
  return {at::empty_like(z), at::empty_like(z)};
}

// ---- transformer-block element-wise ops -------------------------------------------
namespace {
// A float32 side input (norm weight, RoPE table): contiguous, on `like`'s device, of `shape`.
void check_f32_input(const char* op, const Tensor& t, const char* name, const Tensor& like, const char* like_name,
                     at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), op, ": '", name,
              "' must be a contiguous float32 tensor, got ", t.scalar_type());
  check_same_device(like, like_name, t, name);
  check_shape(t, name, shape);
}
}  // namespace

void rms_norm_check(const Tensor& x, const Tensor& weight, double eps) {
  check_float_tensor(x, "x");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "rms_norm: 'x' must be (..., D) with D > 0, got ", x.sizes());
  check_f32_input("rms_norm", weight, "weight", x, "x", {x.size(-1)});
  TORCH_CHECK(eps >= 0.0, "rms_norm: 'eps' must be >= 0, got ", eps);
}

QkvShape qk_norm_rope_check(const Tensor& qkv, const Tensor& wq, const Tensor& wk, const Tensor& cos,
                            const Tensor& sin, int64_t heads, double eps) {
  check_float_tensor(qkv, "qkv");
  TORCH_CHECK(qkv.dim() == 3, "qk_norm_rope: 'qkv' must be (B, T, 3 * H), got ", qkv.sizes());
  TORCH_CHECK(heads > 0 && qkv.size(2) % (3 * heads) == 0, "qk_norm_rope: 'qkv' last dim ", qkv.size(2),
              " is not 3 * num_heads (", heads, ") * head_dim");
  const int64_t hd = qkv.size(2) / (3 * heads);
  TORCH_CHECK(hd % 2 == 0 && hd > 0, "qk_norm_rope: head_dim must be even, got ", hd);
  const int64_t T = qkv.size(1);
  check_f32_input("qk_norm_rope", wq, "q_weight", qkv, "qkv", {hd});
  check_f32_input("qk_norm_rope", wk, "k_weight", qkv, "qkv", {hd});
  check_f32_input("qk_norm_rope", cos, "cos", qkv, "qkv", {T, hd / 2});
  check_f32_input("qk_norm_rope", sin, "sin", qkv, "qkv", {T, hd / 2});
  TORCH_CHECK(eps >= 0.0, "qk_norm_rope: 'eps' must be >= 0, got ", eps);
  return {qkv.size(0), T, heads, hd};
}

void swiglu_check(const Tensor& u) {
  check_float_tensor(u, "u");
  TORCH_CHECK(u.dim() >= 1 && u.size(-1) > 0 && u.size(-1) % 2 == 0,
              "swiglu: 'u' must be (..., 2F) with F > 0, got ", u.sizes());
}

}  // namespace elf_fast
