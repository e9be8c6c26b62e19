"""pytest-benchmark setup: a device fixture and an end-of-run table with throughput.

pytest-benchmark's own table shows times only; the summary printed here adds
the device, the rounds (CUDA: "rounds x calls per round", timed with CUDA events; the times
are per call), min and median with the spread (interquartile range as a
percentage of the median, flagged when wide), GB/s or TFLOP/s, peak extra memory
and the median speed-up over the group's base (its reference row, or the row marked
``baseline``, e.g. the teacher among distilled students), with full labels.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: interquartile range (as % of the median) above which a row is flagged as unreliable
SPREAD_WARN_PCT = 10.0

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
        if b.extra_info.get("impl") == "reference" or b.extra_info.get("baseline"):
            base[b.group] = b.stats.median
    devices = sorted({b.extra_info.get("device", "?") for b in benches})
    tr.write_line("devices: " + "; ".join(devices))
    w = max(len("group"), *(len(b.group or "") for b in benches))
    wi = max(len("impl"), *(len(str(b.extra_info.get("impl", "?"))) for b in benches))
    tr.write_line(f"{'group':<{w}} {'impl':<{wi}} {'rounds':>9} {'min ms':>10} {'median ms':>10} {'IQR %':>6} "
                  f"{'GB/s':>8} {'TFLOP/s':>8} {'peak MB':>9} {'vs base':>7}")
    wide = False
    for b in sorted(benches, key=lambda b: (b.group or "", b.extra_info.get("impl", ""))):
        e, st = b.extra_info, b.stats
        speed = base.get(b.group, 0.0) / st.median if b.group in base else float("nan")
        iqr = 100.0 * st.iqr / st.median if st.median else float("nan")
        flag = "  (!)" if iqr > SPREAD_WARN_PCT else ""
        wide |= bool(flag)
        fmt = lambda k, f: (f % e[k]) if k in e else "-"  # noqa: E731
        rounds = f"{st.rounds}x{e['calls_per_round']}" if "calls_per_round" in e else str(st.rounds)
        tr.write_line(
            f"{b.group or '':<{w}} {e.get('impl', '?'):<{wi}} {rounds:>9} {st.min * 1e3:>10.3f} "
            f"{st.median * 1e3:>10.3f} {iqr:>6.1f} {fmt('GB/s', '%.1f'):>8} {fmt('TFLOP/s', '%.2f'):>8} "
            f"{fmt('peak_extra_MB', '%.1f'):>9} {speed:>6.2f}x{flag}"
        )
    if wide:
        tr.write_line(f"(!) the interquartile range exceeds {SPREAD_WARN_PCT:.0f}% of the median: the machine was busy "
                      "or the rounds too few; rerun before quoting that ratio")
