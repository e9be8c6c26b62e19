import math
import subprocess
import sys

import pytest
import torch

from elf_fast import ops, reference
from conftest import max_err, requires_kernels

STEP = dict(t=0.31, t_next=0.42, seed=1234, offset=7)


def _inputs(shape, z_dtype=torch.float32, x_dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g).to(z_dtype)
    x_c = torch.randn(*shape, generator=g).to(x_dtype)
    x_u = torch.randn(*shape, generator=g).to(x_dtype)
    mask = torch.rand(*shape[:-1], generator=g) < 0.3
    x_cond = torch.randn(*shape, generator=g).to(z_dtype)
    return tuple(t.to(device) for t in (z, x_c, x_u, mask, x_cond))


@pytest.mark.parametrize("shape", [(1, 8), (47, 384), (1031, 512), (3, 5, 7), (2, 3)])
@pytest.mark.parametrize("cfg", [None, 2.0])
@pytest.mark.parametrize("cond", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 0.8, 0.0])
def test_matches_reference_fp32(kdev, shape, cfg, cond, alpha):
    z, x_c, x_u, mask, x_cond = _inputs(shape, device=kdev.device)
    kw = dict(STEP, alpha=alpha)
    args = [z, x_c]
    if cfg is not None:
        args.append(x_u)
        kw["cfg"] = cfg
    else:
        args.append(None)
    args += [mask, x_cond] if cond else [None, None]
    zk, xk = ops.flow_step(*args, backend=kdev.backend, **kw)
    zr, xr = reference.flow_step(*args, **kw)
    # same float32 operations in the same order; only log/sin/cos may differ by an ulp
    assert max_err(xk, xr) == 0.0
    assert max_err(zk, zr) <= 4e-6 * max(1.0, zr.abs().max().item())
    if cond:
        assert torch.equal(zk[mask], x_cond[mask]) and torch.equal(xk[mask], x_cond[mask])
    if kdev.cuda_code:  # against the C++ CPU kernel: the same arithmetic, element for element
        zc, xc = ops.flow_step(*[None if a is None else a.cpu() for a in args], backend="kernel", **kw)
        assert torch.equal(xk.cpu(), xc)
        if alpha == 1.0:  # with noise, logf/sinf/cosf (glibc's, the CPU kernel's vectorised ones, CUDA's)
            assert torch.equal(zk.cpu(), zc)  # may differ by an ulp: checked against the reference above


@pytest.mark.parametrize("z_dtype,x_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
                                             (torch.float16, torch.float16)])
def test_low_precision_matches_reference(kdev, z_dtype, x_dtype):
    z, x_c, x_u, mask, x_cond = _inputs((257, 96), z_dtype, x_dtype, device=kdev.device)
    out_k = ops.flow_step(z, x_c, x_u, mask, x_cond, cfg=1.5, alpha=0.9, backend=kdev.backend, **STEP)
    out_r = reference.flow_step(z, x_c, x_u, mask, x_cond, cfg=1.5, alpha=0.9, **STEP)
    for a, b in zip(out_k, out_r):
        assert a.dtype == z_dtype
        # both round the same float32 value once; an ulp of float32 noise may flip one rounding
        ulp = torch.finfo(z_dtype).eps
        assert ((a.float() - b.float()).abs() <= ulp * b.float().abs().clamp_min(1.0)).all()


