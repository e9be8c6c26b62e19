"""The SIMT emulator itself: its test kernels (csrc/emu/selftest_kernels.cpp) compute the right
answer in their correct forms, and every deliberately broken form is reported, not silently
mis-computed or hung."""

import os
import sys

import pytest
import torch

from elf_fast import emulation, ops
from conftest import requires_emu

pytestmark = requires_emu


def _x(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 127, 128, 129, 1000])
def test_block_reduction_with_barriers(n):
    x = _x(n)
    with emulation.guarded_memory():
        got = emulation.selftest("block_sum", x.clone())
    assert torch.allclose(got, x.sum().reshape(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,message", [
    (1, r"shared memory partial \(byte 256\) before any thread of this block has written it \(never written, or "
        r"a __syncthreads\(\) missing"),                        # the __syncthreads after the stores removed
    (2, r"divergent __syncthreads\(\): this thread is at selftest_kernels.cpp:\d+ while 64 thread\(s\) of the "
        r"block wait at selftest_kernels.cpp:\d+"),               # a barrier inside `if (t < 64)`
    (4, r"shared-memory access out of bounds: partial\[128\]"),  # one past the shared array
    (5, r"shared memory partial \(byte 28\) before any thread"),  # thread 7 never stores its partial sum
])
def test_block_reduction_bugs_are_reported(variant, message):
    with pytest.raises(RuntimeError, match=message) as info:
        emulation.selftest("block_sum", _x(1000), variant)
    assert "block_sum_kernel" in str(info.value)  # the report names the kernel ...
    assert "block (0,0,0)" in str(info.value)      # ... and where it stopped


def test_barrier_after_early_return_is_reported():
    # threads t >= n return before __syncthreads: on a GPU undefined (a hang or garbage)
    with pytest.raises(RuntimeError, match="reached by 100 of 128 threads; 28 had returned before it"):
        emulation.selftest("block_sum", _x(100), 3)


def test_warp_reductions():
    x = _x(32)
    for variant in (0, 5):
        got = emulation.selftest("warp_sum", x.clone(), variant)
        assert torch.allclose(got, x.sum().reshape(1), rtol=1e-5, atol=1e-5), variant


@pytest.mark.parametrize("variant,message", [
    (1, "called by lane 5, which its mask excludes"),
    (2, r"reads lane \d+, which is not in its mask"),
    (3, "waits for lanes 16-31 (lanes 16-31 have returned)"),
    (4, "names lanes 16-31 that this block does not have"),
])
def test_warp_collective_bugs_are_reported(variant, message):
    with pytest.raises(RuntimeError, match=message if variant == 2 else message.replace("(", r"\(").replace(")", r"\)")):
        emulation.selftest("warp_sum", _x(32), variant)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000])
def test_grid_stride_loop(n):
    x = _x(n)
    with emulation.guarded_memory():
        assert torch.equal(emulation.selftest("scale", x.clone()), 2 * x)


def test_off_by_one_tail_is_caught_by_guarded_memory():
    with emulation.guarded_memory():
        x = _x(1000)
        with pytest.raises(RuntimeError, match=r"out-of-bounds global access 0 byte\(s\) past the end of a "
                                               r"4000-byte buffer.*scale_kernel.*thread"):
            emulation.selftest("scale", x, 1)


def test_write_before_the_start_is_caught_by_the_canary():
    with emulation.guarded_memory():
        x = _x(1000)
        with pytest.raises(RuntimeError, match=r"out-of-bounds global write 4 byte\(s\) before the start"):
            emulation.selftest("scale", x, 2)


def test_device_assert_names_the_condition():
    with pytest.raises(RuntimeError, match=r"device-side assertion `x\[i\] >= 0.f` failed"):
        emulation.selftest("scale", -torch.ones(10), 3)


def test_dynamic_shared_memory():
    x = _x(200)
    assert torch.equal(emulation.selftest("reverse", x.clone()), x.flip(0))
    with pytest.raises(RuntimeError, match=r"shared-memory access out of bounds: dynamic shared memory\[200\]"):
        emulation.selftest("reverse", x, 1)


