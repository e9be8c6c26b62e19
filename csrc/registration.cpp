// The op library torch.ops.elf_fast (schemas: schemas.h) and the pybind11 module
// elf_fast._C (importing it loads the kernels into the dispatcher).
#include <torch/extension.h>
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(elf_fast, m) { elf_fast::define_op_schemas(m); }

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "elf_fast compiled kernels; the ops are registered under torch.ops.elf_fast";
#ifdef ELF_FAST_WITH_CUDA
  mod.attr("cuda_built") = true;
#else
  mod.attr("cuda_built") = false;
#endif
}