@pytest.mark.parametrize("z_dtype,x_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                                             (torch.float16, torch.float32)])
@pytest.mark.parametrize("C", [1000, 384, 3])
def test_rows_straddling_blocks_and_condition_rows(kdev, z_dtype, x_dtype, C):
    # the CPU kernel works on blocks of 1024 elements cut at row ends, one vectorised pass per
    # row segment (bf16 converted in registers) and a copy per condition row; rows of 1000 and 384
    # straddle blocks, rows of 3 put several rows (and condition rows) in one block
    z, x_c, x_u, mask, x_cond = _inputs((41, C), z_dtype, x_dtype, seed=3, device=kdev.device)
    if z_dtype != torch.float32:  # a NaN in x_cond comes back as the canonical NaN, as c10 converts
        x_cond.view(-1)[C + 1] = float("nan")
    mask[1] = True
    for alpha in (1.0, 0.7):
        kw = dict(STEP, cfg=1.5, alpha=alpha)
        zk, xk = ops.flow_step(z, x_c, x_u, mask, x_cond, backend=kdev.backend, **kw)
        zr, xr = reference.flow_step(z, x_c, x_u, mask, x_cond, **kw)
        assert torch.equal(xk[~mask], xr[~mask])  # the same float32 operations, rounded once
        assert torch.equal(zk[mask].isnan(), zr[mask].isnan())
        assert torch.equal(zk[mask].nan_to_num(), x_cond[mask].nan_to_num())
        assert torch.equal(xk[mask].nan_to_num(), x_cond[mask].nan_to_num())
        ulp = torch.finfo(z_dtype).eps
        d = (zk[~mask].float() - zr[~mask].float()).abs()
        assert (d <= 4 * ulp * zr[~mask].float().abs().clamp_min(1.0)).all()


def test_empty_input(kdev):
    z = torch.zeros(0, 8, device=kdev.device)
    for alpha in (1.0, 0.5):
        z_next, x_hat = ops.flow_step(z, z, z, t=0.1, t_next=0.2, cfg=2.0, alpha=alpha, backend=kdev.backend)
        assert z_next.shape == (0, 8) and x_hat.shape == (0, 8)


def test_velocity_floor_t_eps(kdev):
    z, x_c, *_ = _inputs((4, 8), device=kdev.device)
    zk, _ = ops.flow_step(z, x_c, t=0.99, t_next=1.0, backend=kdev.backend)
    # 1 - t = 0.01 is below t_eps = 0.05, so v = (x - z) / 0.05
    expected = z + 0.01 * ((x_c - z) / 0.05)
    assert torch.allclose(zk, expected, atol=1e-6)


def test_noise_independent_of_size_threads_and_layout(kdev):
    z, x_c, *_ = _inputs((1031, 37), device=kdev.device)
    full, _ = ops.flow_step(z, x_c, alpha=0.5, backend=kdev.backend, **STEP)
    head, _ = ops.flow_step(z[:500], x_c[:500], alpha=0.5, backend=kdev.backend, **STEP)
    assert torch.equal(full[:500], head)  # element e's noise depends on (seed, offset, e) only
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single, _ = ops.flow_step(z, x_c, alpha=0.5, backend=kdev.backend, **STEP)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(full, single)
    # another row length over the same flat data: rows of 1031 straddle the groups of 4 differently
    other, _ = ops.flow_step(z.view(37, 1031), x_c.view(37, 1031), alpha=0.5, backend=kdev.backend, **STEP)
    assert torch.equal(full.view(-1), other.view(-1))
    # a flat view that starts one element in: unaligned, so the CUDA kernel takes its scalar path
    flat_z, flat_x = z.reshape(-1)[1:], x_c.reshape(-1)[1:]
    odd, _ = ops.flow_step(flat_z.view(-1, 2), flat_x.view(-1, 2), alpha=0.5, backend=kdev.backend, **STEP)
    ref, _ = reference.flow_step(flat_z.view(-1, 2), flat_x.view(-1, 2), alpha=0.5, **STEP)
    assert max_err(odd, ref) <= 4e-6 * max(1.0, ref.abs().max().item())


def test_index_base_continues_the_stream(kdev):
    # a slice of rows with index_base = its first element draws exactly the full call's noise there:
    # what makes sample i of a run independent of the batch it is sampled in
    z, x_c, *_ = _inputs((24, 36), device=kdev.device)
    full, _ = ops.flow_step(z, x_c, alpha=0.5, backend=kdev.backend, **STEP)
    for r0, r1 in ((4, 24), (9, 10), (1, 3)):
        part, _ = ops.flow_step(z[r0:r1], x_c[r0:r1], alpha=0.5, index_base=r0 * 36, backend=kdev.backend, **STEP)
        assert torch.equal(part, full[r0:r1]), (r0, r1)
    ref, _ = reference.flow_step(z[9:10], x_c[9:10], alpha=0.5, index_base=9 * 36, **STEP)
    assert max_err(ref, full[9:10]) <= 4e-6 * max(1.0, ref.abs().max().item())
    with pytest.raises(ValueError, match="'index_base' must be a multiple of 4"):
        ops.flow_step(z, x_c, alpha=0.5, index_base=6, backend=kdev.backend, **STEP)


def _noise(n, seed, offset, sigma=1.0, kdev=None):
    zero = torch.zeros(n, 1, device=kdev.device if kdev else "cpu")
    eps, _ = ops.flow_step(zero, zero, t=0.0, t_next=0.0, alpha=0.0, sigma_n=sigma, seed=seed, offset=offset,
                           backend=kdev.backend if kdev else "kernel")
    return eps.view(-1).cpu()


def test_noise_statistics(kdev):
    n = 1 << 20
    eps = _noise(n, seed=42, offset=0, kdev=kdev).double()
    tol = 6.0 / math.sqrt(n)
    assert abs(eps.mean().item()) < tol
    assert abs(eps.var().item() - 1.0) < 6.0 * math.sqrt(2.0 / n)
    assert abs(((eps - eps.mean()) ** 4).mean().item() / eps.var().item() ** 2 - 3.0) < 0.05
    assert abs((eps.abs() < 1.0).double().mean().item() - 0.6826894921) < 6 * math.sqrt(0.22 / n)
    # lanes of one Philox call and neighbouring elements are uncorrelated
    assert abs(torch.corrcoef(torch.stack([eps[:-1], eps[1:]]))[0, 1].item()) < tol
    other = _noise(n, seed=42, offset=1, kdev=kdev).double()
    assert abs(torch.corrcoef(torch.stack([eps, other]))[0, 1].item()) < tol
    assert not torch.equal(_noise(64, seed=1, offset=0, kdev=kdev), _noise(64, seed=2, offset=0, kdev=kdev))
    assert torch.equal(_noise(64, seed=7, offset=3, kdev=kdev), _noise(64, seed=7, offset=3, kdev=kdev))
    assert torch.allclose(_noise(64, 7, 3, sigma=2.0, kdev=kdev), 2.0 * _noise(64, 7, 3, kdev=kdev))


def test_philox_known_answers():
    # Random123's known-answer vectors for philox4x32_10
    def run(c, k):
        return [int(v) for v in reference.philox4x32(*[torch.tensor([x], dtype=torch.int64) for x in c], *k)]

    assert run([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert run([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_large_seed_and_offset(kdev):
    z = torch.zeros(9, 3, device=kdev.device)
    kw = dict(t=0.0, t_next=0.0, alpha=0.0, seed=-(2**63) + 5, offset=2**40 + 3)
    k, _ = ops.flow_step(z, z, backend=kdev.backend, **kw)
    r, _ = reference.flow_step(z, z, **kw)
    assert max_err(k, r) < 1e-5


def test_opcheck(kdev):
    z, x_c, x_u, mask, x_cond = _inputs((5, 8), device=kdev.device)
    op = kdev.op("flow_step")
    torch.library.opcheck(op, (z, x_c, x_u, mask, x_cond, 0.2, 0.3, 2.0, 0.9, 2.0, 0.05, 3, 4))
    torch.library.opcheck(op, (z, x_c, None, None, None, 0.2, 0.3, 1.0, 1.0, 2.0, 0.05, 0, 0))


@requires_kernels
def test_bad_inputs_name_the_argument():
    z, x_c, x_u, mask, x_cond = _inputs((4, 8))
    with pytest.raises(ValueError, match="x_c"):
        ops.flow_step(z, x_c[:, :4], t=0.1, t_next=0.2)
    with pytest.raises(ValueError, match="x_u"):
        ops.flow_step(z, x_c, x_u.bfloat16(), t=0.1, t_next=0.2)
    with pytest.raises(ValueError, match="cond_mask"):
        ops.flow_step(z, x_c, None, mask.float(), x_cond, t=0.1, t_next=0.2)
    with pytest.raises(ValueError, match="together"):
        ops.flow_step(z, x_c, None, mask, None, t=0.1, t_next=0.2)
    with pytest.raises(ValueError, match="alpha"):
        ops.flow_step(z, x_c, t=0.1, t_next=0.2, alpha=1.5)
    with pytest.raises(ValueError, match="x_c.*meta"):
        ops.flow_step(z, x_c.to("meta"), t=0.1, t_next=0.2)
    with pytest.raises(RuntimeError, match="'x_c' must be contiguous"):
        torch.ops.elf_fast.flow_step(z, x_c.t().contiguous().t(), None, None, None, 0.1, 0.2, 1.0, 1.0, 2.0, 0.05, 0, 0)
    with pytest.raises(RuntimeError, match="'cond_mask' must have shape"):
        torch.ops.elf_fast.flow_step(z, x_c, None, mask[:2], x_cond, 0.1, 0.2, 1.0, 1.0, 2.0, 0.05, 0, 0)
    with pytest.raises(RuntimeError, match="'alpha' must be in"):
        torch.ops.elf_fast.flow_step(z, x_c, None, None, None, 0.1, 0.2, 1.0, -0.5, 2.0, 0.05, 0, 0)


@requires_kernels
def test_fake_implementation_runs_the_wrappers_rules():
    """Under torch.compile with dynamic shapes the fake implementation checks the symbolic sizes with
    the wrapper's rule: a bad shape fails the trace with its ValueError message."""
    torch._dynamo.reset()
    z, x_c, x_u, mask, x_cond = _inputs((4, 8))

    def step(z, x_c, mask, x_cond):
        return torch.ops.elf_fast.flow_step(z, x_c, None, mask, x_cond, 0.1, 0.2, 1.0, 1.0, 2.0, 0.05, 0, 0)[0]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=True)
    assert torch.equal(compiled(z, x_c, mask, x_cond), step(z, x_c, mask, x_cond))
    with pytest.raises(RuntimeError, match=r"ValueError.*'cond_mask' must have shape \(s\w+,\)") as info:
        compiled(z, x_c, mask[:2], x_cond)
    assert "got (s" in str(info.value)  # the rule compared symbolic sizes
    meta = [t.to("meta") for t in (z, x_c)]
    with pytest.raises(ValueError, match=r"'alpha' must be in \[0, 1\], got -0.5"):
        torch.ops.elf_fast.flow_step(*meta, None, None, None, 0.1, 0.2, 1.0, -0.5, 2.0, 0.05, 0, 0)


def test_reference_backend_checks_the_rules_too():
    z, x_c, x_u, mask, x_cond = _inputs((4, 8))
    with pytest.raises(ValueError, match=r"'cond_mask' must have shape \(4,\), got \(2,\)"):
        ops.flow_step(z, x_c, None, mask[:2], x_cond, t=0.1, t_next=0.2, backend="reference")
    with pytest.raises(ValueError, match="'t_eps' must be > 0"):
        ops.flow_step(z, x_c, t=0.1, t_next=0.2, t_eps=0.0, backend="reference")


def test_import_does_not_touch_the_gpu():
    code = "import torch, elf_fast; print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
