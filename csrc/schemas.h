// The one place where elf_fast's op schemas are written. Both extension modules
// define them: elf_fast._C under torch.ops.elf_fast (registration.cpp) and the CUDA
// emulation module elf_fast._C_emu under torch.ops.elf_fast_emu (emu/registration.cpp).
#pragma once
#include <torch/library.h>

namespace elf_fast {

inline void define_op_schemas(torch::Library& m) {
  m.def(
      "selfcond_proj(Tensor z, Tensor? x_prev, Tensor w_sc, Tensor b_sc, Tensor w_p1, Tensor w_p2, "
      "Tensor b_p2) -> Tensor");
  m.def(
      "selfcond_proj_backward(Tensor grad, Tensor z, Tensor? x_prev, Tensor w_sc, Tensor b_sc, Tensor w_p1, "
      "Tensor w_p2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // inference with the folded weights (m, b1) = elf_fast.ops.fold_selfcond_weights(w_sc, b_sc, w_p1); no backward
  m.def("selfcond_proj_folded(Tensor z, Tensor? x_prev, Tensor m, Tensor b1, Tensor w_p2, Tensor b_p2) -> Tensor");
  m.def(
      "flow_step(Tensor z, Tensor x_c, Tensor? x_u, Tensor? cond_mask, Tensor? x_cond, float t, float t_next, "
      "float cfg, float alpha, float sigma_n, float t_eps, int seed, int offset, int index_base=0) -> (Tensor, Tensor)");
  m.def(
      "unembed_argmax(Tensor h, Tensor proj_kernel, Tensor proj_bias, Tensor unembed_kernel, "
      "Tensor unembed_bias, int vocab_tile) -> (Tensor, Tensor)");
  m.def(
      "linear_cross_entropy(Tensor h, Tensor proj_kernel, Tensor proj_bias, Tensor unembed_kernel, "
      "Tensor unembed_bias, Tensor targets, Tensor? weight, bool compute_grad, int chunk) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // transformer-block element-wise ops; the backward ops have CPU kernels only (elf_fast/ops.py
  // registers the autograd formulas that call them)
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def(
      "qk_norm_rope(Tensor qkv, Tensor q_weight, Tensor k_weight, Tensor cos, Tensor sin, int num_heads, "
      "float eps) -> (Tensor, Tensor, Tensor)");
  m.def("swiglu(Tensor u) -> Tensor");
  m.def("rms_norm_backward(Tensor grad, Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def(
      "qk_norm_rope_backward(Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor qkv, Tensor q_weight, "
      "Tensor k_weight, Tensor cos, Tensor sin, int num_heads, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("swiglu_backward(Tensor grad, Tensor u) -> Tensor");
}

}  // namespace elf_fast
