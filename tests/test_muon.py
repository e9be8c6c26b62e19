"""elf_fast.muon: torch's Muon with the Newton-Schulz iterations in a chosen dtype."""

import pytest
import torch

from elf_fast import muon as M


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.1) for s in ((48, 32), (32, 80), (16, 16))]


def _run(opt_cls, steps=3, **kw):
    ps = _params()
    opt = opt_cls(ps, lr=0.02, weight_decay=0.01, adjust_lr_fn="match_rms_adamw", **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return ps, opt


def test_bfloat16_is_torchs_muon_step_for_step():
    want, _ = _run(torch.optim.Muon)
    got, _ = _run(M.Muon, ns_dtype="bfloat16")
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_float32_iteration_matches_float64():
    g = torch.randn(64, 24, generator=torch.Generator().manual_seed(2))
    coeffs, steps, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7
    x32 = M.newton_schulz(g, coeffs, steps, eps, torch.float32)
    x64 = M.newton_schulz(g.double(), coeffs, steps, eps, torch.float64)
    xbf = M.newton_schulz(g, coeffs, steps, eps, torch.bfloat16)
    assert x32.dtype == torch.float32 and x32.shape == g.shape
    err32, errbf = (x32.double() - x64).abs().max().item(), (xbf.double() - x64).abs().max().item()
    assert err32 < 1e-5 < errbf  # bf16 keeps 8 bits
    s = torch.linalg.svdvals(x64)
    assert 0.5 < s.min() and s.max() < 1.3  # orthogonalised: the quintic's band around 1


def test_float32_steps_are_close_to_bf16_ones_and_state_is_torchs():
    f32, opt = _run(M.Muon, ns_dtype="float32")
    bf, _ = _run(torch.optim.Muon)
    for a, b in zip(f32, bf):
        assert (a - b).abs().max() < 5e-3 and not torch.equal(a, b)
    plain = torch.optim.Muon(_params(), lr=0.02)
    plain.load_state_dict(opt.state_dict())  # same state keys: checkpoints load either way
    assert set(opt.state_dict()["state"][0]) == {"momentum_buffer"}


def test_auto_picks_bf16_only_with_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(M, "cpu_has_native_bf16", lambda: False)
    assert M.resolve_ns_dtype("auto", cpu) == torch.float32
    assert M.resolve_ns_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(M, "cpu_has_native_bf16", lambda: True)
    assert M.resolve_ns_dtype("auto", cpu) == torch.bfloat16
    assert M.resolve_ns_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="ns_dtype"):
        M.Muon(_params(), ns_dtype="float16")


def test_native_bf16_follows_what_onednn_will_use():
    """oneDNN capped below AVX512-BF16 (ONEDNN_MAX_CPU_ISA=AVX2: how an AVX2-only CPU behaves) means
    emulated bf16 GEMMs, so auto must not pick bf16 there, whatever the CPU's flags say."""
    import os
    import subprocess
    import sys

    code = "from elf_fast.muon import cpu_has_native_bf16 as f; print(f())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]
