"""benchmarks/cost_model.py: its arithmetic on hand-computable cases, and what its traces count."""

import contextlib
import io
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import cost_model as cm  # noqa: E402
from elf_fast import reference  # noqa: E402

# round numbers: 1 TFLOP/s fp32 at half efficiency, 1 TB/s HBM and 2 TB/s L2 at half efficiency, 1 us launches
HW = cm.Hardware(fp32_flops=1e12, tf32_flops=4e12, bf16_flops=8e12, hbm_bw=1e12, l2_bw=2e12, gemm_fraction=0.5,
                 mem_fraction=0.5, launch_s=1e-6)
T = cm.TARGET


def test_gemm_flops_are_2mkn_and_3xtf32_three_products():
    N, C, V = T["N"], T["C"], T["V"]
    assert cm.gemm_flops(N, C, V, "fp32") == 2 * N * C * V == 1_078_036_791_296
    assert cm.gemm_flops(N, C, V, "bf16") == 2 * N * C * V
    assert cm.gemm_flops(N, C, V, "3xtf32") == 3 * 2 * N * C * V
    # 3xTF32 runs at the TF32 rate with 3x the FLOPs: 3/4 of a plain fp32 GEMM's time on this HW
    k32 = cm.Kernel("g", flops=cm.gemm_flops(64, 64, 64, "fp32"), unit="fp32")
    k3 = cm.Kernel("g", flops=cm.gemm_flops(64, 64, 64, "3xtf32"), unit="3xtf32")
    assert k3.compute_s(HW) == pytest.approx(0.75 * k32.compute_s(HW))


def test_kernel_time_is_max_of_compute_and_memory_plus_launches():
    # compute 1e9 / (0.5 * 1e12) = 2 ms; memory 2e9 / (0.5 * 1e12) = 4 ms -> 4 ms + 1 us
    k = cm.Kernel("k", flops=1e9, unit="fp32", hbm=2e9)
    assert (k.compute_s(HW), k.memory_s(HW)) == pytest.approx((2e-3, 4e-3))
    assert k.time_s(HW) == pytest.approx(4e-3 + 1e-6)
    # compute-bound, three launches: 8 ms + 3 us
    assert cm.Kernel("k", flops=4e9, unit="fp32", hbm=1e9, launches=3).time_s(HW) == pytest.approx(8e-3 + 3e-6)
    # L2 bytes at the L2 rate: 1e9 / (0.5 * 2e12) = 1 ms on top of the HBM term
    assert cm.Kernel("k", hbm=1e9, l2=1e9).memory_s(HW) == pytest.approx(2e-3 + 1e-3)
    assert cm.Kernel("k", l2=1e9).memory_s(cm.replace(HW, l2_bw=0)) == 0.0  # --l2-tbs 0: L2 traffic free


def test_design_sums_per_kernel_rooflines():
    d = cm.Design("op", "two kernels", [cm.Kernel("gemm", flops=1e9, unit="fp32"), cm.Kernel("copy", hbm=2e9)], 0)
    assert (d.compute_s(HW), d.memory_s(HW), d.launch_s(HW)) == pytest.approx((2e-3, 4e-3, 2e-6))
    # separate kernels do not overlap: 2 + 4 ms, not max(2, 4)
    assert d.time_s(HW) == pytest.approx(6e-3 + 2e-6)


def test_trace_counts_kernels_bytes_and_flops():
    a, b = cm._meta(64, 32), cm._meta(48, 32)
    ks, peak = cm.trace(lambda x, y: x @ y.t(), a, b)  # the transpose is a view: no kernel
    assert len(ks) == 1 and ks[0].unit == "fp32"
    assert ks[0].flops == 2 * 64 * 32 * 48
    assert ks[0].hbm == (64 * 32 + 48 * 32 + 64 * 48) * 4
    assert peak == 64 * 48 * 4
    a16, b16 = cm._meta(64, 32, dtype=torch.bfloat16), cm._meta(48, 32, dtype=torch.bfloat16)
    ks, _ = cm.trace(lambda x, y: x @ y.t(), a16, b16)
    assert ks[0].unit == "bf16" and ks[0].hbm == (64 * 32 + 48 * 32 + 64 * 48) * 2
    # two element-wise kernels, each reading and writing numel x 4 bytes; both results live at the end
    x = cm._meta(1000)
    ks, peak = cm.trace(lambda t: (t + 1).exp(), x)
    assert [k.hbm for k in ks] == [8000, 8000] and peak == 8000


