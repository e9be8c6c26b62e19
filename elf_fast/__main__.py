"""``python -m elf_fast``: report the build and check every kernel against its reference.

Runs each fused op on small random inputs on the CPU (and the GPU when one is
visible), compares it with :mod:`elf_fast.reference` and prints the largest
error and both timings. Exits non-zero if a kernel disagrees. ``--emu`` adds the
CUDA kernels run by the SIMT emulator (elf_fast._C_emu, compiled on demand into
build/emu when the install did not build it, about a minute) on smaller inputs.
"""

from __future__ import annotations

import sys
import time

import torch

from elf_fast import emulation, ops, validate
from elf_fast.cli import ArgumentParser

MAX_LOGITS = 1 << 28  # float32 logits the reference may build: 1 GiB


def _time(fn, device: str, reps: int = 5) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def _cases(device: str, N: int, C: int, H: int, V: int):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device)  # noqa: E731
    z, x, x2 = rnd(N, C), rnd(N, C), rnd(N, C)
    sc = [rnd(C, 2 * C, scale=(2 * C) ** -0.5), rnd(C, scale=0.1), rnd(128, C, scale=C**-0.5),
          rnd(H, 128, scale=128**-0.5), rnd(H, scale=0.1)]
    folded = ops.fold_selfcond_weights(*sc[:3])
    h = rnd(N, H)
    head = [rnd(H, C, scale=H**-0.5), rnd(C, scale=0.1), rnd(C, V, scale=3 * C**-0.5), rnd(V, scale=0.1)]
    targets = torch.randint(0, V, (N,), generator=g).to(device)
    step = dict(t=0.4, t_next=0.45, cfg=2.0, alpha=0.9, seed=1, offset=2)
    norm_w = rnd(H)
    T = max(1, N // 8)
    qkv = rnd(8, T, 3 * H)  # 8 sequences of T positions
    ang = torch.arange(T, dtype=torch.float32)[:, None] * torch.rand(32, generator=g)
    cos, sin = ang.cos().to(device), ang.sin().to(device)
    return {
        "selfcond_proj": (lambda b: ops.selfcond_proj(z, x, *sc, backend=b), "out"),
        "selfcond_proj_folded": (lambda b: ops.selfcond_proj_folded(z, x, *folded, *sc[3:], backend=b), "out"),
        "flow_step": (lambda b: ops.flow_step(z, x, x2, **step, backend=b)[0], "out"),
        "unembed_argmax": (lambda b: ops.unembed_argmax(h, *head, backend=b)[1], "max logit"),
        "linear_cross_entropy": (lambda b: ops.linear_cross_entropy(h, *head, targets, reduction="mean",
                                                                    backend=b), "mean loss"),
        "rms_norm": (lambda b: ops.rms_norm(h, norm_w, backend=b), "out"),
        "qk_norm_rope": (lambda b: torch.stack(ops.qk_norm_rope(qkv, norm_w[:64], norm_w[64:128], cos, sin, H // 64,
                                                                backend=b)), "q, k, v"),
        "swiglu": (lambda b: ops.swiglu(qkv, backend=b), "out"),
    }


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m elf_fast", description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=validate.arg_int(1, 1 << 16), default=2048, help="rows N of the test inputs")
    ap.add_argument("--vocab", type=validate.arg_int(2, 1 << 20), default=32128,
                    help=f"vocabulary V (positions x vocab at most {MAX_LOGITS}: the reference builds the logits)")
    ap.add_argument("--emu", action="store_true",
                    help="also check the CUDA kernels under the SIMT emulator (N=256, V=2053)")
    args = ap.parse_args(argv)
    if args.positions * args.vocab > MAX_LOGITS:
        ap.error(f"--positions x --vocab is {args.positions * args.vocab}, more than {MAX_LOGITS} (the reference "
                 "materialises those logits)")
    info = ops.build_info()
    # --emu compiles the emulation module on demand (into build/emu, once), as the tests do
    emu = emulation.load(build=args.emu)
    print(f"elf_fast with torch {torch.__version__}: extension loaded: {info['extension_loaded']}"
          + (f" ({info['load_error']})" if info["load_error"] else "") + f", CUDA kernels built: {info['cuda_built']}"
          + f", CUDA emulation module built: {emu is not None}")
    # (label, description, tensor device, backend, N, V)
    runs = [("cpu", "CPU", "cpu", "kernel", args.positions, args.vocab)]
    if torch.cuda.is_available():
        runs.append(("cuda", torch.cuda.get_device_name(), "cuda", "kernel", args.positions, args.vocab))
    if args.emu:
        if emu is None:
            raise OSError(f"--emu: {emulation.load_error()}")
        runs.append(("cuda_emu", "CUDA kernels emulated on the CPU", "cpu", "emu", 256, 2053))
    ok = True
    for label, name, device, backend, n, vocab in runs:
        print(f"\n{label} ({name}), N={n}, C=512, H=768, V={vocab}, float32"
              + (": times measure the emulator, not a GPU" if label == "cuda_emu" else ""))
        print(f"  {'op':<22} {'kernel ms':>10} {'reference ms':>13} {'max rel err':>12}  compared")
        for op, (fn, what) in _cases(device, n, 512, 768, vocab).items():
            if backend == "kernel" and not ops.kernel_available(op, device):
                print(f"  {op:<22} {'not built':>10}")
                continue
            with torch.no_grad():
                out_k, out_r = fn(backend), fn("reference")
                err = ((out_k.float() - out_r.float()).abs().max() / out_r.float().abs().max().clamp_min(1e-6)).item()
                t_k, t_r = _time(lambda: fn(backend), device), _time(lambda: fn("reference"), device)
            good = err < 1e-4
            ok &= good
            print(f"  {op:<22} {t_k:>10.2f} {t_r:>13.2f} {err:>12.1e}  {what}{'' if good else '  MISMATCH'}")
    print("\nall kernels agree with their references" if ok else "\nsome kernels DISAGREE with their references")
    return 0 if ok else 1


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))
