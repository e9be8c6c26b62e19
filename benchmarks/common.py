"""Shared pieces of elf_fast's benchmarks: the cases, timing and memory probes, the baselines.

The references timed here are the ones in :mod:`elf_fast.reference` (the same
functions the tests check against); nothing is re-implemented, except
:func:`port_flow_chain`, the port's own element-wise chain (torch.randn noise),
timed as a second, fairer baseline for flow_step.

Rows of a group (``impl`` in extra_info): ``kernel`` (elf_fast), ``reference`` (the group's
base: the summary's "vs base" column divides by it), ``compiled`` (``torch.compile`` of that
same reference function: :func:`compiled_reference`), ``cupy`` (a hand-written CuPy kernel,
``cupy_baselines.py``, where that is what a user would write instead) and op-specific extras.

Timing: on the CPU each round is one call (host timer). On CUDA a round is ``k`` calls back to
back between one pair of CUDA events (``k`` chosen so that a round lasts >= ``CUDA_ROUND_S``),
with no host synchronisation between the calls; pytest-benchmark divides by ``k``, so its
statistics (and the summary table) are per call.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys

import pytest
import torch

from elf_fast import ops, reference

# ELF-B sizes of the port's anchor measurement (README targets): 32 x 1024 positions, C 512, H 768, V 32128.
ELF_B = dict(N=32768, C=512, H=768, V=32128, R=128)
# CPU sizes: the same widths with fewer positions (2 cores).
CPU = dict(N=4096, C=512, H=768, V=32128, R=128, N_HEAD=256)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------- cases
def selfcond_case(N, C, H, R, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)  # noqa: E731
    return [mk(N, C), mk(N, C), mk(C, 2 * C, scale=(2 * C) ** -0.5), mk(C, scale=0.1), mk(R, C, scale=C**-0.5),
            mk(H, R, scale=R**-0.5), mk(H, scale=0.1)]


def flow_case(N, C, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, C, generator=g).to(device=device, dtype=dtype) for _ in range(3)]  # z, x_c, x_u


def head_case(N, H, C, V, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)  # noqa: E731
    h = mk(N, H)
    params = [mk(H, C, scale=H**-0.5), mk(C, scale=0.1), mk(C, V, scale=3 * C**-0.5), mk(V, scale=0.1)]
    targets = torch.randint(0, V, (N,), generator=g).to(device)
    return h, params, targets


FLOW_KW = dict(t=0.4, t_next=0.45, cfg=1.0, alpha=0.9, seed=1, offset=2)


def port_flow_chain(z, x_c, *, t, t_next, cfg, alpha, seed, offset, sigma_n=reference.SIGMA_N,
                    t_eps=reference.T_EPS):
    """The port's un-fused step: separate element-wise ops and torch.randn noise."""
    v = (x_c - z) / max(1.0 - t, t_eps)
    z = z + (t_next - t) * v
    return alpha * z + (1.0 - alpha) * sigma_n * torch.randn_like(z), x_c


# ------------------------------------------------------- timing and memory
#: a CUDA round lasts at least this long (seconds): k calls between one pair of events
CUDA_ROUND_S = 0.02
#: ... with at most this many calls
CUDA_MAX_CALLS = 1000


class _EventStamp:
    """A CUDA event recorded on the current stream; ``later - earlier`` waits for ``later``
    and gives the GPU time between the two in seconds."""

    __slots__ = ("event",)

    def __init__(self):
        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record()

    def __sub__(self, earlier: "_EventStamp") -> float:
        self.event.synchronize()
        return earlier.event.elapsed_time(self.event) / 1e3


def cuda_event_timer() -> _EventStamp:
    """pytest-benchmark timer reading CUDA events (the runner only ever subtracts two readings)."""
    return _EventStamp()


def cuda_calls_per_round(fn, calls: int = 3) -> int:
    """Calls per round so that a round of back-to-back calls lasts >= CUDA_ROUND_S."""
    torch.cuda.synchronize()
    start = cuda_event_timer()
    for _ in range(calls):
        fn()
    per_call = (cuda_event_timer() - start) / calls
    if per_call <= 0:
        return CUDA_MAX_CALLS
    return max(1, min(CUDA_MAX_CALLS, math.ceil(CUDA_ROUND_S / per_call)))