def test_traced_references_count_the_logits():
    N, H, C, V = 64, 24, 16, 1000
    leaves = [cm._meta(N, H), cm._meta(H, C), cm._meta(C), cm._meta(C, V), cm._meta(V)]
    for t in leaves:
        t.requires_grad_()
    targets = torch.empty(N, dtype=torch.long, device="meta")
    ks, peak = cm.trace(lambda *a: reference.linear_cross_entropy(*a).backward(), *leaves, targets)
    logits = N * V * 4
    # forward + two backward GEMMs per weight: 3 x 2N(HC + CV)
    assert sum(k.flops for k in ks) == 3 * 2 * N * (H * C + C * V)
    # the log-softmax backward holds three (N, V) tensors at once
    assert 3 * logits <= peak < 3 * logits + 0.25 * logits
    with torch.no_grad():
        ks, peak = cm.trace(reference.unembed_argmax, *(t.detach() for t in leaves))
    assert sum(k.flops for k in ks) == 2 * N * (H * C + C * V)
    assert 2 * logits <= peak < 2.25 * logits  # y @ U, then + u: two logits tensors


def test_unembed_designs_at_the_target_sizes():
    N, H, C, V = T["N"], T["H"], T["C"], T["V"]
    ref, blocked, fused, fused_tf32 = cm.unembed_designs()
    gemm = 2 * N * (H * C + C * V)
    rescore = 2 * N * C * 4  # ~4 candidates per row, rescored in fp32
    assert ref.total("flops") == gemm and blocked.total("flops") == fused.total("flops") == gemm + rescore
    blocks = [k for k in blocked.kernels if k.name.startswith("block GEMM")][0]
    assert blocks.launches == 4 * 32  # 8192-column tiles x 1024-row blocks of 2^23 elements
    assert blocked.total("l2") == 2 * N * V * 4 and ref.total("l2") == 0  # each block written and read once in L2
    assert fused.total("l2") == (N // 128) * V * C * 2  # every 128-row CTA streams U^T in bf16
    assert ref.peak >= 2 * N * V * 4 and fused.peak < 300 * cm.MB
    assert blocked.accurate and fused.accurate
    assert fused.total("launches") < blocked.total("launches")
    assert fused_tf32.time_s() < fused.time_s() < blocked.time_s() < ref.time_s()


def test_lce_designs_keep_the_gemm_work_and_cut_memory():
    N, H, C, V = T["N"], T["H"], T["C"], T["V"]
    ref, tf32x3, chunked = cm.lce_designs()
    gemm = 3 * 2 * N * (H * C + C * V)
    assert ref.total("flops") == chunked.total("flops") == gemm
    assert tf32x3.total("flops") == 3 * gemm
    assert chunked.peak <= 0.1 * ref.peak and tf32x3.peak <= 0.1 * ref.peak
    # 2^28 bytes / (4 V) = 2088 rows: 16 chunks, gU (C x V fp32) read and written by each chunk's accumulation
    acc = [k for k in chunked.kernels if k.name.startswith("gU +=")][0]
    assert acc.launches == 16 and acc.hbm >= 16 * 2 * C * V * 4
    assert [k for k in tf32x3.kernels if k.name.startswith("gU +=")][0].launches == 32  # 1044-row chunks
    assert tf32x3.time_s() < chunked.time_s() < ref.time_s()


def test_flow_fused_pass_and_markdown_table():
    N, C = T["N"], T["C"]
    fused = [d for d in cm.flow_designs() if d.name.startswith("SDE bf16, elf_fast")][0]
    assert fused.total("hbm") == 4 * N * C * 2 and fused.total("launches") == 1
    assert fused.time_s() == pytest.approx(4 * N * C * 2 / (0.8 * 3.35e12) + 4e-6)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cm.main([])
    rows = [line for line in out.getvalue().splitlines() if line.startswith("| ") and not line.startswith("| op ")]
    assert len(rows) == len(cm.all_designs())
    assert "not measurements" in out.getvalue()
