// elf_fast._C_emu: the CUDA kernels of csrc/cuda built against the SIMT emulator,
// registered as torch.ops.elf_fast_emu.* for CPU tensors (same schemas as
// torch.ops.elf_fast, from schemas.h). A test module: built with ELF_FAST_EMU=1 or
// on demand by elf_fast.emulation, never by default.
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters (lighter than torch/extension.h)
#include <torch/library.h>
#include <pybind11/stl.h>

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
  mod.def(
      "set_tensor_core_numerics",
      [](int block, int kept_bits, bool round_to_nearest) {
        simt::set_tensor_core_numerics({block, kept_bits, round_to_nearest});
      },
      pybind11::arg("block"), pybind11::arg("kept_bits") = 24, pybind11::arg("round_to_nearest") = false,
      "How emulated mma.sync sums its products: block 0 = k order, fp32 round to nearest; block > 0 = "
      "aligned, truncated blocks of that many products (see simt_emu.h, TensorCoreNumerics)");
  mod.def(
      "tensor_core_numerics",
      [] {
        const auto n = simt::tensor_core_numerics();
        return std::make_tuple(n.block, n.kept_bits, n.round_to_nearest);
      },
      "(block, kept_bits, round_to_nearest) of emulated mma.sync");
  mod.def("set_device_profile", &simt::set_device_profile, pybind11::arg("name"),
          "Emulate sm_80, sm_86, sm_89 or sm_90's limits (shared memory per block); false for an unknown name");
  mod.def(
      "device_profile",
      [] {
        const auto& p = simt::device_profile();
        return std::make_tuple(std::string(p.name), p.major, p.minor, static_cast<int64_t>(p.smem_optin));
      },
      "(name, major, minor, opt-in shared memory per block in bytes) of the emulated device");
  mod.def("launch_counts", &simt::launch_counts, pybind11::arg("reset") = false,
          "Emulated launches per kernel name since the last reset");
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
