// The op library torch.ops.elf_fast (schemas: schemas.h) and the pybind11 module
// elf_fast._C (importing it loads the kernels into the dispatcher).
#include <torch/extension.h>
#include <torch/library.h>

#include "schemas.h"
#include "split_gemm.h"

TORCH_LIBRARY(elf_fast, m) { elf_fast::define_op_schemas(m); }

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "elf_fast compiled kernels; the ops are registered under torch.ops.elf_fast";
#ifdef ELF_FAST_WITH_CUDA
  mod.attr("cuda_built") = true;
#else
  mod.attr("cuda_built") = false;
#endif
  // test hooks for the 3xTF32 GEMM (csrc/split_gemm.h; tests/test_selfcond_proj.py)
  mod.def(
      "_tf32_split",
      [](const at::Tensor& x) {
#ifdef ELF_FAST_WITH_CUDA
        const auto s = x.is_cuda() ? elf_fast::tf32_split_cuda(x) : elf_fast::tf32_split_cpu(x);
#else
        const auto s = elf_fast::tf32_split_cpu(x);
#endif
        return std::make_tuple(s.hi, s.lo);
      },
      pybind11::arg("x"), "(hi, lo): x split into TF32 halves by split_gemm.h's rule (CPU loop or CUDA kernel)");
  mod.def("_tf32_scope_probe", &elf_fast::tf32_scope_probe, pybind11::arg("fail") = false,
          "Opens a TF32 tensor-core scope; returns the CUDA matmul precision inside (raises inside with fail)");
}