@pytest.mark.parametrize("variant", [0, 2])
def test_atomics_in_shared_and_global_memory(variant):
    x = torch.randint(0, 1000, (1000,)).float()
    want = torch.bincount(x.long() % 8, minlength=8).float()
    assert torch.equal(emulation.selftest("histogram", x, variant), want)


def test_atomic_before_the_barrier_after_initialisation_is_reported():
    with pytest.raises(RuntimeError, match=r"shared-memory race on bins .*atomic of a value that thread 0 wrote"):
        emulation.selftest("histogram", torch.arange(1000).float(), 1)


def test_an_error_leaves_the_emulator_usable():
    with pytest.raises(RuntimeError):
        emulation.selftest("warp_sum", _x(32), 3)
    x = _x(129)
    assert torch.allclose(emulation.selftest("block_sum", x), x.sum().reshape(1), rtol=1e-5, atol=1e-5)


def test_guarded_memory_is_scoped():
    mod = emulation.load()
    before = mod.guarded_buffers()
    with emulation.guarded_memory():
        assert mod.guarded_memory()
        t = torch.empty(10)
        assert mod.guarded_buffers() == before + 1
        del t
    assert not mod.guarded_memory()
    assert mod.guarded_buffers() == before


def test_emu_backend_needs_cpu_tensors():
    with pytest.raises(ValueError, match="backend='emu' runs the emulated CUDA kernel on CPU tensors"):
        ops.swiglu(torch.randn(2, 4, device="meta"), backend="emu")


