"""unembed_argmax: the kernel (CPU: vocabulary-tiled running max of fp32 logits; CUDA: the exact
bf16 tensor-core pass, fused, and its blocked form as a second row) vs materialised logits +
argmax, and torch.compile of that reference. No CuPy row: a CuPy user would write cupy.matmul + argmax, the reference's
cuBLAS GEMMs and reduction. The `kernel-all-full` row (CUDA) times the worst case of the exact path: every
column the same, so every row ties everywhere, keeps more than 32 candidates and is rescored over the whole
vocabulary (argmax_full_rows_kernel: a tiled fp32 GEMM of those rows; before issue 23 one block per row read
all of U, modelled at minutes for ELF-B's 32,768 rows)."""

import pytest
import torch

from elf_fast import ops, reference
from common import CPU, ELF_B, compiled_or_skip, compiled_reference, cpu_peak_extra_bytes, head_case, measure


@pytest.mark.parametrize("impl", ["kernel", "kernel-blocked", "kernel-all-full", "reference", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unembed_argmax(benchmark, device, impl, dtype, monkeypatch):
    if impl == "kernel-blocked":
        if device != "cuda":
            pytest.skip("the blocked form is the CUDA kernel's alternative (ELF_FAST_ARGMAX_FUSED=0)")
        monkeypatch.setenv("ELF_FAST_ARGMAX_FUSED", "0")
    s = ELF_B if device == "cuda" else CPU
    N = s["N"] if device == "cuda" else s["N_HEAD"] * 4
    H, C, V = s["H"], s["C"], s["V"]
    if impl == "kernel-all-full" and device != "cuda":
        pytest.skip("the CPU kernel has no candidate pass (a plain fp32 running max): no row is rescored")
    h, params, _ = head_case(N, H, C, V, getattr(torch, dtype), device)
    if impl == "kernel-all-full":  # every column the same and no bias: all rows tie, all rescored in full
        params[2] = params[2][:, :1].expand(C, V).contiguous()
        params[3] = torch.zeros_like(params[3])
    benchmark.group = f"unembed_argmax {device} {dtype} N={N} C={C} V={V}"
    if impl.startswith("kernel"):
        fn = lambda: ops.unembed_argmax(h, *params, backend="kernel")  # noqa: E731
    elif impl == "reference":
        fn = lambda: reference.unembed_argmax(h, *params)  # noqa: E731
    else:
        fn = compiled_or_skip("unembed_argmax", lambda: compiled_reference("unembed_argmax")(h, *params))
    flops = 2.0 * N * (H * C + C * V)
    info = {}
    if device == "cpu" and impl != "compiled":
        # (compiled: no CPU probe; a fresh process would time the compile's memory, not the call's)
        info["peak_extra_MB"] = cpu_peak_extra_bytes("unembed_call", impl, N, H, C, V, dtype, "cpu") / 2**20
    measure(benchmark, fn, device, rounds=10 if device == "cuda" else 7, flops=flops, impl=impl, **info)
