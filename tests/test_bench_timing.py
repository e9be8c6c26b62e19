"""The benchmarks' CUDA timing path (benchmarks/common.py ``measure``), run with fake CUDA events
timed by the host clock, so that its wiring into pytest-benchmark is checked where there is no GPU:
rounds of k back-to-back calls between one pair of events, statistics per call."""

import os
import sys
import time

import pytest
import torch

pytest.importorskip("pytest_benchmark")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import common  # noqa: E402


class _HostEvent:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):  # milliseconds, as torch.cuda.Event's
        return (end.t - self.t) * 1e3


@pytest.fixture
def fake_cuda(benchmark, monkeypatch):
    if benchmark.disabled:
        pytest.skip("pytest-benchmark is disabled (--benchmark-disable)")
    monkeypatch.setattr(torch.cuda, "Event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "host-timed fake GPU")
    monkeypatch.setattr(common, "CUDA_ROUND_S", 0.01)


def test_cuda_rounds_are_k_calls_between_events(benchmark, fake_cuda):
    calls = []

    def call():
        calls.append(None)
        time.sleep(0.002)

    host_timer = benchmark._timer
    median = common.measure(benchmark, call, "cuda", rounds=3, impl="kernel")
    k = benchmark.extra_info["calls_per_round"]
    assert 2 <= k <= 5  # >= 10 ms per round at ~2 ms (and up to the sleep's overshoot) per call
    assert benchmark.stats.iterations == k and benchmark.stats.stats.rounds == 3
    assert 0.002 <= median < 0.005  # per call, not per round
    # 2 warm-up calls, 3 to size the round, 3 rounds of k, pytest-benchmark's one result call
    assert len(calls) == 2 + 3 + 3 * k + 1
    assert benchmark.extra_info["timer"] == "cuda events" and benchmark.extra_info["peak_extra_MB"] == 1.0
    assert benchmark._timer is host_timer  # restored for the next benchmark


def test_cuda_long_calls_are_one_per_round(benchmark, fake_cuda):
    calls = []

    def call():
        calls.append(None)
        time.sleep(0.012)  # longer than a round (10 ms here): no sizing calls

    median = common.measure(benchmark, call, "cuda", rounds=2, impl="kernel")
    assert benchmark.extra_info["calls_per_round"] == 1 and benchmark.stats.iterations == 1
    assert median >= 0.012
    assert len(calls) == 2 + 2  # warm-up and memory calls, then the rounds