def test_tensor_core_mma_fragment_layout():
    """gpu::mma_bf16_m16n8k16 under the emulator computes A B from fragments loaded as PTX lays them out
    (a wrong lane or register mapping in the kernel or in the emulator would scramble D)."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(16, 16, generator=g).bfloat16().float()
    B = torch.randn(16, 8, generator=g).bfloat16().float()
    D = emulation.selftest("mma", torch.cat([A.flatten(), B.flatten()]))
    ref = (A.double() @ B.double()).float()
    assert torch.allclose(D, ref, rtol=0, atol=16 * 2.0**-24 * (A.abs() @ B.abs()).max().item())
    # distinct powers of two: each D element is one exact sum, so any misplaced element shows
    A = 2.0 ** torch.arange(16.0).repeat(16, 1) * torch.arange(1.0, 17.0)[:, None]
    B = torch.eye(16)[:, :8] + torch.eye(16)[:, 8:]
    D = emulation.selftest("mma", torch.cat([A.flatten(), B.flatten()]))
    assert torch.equal(D, A @ B)


def test_mma_needs_the_whole_warp():
    x = torch.zeros(384)
    with pytest.raises(RuntimeError, match="mma.sync"):
        emulation.selftest("mma", x, 1)


def test_tf32_mma_fragment_layout():
    """gpu::mma_tf32_m16n8k8: exact power-of-two sums expose any misplaced element; the low 13 bits of
    each register are ignored, as the hardware reads TF32."""
    A = 2.0 ** torch.arange(8.0).repeat(16, 1) * torch.arange(1.0, 17.0)[:, None]
    B = torch.eye(8)
    B[0, 7] = 2.0**-8  # D[:, 7] = A[:, 7] + A[:, 0] / 256: still exact
    D = emulation.selftest("mma_tf32", torch.cat([A.flatten(), B.flatten()]))
    assert torch.equal(D, A @ B)
    noisy = A.clone()
    noisy.view(torch.int32).add_(0x1000)  # below TF32's last bit: ignored
    D = emulation.selftest("mma_tf32", torch.cat([noisy.flatten(), B.flatten()]))
    assert torch.equal(D, A @ B)


# ---- tensor-core numerics (emulation.tensor_core_numerics) -------------------------------------
NUMERICS = [(0, 24, True), (16, 24, False), (16, 22, False), (8, 25, True), (4, 23, False), (1, 22, False)]


def _probe_problems(kind, count=24):
    sys.path.insert(0, os.path.join(emulation.ROOT, "scripts"))
    try:
        import tc_probe
    finally:
        sys.path.pop(0)
    return tc_probe, tc_probe.make_problems(kind, count, seed=1)


@requires_emu
@pytest.mark.parametrize("block,kept,nearest", NUMERICS)
@pytest.mark.parametrize("kind", ["bf16", "tf32"])
def test_mma_numerics_are_the_python_model_bit_for_bit(kind, block, kept, nearest):
    """The emulated mma under tensor_core_numerics computes exactly emulation.mma_model's arithmetic
    (which scripts/tc_probe.py fits a GPU's results to), and the default is k-order fp32 adds."""
    tc_probe, (A, B, C) = _probe_problems(kind)
    with emulation.tensor_core_numerics(block, kept, nearest):
        D = emulation.selftest("mma_probe", tc_probe.pack(A, B, C).flatten(), tc_probe.VARIANTS[kind][0])
    M = emulation.mma_model(A, B, C, block, kept, nearest)
    assert torch.equal(D.view(torch.int32), M.view(torch.int32)), (D != M).sum().item()
    D0 = emulation.selftest("mma_probe", tc_probe.pack(A, B, C).flatten(), tc_probe.VARIANTS[kind][0])
    assert torch.equal(D0, emulation.mma_model(A, B, C, 0))  # the context restored the default


def test_mma_model_known_answers():
    """Hand-checked sums: c = 1 plus products 2^-k and a block's truncation and rounding."""
    A = torch.zeros(1, 16, 16)
    B = torch.zeros(1, 16, 8)
    A[0, 0, 0], A[0, 0, 1] = 1.0, 2.0**-20
    B[0, 0, 0], B[0, 1, 0] = 2.0**-3, 2.0**-3  # products 2^-3 and 2^-23
    C = torch.zeros(1, 16, 8)
    C[0, 0, 0] = 1.0  # terms 1, 2^-3, 2^-23: the sum 1.125 + 2^-23 needs 24 bits below 2^0 ... 2^-23
    d = lambda *cfg: emulation.mma_model(A, B, C, *cfg)[0, 0, 0].item()  # noqa: E731
    assert d(16, 24, False) == 1.125 + 2.0**-23  # 2^-23 is the quantum at 24 kept bits: kept
    assert d(16, 23, False) == 1.125  # quantum 2^-22: the 2^-23 product truncates to 0
    assert d(0) == 1.125 + 2.0**-23
    C[0, 0, 0] = -1.0  # -1 + 0.125 + 2^-23 = -0.875 + 2^-23: exact in fp32 either way
    assert d(16, 24, False) == -0.875 + 2.0**-23
    B[0, 1, 0] = 2.0**-5  # product 2^-25: below the quantum of 24 kept bits (2^-23) -> dropped
    C[0, 0, 0] = 1.0
    assert d(16, 24, False) == 1.125
    assert d(16, 27, False) == 1.125  # kept (quantum 2^-26), then 1.125 + 2^-25 rounds toward zero
    assert d(16, 27, True) == 1.125  # to nearest: 2^-25 is a quarter ulp of 1.125 (ulp 2^-23)
    B[0, 1, 0] = 2.0**-4  # product 2^-24 + ... : 1.125 + 2^-24 = exactly half an ulp above 1.125
    A[0, 0, 2], B[0, 2, 0] = 2.0**-20, 2.0**-5  # + 2^-25: 1.125 + 0.75 ulp
    assert d(16, 27, False) == 1.125  # toward zero
    assert d(16, 27, True) == 1.125 + 2.0**-23  # to nearest


@requires_emu
@pytest.mark.parametrize("block,kept,nearest", [(16, 24, False), (8, 22, True)])
def test_tc_probe_recovers_the_emulated_model(block, kept, nearest):
    """scripts/tc_probe.py (run on a GPU by scripts/device_check.sh) identifies the accumulation model
    from its known-answer problems: run through the emulator configured with a model, the fit finds
    that model, and few others, reproducing every output."""
    for kind in ("bf16", "tf32"):
        tc_probe, (A, B, C) = _probe_problems(kind, count=24)
        b = min(block, tc_probe.VARIANTS[kind][1])
        D = tc_probe.run_emu(kind, A, B, C, b, kept, nearest)
        ranked = tc_probe.fit(kind, A, B, C, D)
        exact = [name for name, bad in ranked if bad == 0]
        want = f"block {b}, {kept} kept bits, {'to nearest' if nearest else 'toward zero'}"
        assert want in exact, ranked[:4]
        assert all(f"{kept} kept bits" in n and ("to nearest" if nearest else "toward zero") in n for n in exact), exact
