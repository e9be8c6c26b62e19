// The op library torch.ops.elf_fast (schemas: schemas.h) and the pybind11 module
// elf_fast._C (importing it loads the kernels into the dispatcher).
#include <torch/extension.h>
#include <torch/library.h>

#include "elf_fast.h"
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
