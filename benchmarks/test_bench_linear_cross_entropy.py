"""linear_cross_entropy forward + backward: chunked, no logits, vs materialised logits + autograd,
and torch.compile of that reference (forward and its AOT-autograd backward). No CuPy row: the
work is cuBLAS GEMMs, which CuPy would call alike."""

import pytest

from common import CPU, ELF_B, compiled_or_skip, cpu_peak_extra_bytes, lce_call, measure


@pytest.mark.parametrize("impl", ["kernel", "reference", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_cross_entropy(benchmark, device, impl, dtype):
    s = ELF_B if device == "cuda" else CPU
    N = s["N"] if device == "cuda" else s["N_HEAD"] * 4
    H, C, V = s["H"], s["C"], s["V"]
    benchmark.group = f"linear_cross_entropy fwd+bwd {device} {dtype} N={N} V={V}"
    fn = lce_call(impl, N, H, C, V, dtype, device)
    if impl == "compiled":
        fn = compiled_or_skip("linear_cross_entropy", fn)
    flops = 3 * 2.0 * N * (H * C + C * V)  # forward + two backward GEMMs
    info = {}
    if device == "cpu" and impl != "compiled":
        # (compiled: no CPU probe; a fresh process would time the compile's memory, not the call's)
        info["peak_extra_MB"] = cpu_peak_extra_bytes("lce_call", impl, N, H, C, V, dtype, "cpu") / 2**20
    measure(benchmark, fn, device, rounds=10 if device == "cuda" else 5, flops=flops, impl=impl, **info)
