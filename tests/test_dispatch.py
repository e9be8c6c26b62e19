import subprocess
import sys
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from elf_fast import ops, reference
from conftest import assert_fp32_close, decode_head_params, requires_emu, requires_kernels, selfcond_params


@requires_kernels
def test_kernels_are_registered_for_cpu():
    for op in ops.OPS:
        assert ops.kernel_available(op, "cpu")
        assert ops.kernel_available(op, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown op"):
        ops.kernel_available("softmax")


def test_build_info_reports_every_kernel():
    info = ops.build_info()
    assert set(info["kernels"]) == {f"{op}/{dev}" for op in ops.OPS for dev in ("cpu", "cuda")}
    assert info["extension_loaded"] == (info["load_error"] is None)


def test_backend_choice(monkeypatch):
    z = torch.randn(4, 8)
    calls = []
    real = reference.flow_step
    monkeypatch.setattr(reference, "flow_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    ops.flow_step(z, z, t=0.1, t_next=0.2, backend="reference")
    assert len(calls) == 1
    monkeypatch.setenv("ELF_FAST_BACKEND", "reference")
    ops.flow_step(z, z, t=0.1, t_next=0.2)
    assert len(calls) == 2
    if ops.kernel_available("flow_step", "cpu"):
        monkeypatch.setenv("ELF_FAST_BACKEND", "auto")
        ops.flow_step(z, z, t=0.1, t_next=0.2)
        assert len(calls) == 2  # the kernel ran
    monkeypatch.setenv("ELF_FAST_BACKEND", "fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.flow_step(z, z, t=0.1, t_next=0.2)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.flow_step(z, z, t=0.1, t_next=0.2, backend="cuda")


def test_missing_kernel_raises_when_forced_and_warns_once_otherwise():
    z = torch.randn(4, 8, device="meta")  # a device with no elf_fast kernel
    with pytest.raises(RuntimeError, match="backend='kernel' requested"):
        ops.flow_step(z, z, t=0.1, t_next=0.2, backend="kernel")
    ops._WARNED.discard(("flow_step", "meta"))
    with pytest.warns(UserWarning, match="using the PyTorch reference on meta"):
        z_next, x_hat = ops.flow_step(z, z, t=0.1, t_next=0.2)
    assert z_next.device.type == "meta" and z_next.shape == (4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call stays quiet
        ops.flow_step(z, z, t=0.1, t_next=0.2)


@requires_kernels
def test_torch_compile_fullgraph_traces_all_ops():
    torch._dynamo.reset()
    N, C, H, V = 12, 8, 16, 40
    z, x = torch.randn(N, C), torch.randn(N, C)
    sc = [t.requires_grad_() for t in selfcond_params(C, H, R=4)]
    head = [t.requires_grad_() for t in decode_head_params(H, C, V)]
    targets = torch.randint(0, V, (N,))

    def step(z, x, sc, head, targets):
        h0 = ops.selfcond_proj(z, x, *sc)
        z_next, x_hat = ops.flow_step(z, x, t=0.3, t_next=0.4, alpha=0.9, seed=3, offset=1)
        ids, best = ops.unembed_argmax(h0.detach(), *[p.detach() for p in head])
        loss = ops.linear_cross_entropy(h0, *head, targets)
        return z_next, x_hat, ids, best, loss

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(z, x, sc, head, targets)
    got[-1].backward()
    grads = [p.grad.clone() for p in (*sc, *head)]
    for p in (*sc, *head):
        p.grad = None
    want = step(z, x, sc, head, targets)
    want[-1].backward()
    for g, w in zip(got, want):
        assert_fp32_close(g.float(), w.float())
    for g, p in zip(grads, (*sc, *head)):
        assert_fp32_close(g, p.grad, rel=1e-5)


@requires_kernels
def test_rules_trace_on_symbolic_sizes():
    """The wrappers and the fake implementations run the same rule functions (elf_fast.op_rules):
    under dynamic shapes they compare symbolic sizes without graph breaks or specialising, and a bad
    shape is reported with the wrapper's ValueError."""
    torch._dynamo.reset()
    C, H, V = 8, 16, 40
    sc = selfcond_params(C, H, R=4)
    head = decode_head_params(H, C, V)

    def step(z, x, targets):
        h0 = ops.selfcond_proj(z, x, *sc)
        z_next, _ = ops.flow_step(z, x, t=0.3, t_next=0.4, seed=3)
        ids, _ = ops.unembed_argmax(h0, *head)
        loss = ops.linear_cross_entropy(h0, *head, targets, targets >= 0, reduction="mean")
        return ops.rms_norm(z_next, torch.ones(C)) + ops.swiglu(torch.cat([z, x], -1)), ids, loss

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for B, T in ((2, 5), (3, 7)):
        z, x = torch.randn(B, T, C), torch.randn(B, T, C)
        targets = torch.randint(0, V, (B, T))
        for g, w in zip(compiled(z, x, targets), step(z, x, targets)):
            assert_fp32_close(g.float(), w.float())
        frames.append(counter.frame_count)
    assert frames[1] == frames[0]  # the second shape reuses what was traced on symbolic sizes
    with pytest.raises(ValueError, match=r"'targets' must have shape \(3, 7\), got \(3, 6\)"):
        torch.compile(step, backend="aot_eager", dynamic=True)(z, x, targets[:, :6])


@requires_emu
def test_self_check_reports_and_runs_the_emulated_kernels():
    out = subprocess.run([sys.executable, "-m", "elf_fast", "--emu", "--positions", "64", "--vocab", "101"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CUDA emulation module built: True" in out.stdout
    assert "cuda_emu (CUDA kernels emulated on the CPU)" in out.stdout
    assert "MISMATCH" not in out.stdout and "all kernels agree" in out.stdout


@requires_emu
def test_emulated_ops_trace_under_torch_compile():
    # the emulation module registers fake implementations too: its ops trace like elf_fast's
    torch._dynamo.reset()
    z = torch.randn(6, 8)
    step = torch.compile(lambda a: ops.flow_step(a, a * 2, t=0.2, t_next=0.3, backend="emu")[0], fullgraph=True,
                         backend="aot_eager")
    assert_fp32_close(step(z), reference.flow_step(z, z * 2, t=0.2, t_next=0.3)[0])
