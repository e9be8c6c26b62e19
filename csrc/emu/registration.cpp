// elf_fast._C_emu: the CUDA kernels of csrc/cuda built against the SIMT emulator,
// registered as torch.ops.elf_fast_emu.* for CPU tensors (same schemas as
// torch.ops.elf_fast, from schemas.h). A test module: built with ELF_FAST_EMU=1 or
// on demand by elf_fast.emulation, never by default.
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters (lighter than torch/extension.h)
#include <torch/library.h>

#include "../cuda/simt_emu.h"
#include "../schemas.h"
#include "../split_gemm.h"
#include "emu_internal.h"

namespace elf_fast {
at::Tensor emulator_selftest(const std::string& name, const at::Tensor& x, int64_t variant);
}

TORCH_LIBRARY(elf_fast_emu, m) { elf_fast::define_op_schemas(m); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() =
      "elf_fast's CUDA kernels under the SIMT emulator, registered under torch.ops.elf_fast_emu for CPU tensors";
  simt::install_guarded_allocator();
  mod.attr("cuda_types") = static_cast<bool>(ELF_FAST_SIMT_CUDA_TYPES);
  mod.def("set_guarded_memory", &simt::set_guarded, pybind11::arg("on"),
          "While on, new CPU tensors end at a PROT_NONE page (out-of-bounds kernel accesses fault and are reported)");
  mod.def("guarded_memory", &simt::guarded, "Whether guarded allocation is on");
  mod.def("guarded_buffers", &simt::guarded_live_count, "Live guarded CPU buffers");
  mod.def("_selftest", &elf_fast::emulator_selftest, pybind11::arg("name"), pybind11::arg("x"),
          pybind11::arg("variant"), "Runs one of the emulator's own test kernels (see selftest_kernels.cpp)");
  // test hooks for the 3xTF32 GEMM (csrc/split_gemm.h; tests/test_selfcond_proj.py)
  mod.def(
      "_tf32_split",
      [](const at::Tensor& x) {
        const auto s = elf_fast::tf32_split_cuda(x);  // the CUDA kernel, emulated
        return std::make_tuple(s.hi, s.lo);
      },
      pybind11::arg("x"), "(hi, lo): x split into TF32 halves by csrc/cuda/selfcond_proj.cu's kernel");
  mod.def("_tf32_scope_probe", &elf_fast::tf32_scope_probe, pybind11::arg("fail") = false,
          "Opens a TF32 tensor-core scope; returns the CUDA matmul precision inside (raises inside with fail)");
}
