"""The decode head's fused linear cross-entropy on the CPU: float32 vs the bf16 GEMM path that
``ELF.decode_loss`` takes under CPU bf16 autocast (``train.cpu_bf16``) on CPUs with native bf16.

Accuracy: loss and gradient errors of the bf16 path against the float32 kernel on the same
(unrounded) float32 inputs -- what a ``train.cpu_bf16`` step computes instead of the float32
head -- and, to separate the GEMMs' share, against the float32 kernel on the bf16-rounded inputs;
PyTorch's own bf16 (the reference under CPU bf16 autocast) gives the scale of a bf16 error.
Speed: forward + backward, the two paths alternated round by round in one process (a shared
machine's drift hits both); the bf16 path's time includes the casts decode_loss does (h and the
four parameters to bf16, and their gradients back through autograd).

Default shape: the built-in config's decode head (ELF-XS: H 128; MiniLM: C 384, V 30,522; N 4096 =
64 x 64 tokens). ``--builtin`` takes P, p, U, u from the shipped ELF-XS checkpoint (h stays random:
no block outputs are computed) and samples the targets from the head's own float32 softmax;
otherwise random weights (tests/conftest.py's scale) and uniform targets.

    OMP_NUM_THREADS=1 python scripts/ab_lce_cpu_bf16.py [--n 4096] [--rounds 7] [--builtin]
"""

import argparse
import statistics
import time

import torch

from elf_fast import ops, reference


def head(args, g):
    H, C, V = args.h, args.c, args.v
    if args.builtin:
        from safetensors.torch import load_file

        from elf_fast.generator import builtin_checkpoint

        sd = load_file(str(builtin_checkpoint()))
        P, p, U, u = (sd[k].float() for k in ("proj_kernel", "proj_bias", "unembed_kernel", "unembed_bias"))
        return P, p, U, u
    P = torch.randn(H, C, generator=g) / H**0.5
    p = torch.randn(C, generator=g) * 0.1
    U = torch.randn(C, V, generator=g) * (3.0 / C**0.5)
    u = torch.randn(V, generator=g) * 0.1
    return P, p, U, u


def loss_and_grads(params, targets, dtype):
    leaves = [t.clone().requires_grad_() for t in params]
    loss = ops.linear_cross_entropy(*(t.to(dtype) for t in leaves), targets, backend="kernel")
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def torch_autocast_loss_and_grads(params, targets):
    """PyTorch's own bf16: the reference (materialised logits) under CPU bf16 autocast, on the inputs
    rounded to bf16 (its GEMMs run in bf16 with bf16 outputs; cross-entropy in fp32)."""
    leaves = [t.bfloat16().requires_grad_() for t in params]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reference.linear_cross_entropy(*leaves, targets)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--h", type=int, default=128)
    ap.add_argument("--c", type=int, default=384)
    ap.add_argument("--v", type=int, default=30522)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--builtin", action="store_true")
    args = ap.parse_args()
    from elf_fast.muon import cpu_has_native_bf16

    print(f"torch threads {torch.get_num_threads()}, native bf16: {cpu_has_native_bf16()}")
    g = torch.Generator().manual_seed(0)
    P, p, U, u = head(args, g)
    if args.builtin:
        args.h, args.c, args.v = P.shape[0], U.shape[0], U.shape[1]
    h = torch.randn(args.n, args.h, generator=g)
    if args.builtin:  # targets from the head's own distribution: a realistic loss level
        with torch.no_grad():
            logits = torch.nn.functional.gelu(h @ P + p, approximate="tanh") @ U + u
            targets = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
            del logits
    else:
        targets = torch.randint(0, args.v, (args.n,), generator=g)
    params = [h, P, p, U, u]
    print(f"N {args.n}, H {args.h}, C {args.c}, V {args.v}, {'built-in ELF-XS head' if args.builtin else 'random head'}")

    l32, g32 = loss_and_grads(params, targets, torch.float32)
    lb, gb = loss_and_grads(params, targets, torch.bfloat16)
    lr, gr = loss_and_grads([t.bfloat16().float() for t in params], targets, torch.float32)
    lt, gt = torch_autocast_loss_and_grads(params, targets)
    print(f"loss fp32 {l32.item():.6g} (mean {l32.item() / args.n:.4f} per token), bf16 path {lb.item():.6g}")
    print(f"  loss rel. error vs fp32: {abs(lb - l32).item() / abs(l32).item():.2e}; "
          f"vs fp32 on the bf16-rounded inputs: {abs(lb - lr).item() / abs(lr).item():.2e} "
          f"(PyTorch's bf16 autocast of the reference: {abs(lt - l32).item() / abs(l32).item():.2e} vs fp32)")
    for name, a, b, c, t in zip(("h", "P", "p", "U", "u"), gb, g32, gr, gt):
        print(f"  grad {name}: rel. (norm) error vs fp32 {rel(a, b):.2e} (PyTorch bf16 autocast {rel(t, b):.2e}), "
              f"vs fp32 on rounded inputs {rel(a, c):.2e}; max abs error / max |grad| "
              f"{(a - b).abs().max().item() / b.abs().max().item():.2e}")
    del lt, gt

    times = {torch.float32: [], torch.bfloat16: []}
    for _ in range(args.rounds):
        for dt in times:
            t0 = time.perf_counter()
            loss_and_grads(params, targets, dt)
            times[dt].append(time.perf_counter() - t0)
    m32, mb = (statistics.median(times[dt]) for dt in times)
    print(f"fwd+bwd, {args.rounds} alternated rounds: fp32 median {m32 * 1e3:.0f} ms (min {min(times[torch.float32]) * 1e3:.0f}), "
          f"bf16 path median {mb * 1e3:.0f} ms (min {min(times[torch.bfloat16]) * 1e3:.0f}): {m32 / mb:.2f}x")


if __name__ == "__main__":
    main()
