#!/usr/bin/env python
"""Measure how a GPU's tensor cores accumulate: known-answer mma problems, fitted to the bit-level
model of ``elf_fast.emulation.mma_model`` (blocks of products aligned to the largest term, truncated
to some kept bits, rounded once to fp32 toward zero or to nearest).

Each problem is D = C + A B through one ``mma.sync`` (bf16 m16n8k16, the fused decode kernel's; and
tf32 m16n8k8, the 3xTF32 selfcond kernel's), with exponents spread so that the low bits of every
parameter matter. Every candidate model (block size, kept bits, rounding) is evaluated on the same
problems; the ones that reproduce every output bit for bit are the GPU's. docs/method.md §7.5's
bound on unembed_argmax holds for any block size with >= 22 kept bits (elf_fast.h kTcMinKeptBits).

    python scripts/tc_probe.py gpu [--arch 90]            # compile scripts/tc_probe.cu, run it, fit
    python scripts/tc_probe.py emu --block 16 --kept 24   # the same problems through the emulator

scripts/device_check.sh runs the first on the lent GPU; tests/test_emulator.py runs the second and
checks that the fit recovers the emulator's configured model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

VARIANTS = {"bf16": (0, 16, 7), "tf32": (1, 8, 10)}  # variant id, K, fraction bits of the operands
BLOCKS = {"bf16": (1, 2, 4, 8, 16), "tf32": (1, 2, 4, 8)}
KEPT = range(20, 33)


def make_problems(kind: str, count: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A (count, 16, K), B (count, K, 8), C (count, 16, 8)) fp32, A and B exact in the operand type.
    Per problem, random exponent spreads: wide ones make alignment truncation drop whole products,
    narrow ones its last bits; C (a full 24-bit significand) is the largest term of some blocks and
    among the smallest of others, with mixed signs throughout."""
    _, K, frac = VARIANTS[kind]
    g = torch.Generator().manual_seed(seed)

    def operand(*shape, spread, signed=True):
        m = torch.randint(0, 2**frac, shape, generator=g).double() / 2**frac
        e = -torch.randint(0, spread + 1, shape, generator=g).double()
        s = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0) if signed else torch.ones(shape)
        zero = torch.rand(shape, generator=g) < (0.1 if signed else 0.0)
        return torch.where(zero, 0.0, s * (1 + m) * 2**e).float()

    As, Bs, Cs = [], [], []
    for i in range(count):
        # every 4th problem: same-sign terms of one magnitude, whose sum carries into bits above the
        # largest term, so that the final rounding shows even when few bits are kept
        carry = i % 4 == 0
        spread = 1 if carry else int(torch.randint(1, 14, (1,), generator=g))
        As.append(operand(16, K, spread=spread, signed=not carry))
        Bs.append(operand(K, 8, spread=spread, signed=not carry))
        scale = 1.0 if carry else 2.0 ** float(torch.randint(-6, 6, (1,), generator=g))
        c = torch.randn(16, 8, generator=g, dtype=torch.float64) * scale
        c = c.abs() if carry else torch.where(torch.rand(16, 8, generator=g) < 0.15, 0.0, c)
        Cs.append(c.float())
    return torch.stack(As), torch.stack(Bs), torch.stack(Cs)


def pack(A, B, C) -> torch.Tensor:
    n = A.shape[0]
    return torch.cat([A.reshape(n, -1), B.reshape(n, -1), C.reshape(n, -1)], dim=1).contiguous()


def candidates(kind: str):
    yield ("k order, fp32 round to nearest", 0, 24, True)
    for block in BLOCKS[kind]:
        for kept in KEPT:
            for rn in (False, True):
                yield (f"block {block}, {kept} kept bits, {'to nearest' if rn else 'toward zero'}", block, kept, rn)


def fit(kind: str, A, B, C, D) -> list[tuple[str, int]]:
    """(model, mismatching outputs) for every candidate model, best first."""
    from elf_fast.emulation import mma_model

    out = []
    for name, block, kept, rn in candidates(kind):
        M = mma_model(A, B, C, block, kept, rn)
        out.append((name, int((M.view(torch.int32) != D.view(torch.int32)).sum())))
    return sorted(out, key=lambda r: r[1])


def run_gpu(kind: str, A, B, C, arch: str) -> torch.Tensor:
    variant = VARIANTS[kind][0]
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "tc_probe")
        home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        nvcc = os.path.join(home, "bin", "nvcc") if os.path.exists(os.path.join(home, "bin", "nvcc")) else "nvcc"
        subprocess.run([nvcc, f"-arch=sm_{arch.replace('.', '')}", "-O2", "-o", exe,
                        os.path.join(ROOT, "scripts", "tc_probe.cu")], check=True)
        x = pack(A, B, C).numpy()
        with open(os.path.join(tmp, "in.bin"), "wb") as f:
            np.array([variant, A.shape[0]], dtype=np.int32).tofile(f)
            x.astype(np.float32).tofile(f)
        subprocess.run([exe, os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")], check=True)
        return torch.from_numpy(np.fromfile(os.path.join(tmp, "out.bin"), dtype=np.float32)).view(-1, 16, 8)


def run_emu(kind: str, A, B, C, block: int, kept: int, rn: bool) -> torch.Tensor:
    from elf_fast import emulation

    if emulation.load(build=True) is None:  # compiled once into build/emu when missing, as the tests do
        raise RuntimeError(emulation.load_error())
    with emulation.tensor_core_numerics(block, kept, rn):
        return emulation.selftest("mma_probe", pack(A, B, C).flatten(), VARIANTS[kind][0])


def report(kind: str, ranked: list[tuple[str, int]], total: int) -> str:
    exact = [name for name, bad in ranked if bad == 0]
    lines = [f"{kind}: {total} outputs; models reproducing every one: " + ("; ".join(exact) if exact else "none")]
    lines += [f"  {bad:6d} mismatches: {name}" for name, bad in ranked[:6]]
    kept = [int(n.split(", ")[1].split()[0]) for n in exact if n.startswith("block")]
    if exact:
        ok = all(k >= 22 for k in kept) and len(kept) == len(exact)
        lines.append("  unembed_argmax's bound (>= 22 kept bits, any block, either rounding): "
                     + ("holds" if ok or exact[0].startswith("k order") else "DOES NOT HOLD: widen it"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("where", choices=["gpu", "emu"])
    ap.add_argument("--arch", default="90")
    ap.add_argument("--block", type=int, default=16, help="emu: the emulator's block size")
    ap.add_argument("--kept", type=int, default=24, help="emu: the emulator's kept bits")
    ap.add_argument("--nearest", action="store_true", help="emu: round to nearest instead of toward zero")
    ap.add_argument("--count", type=int, default=96)
    args = ap.parse_args(argv)
    status = 0
    for kind in ("bf16", "tf32"):
        A, B, C = make_problems(kind, args.count)
        block = min(args.block, VARIANTS[kind][1])
        D = run_gpu(kind, A, B, C, args.arch) if args.where == "gpu" else run_emu(kind, A, B, C, block, args.kept,
                                                                                   args.nearest)
        ranked = fit(kind, A, B, C, D)
        print(report(kind, ranked, D.numel()), flush=True)
        status |= ranked[0][1] != 0
    return status


if __name__ == "__main__":
    sys.exit(main())
