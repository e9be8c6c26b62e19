"""unembed_argmax: the kernel (CPU: vocabulary-tiled running max of fp32 logits; CUDA: the exact
bf16 tensor-core pass, fused, and its blocked form as a second row) vs materialised logits +
argmax, and torch.compile of that reference. No CuPy row: a CuPy user would write cupy.matmul + argmax, the reference's
cuBLAS GEMMs and reduction."""

import pytest
import torch

from elf_fast import ops, reference
from common import CPU, ELF_B, compiled_or_skip, compiled_reference, cpu_peak_extra_bytes, head_case, measure


@pytest.mark.parametrize("impl", ["kernel", "kernel-blocked", "reference", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unembed_argmax(benchmark, device, impl, dtype, monkeypatch):
    if impl == "kernel-blocked":
        if device != "cuda":
            pytest.skip("the blocked form is the CUDA kernel's alternative (ELF_FAST_ARGMAX_FUSED=0)")
        monkeypatch.setenv("ELF_FAST_ARGMAX_FUSED", "0")
    s = ELF_B if device == "cuda" else CPU
    N = s["N"] if device == "cuda" else s["N_HEAD"] * 4
    H, C, V = s["H"], s["C"], s["V"]
    h, params, _ = head_case(N, H, C, V, getattr(torch, dtype), device)
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
