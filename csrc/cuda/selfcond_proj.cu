// Self-condition projection on CUDA: the device-generic GEMM code of
// selfcond_proj.cpp, registered for the CUDA key with z's device made current
// so its allocations and library calls land on that device and stream.
#include "runtime.h"

namespace elf_fast {
namespace {

Tensor selfcond_proj_cuda(const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
                          const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2, const Tensor& b_p2) {
  gpu::check_on_device("selfcond_proj", z, "z");
  const gpu::DeviceGuard device_guard(z.device());
  return selfcond_proj(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selfcond_proj_backward_cuda(
    const Tensor& grad, const Tensor& z, const std::optional<Tensor>& x_prev, const Tensor& w_sc,
    const Tensor& b_sc, const Tensor& w_p1, const Tensor& w_p2) {
  gpu::check_on_device("selfcond_proj_backward", z, "z");
  const gpu::DeviceGuard device_guard(z.device());
  return selfcond_proj_backward(grad, z, x_prev, w_sc, b_sc, w_p1, w_p2);
}

}  // namespace

ELF_FAST_GPU_IMPL(m) {
  m.impl("selfcond_proj", &selfcond_proj_cuda);
  m.impl("selfcond_proj_backward", &selfcond_proj_backward_cuda);
}

}  // namespace elf_fast