def measure(benchmark, fn, device: str, *, rounds: int, flops: float = 0.0, nbytes: float = 0.0, **info):
    """Time ``fn``, record throughput and device in extra_info; returns the median seconds per call.

    CPU: ``rounds`` rounds of one call each (host timer). CUDA: ``rounds`` rounds of ``k`` calls
    each, timed with CUDA events around the round (see the module docstring).
    """
    def run():
        out = fn()
        sync(device)
        return out

    run()  # warm-up (allocator, threads, cuBLAS handles, compiled graphs)
    peak = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = cuda_event_timer()
        run()
        one_call = cuda_event_timer() - start
        peak = torch.cuda.max_memory_allocated() - base
        k = 1 if one_call >= CUDA_ROUND_S else cuda_calls_per_round(fn)
        host_timer = benchmark._timer  # pytest-benchmark's runner reads the fixture's timer
        benchmark._timer = cuda_event_timer
        try:
            benchmark.pedantic(fn, rounds=rounds, iterations=k, warmup_rounds=0)
        finally:
            benchmark._timer = host_timer
        torch.cuda.synchronize()
        benchmark.extra_info.update(timer="cuda events", calls_per_round=k)
    else:
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(device=device_name(device), median_ms=median * 1e3, **info)
    if flops:
        benchmark.extra_info["TFLOP/s"] = flops / median / 1e12
    if nbytes:
        benchmark.extra_info["GB/s"] = nbytes / median / 1e9
    if peak is not None:
        benchmark.extra_info["peak_extra_MB"] = peak / 2**20
    return median


# ------------------------------------------------------------- baselines
_COMPILED: dict = {}


def compiled_reference(op: str):
    """``torch.compile(elf_fast.reference.<op>, dynamic=False)`` in the default mode: one wrapper
    per op and process (dynamo's cache holds one graph per device, dtype and constant argument)."""
    return compiled(getattr(reference, op))


def compiled(fn):
    """``torch.compile(fn, dynamic=False)``, one wrapper per function and process."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def compiled_or_skip(op: str, call):
    """Run ``call`` (a call of :func:`compiled_reference`) once so that it compiles before any
    timing; return it. A compile error skips the row with the reason (graph breaks are no error:
    dynamo compiles the pieces and runs the rest eagerly)."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - whatever inductor raises, the row is skipped with it
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        pytest.skip(f"torch.compile of elf_fast.reference.{op} failed: {type(exc).__name__}: {first}")
    return call


_PROBE = r"""
import sys
sys.path.insert(0, {bench_dir!r})
import common
fn = common.{factory}(*{args!r})
print(common.peak_rss_growth(fn))
"""


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_growth(fn) -> int:
    """Bytes by which one call of ``fn`` raises the process's resident set above its size before the call.

    Linux: writing 5 to /proc/self/clear_refs resets the high-water mark (VmHWM) to the current RSS.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) * 1024


def cpu_peak_extra_bytes(factory: str, *args) -> int:
    """Peak RSS growth of one call, in a fresh process (CPU tensors have no allocator statistics).

    ``factory(*args)`` (a function of this module) builds the inputs and returns the call.
    """
    code = _PROBE.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), factory=factory, args=args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


# Factories for the memory probe: build inputs once, return the timed call.
def unembed_call(impl, N, H, C, V, dtype_name, device):
    h, params, _ = head_case(N, H, C, V, getattr(torch, dtype_name), device)
    if impl == "kernel":
        return lambda: ops.unembed_argmax(h, *params, backend="kernel")
    return lambda: reference.unembed_argmax(h, *params)


def lce_call(impl, N, H, C, V, dtype_name, device):
    h, params, targets = head_case(N, H, C, V, getattr(torch, dtype_name), device)
    leaves = [t.requires_grad_() for t in (h, *params)]

    def call():
        for t in leaves:
            t.grad = None
        if impl == "kernel":
            loss = ops.linear_cross_entropy(*leaves, targets, backend="kernel")
        elif impl == "compiled":
            loss = compiled_reference("linear_cross_entropy")(*leaves, targets)
        else:
            loss = reference.linear_cross_entropy(*leaves, targets)
        loss.backward()
        return loss

    return call
