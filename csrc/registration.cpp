// The op library torch.ops.elf_fast (schemas: schemas.h) and the pybind11 module
// elf_fast._C (importing it loads the kernels into the dispatcher).
#include <torch/extension.h>
#include <torch/library.h>

#include "elf_fast.h"
#include "schemas.h"

TORCH_LIBRARY(elf_fast, m) { elf_fast::define_op_schemas(m); }

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "elf_fast compiled kernels; the ops are registered under torch.ops.elf_fast";
#ifdef ELF_FAST_WITH_CUDA
  mod.attr("cuda_built") = true;
#else
  mod.attr("cuda_built") = false;
#endif
  mod.def(
      "approx_logit_bound",
      [](int64_t C, bool u_is_bf16) {
        const auto b = elf_fast::approx_logit_bound(C, u_is_bf16);
        pybind11::dict d;
        d["eps_s"] = b.eps_s;
        d["abs_in"] = b.abs_in;
        d["eps_u"] = b.eps_u;
        d["rel"] = b.rel;
        d["tiny"] = b.tiny;
        return d;
      },
      pybind11::arg("C"), pybind11::arg("u_is_bf16"),
      "The constants of the error bound E_j of unembed_argmax's exact bf16 pass (docs/method.md)");
}
