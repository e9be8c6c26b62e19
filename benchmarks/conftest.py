"""pytest-benchmark setup: a device fixture and an end-of-run table with throughput.

pytest-benchmark's own table shows times only; the summary printed here adds
the device, GB/s or TFLOP/s, peak extra memory and the speed-up over the
reference of the same group.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benches = [b for b in getattr(session, "benchmarks", []) if b.stats is not None]
    if not benches:
        return
    tr = terminalreporter
    tr.section("elf_fast: throughput and memory")
    base = {}
    for b in benches:
        if b.extra_info.get("impl") == "reference":
            base[b.group] = b.stats.median
    devices = sorted({b.extra_info.get("device", "?") for b in benches})
    tr.write_line("devices: " + "; ".join(devices))
    tr.write_line(f"{'group':<44} {'impl':<10} {'median ms':>10} {'GB/s':>8} {'TFLOP/s':>8} {'peak MB':>9} {'vs ref':>7}")
    for b in sorted(benches, key=lambda b: (b.group or "", b.extra_info.get("impl", ""))):
        e = b.extra_info
        speed = base.get(b.group, 0.0) / b.stats.median if b.group in base else float("nan")
        fmt = lambda k, f: (f % e[k]) if k in e else "-"  # noqa: E731
        tr.write_line(
            f"{(b.group or '')[:44]:<44} {e.get('impl', '?'):<10} {b.stats.median * 1e3:>10.3f} "
            f"{fmt('GB/s', '%.1f'):>8} {fmt('TFLOP/s', '%.2f'):>8} {fmt('peak_extra_MB', '%.1f'):>9} {speed:>6.2f}x"
        )
