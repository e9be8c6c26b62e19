"""A/B timing of end-to-end sampling on the CPU: fused kernels vs the plain-PyTorch references,
alternated.

On a noisy machine (a shared VM's timings drift by 2x between short runs) timing the two
paths one after the other compares two different machines; alternating them round by round
in one process lets the drift hit both. The default sizes are those of the CPU row of
benchmarks/test_bench_sampling.py (``CPU_SIZE``: ELF-T, C 64, V 4096, batch 4 x 64 tokens,
8-step SDE; w_sc 3, random weights); the script imports only the package.

    python scripts/ab_sampling.py [--rounds 14] [--preset P --latent-dim C --vocab V --batch B --length L --steps S]
                                  [--bf16] [--checkpoint PATH | --builtin]

``--bf16`` adds a third path, alternated with the two: the fused one with the transformer blocks'
weights in bfloat16 (``ELF.set_block_dtype``, what ``Generator(dtype="bfloat16")`` and
``python -m elf_fast.sample --dtype bfloat16`` do), which runs the blocks' GEMMs as native bf16
matmuls on CPUs with AVX512-BF16 / AMX (emulated, and slow, elsewhere), and prints its accuracy
against the float32 fused path on the same weights and seed: the relative error of the final latents and
the share of decoded tokens that agree. Random weights make a degenerate model (its zero-initialised
output layers give x_hat = 0), so measure the accuracy on trained weights: ``--builtin`` (the
shipped ELF-XS checkpoint) or ``--checkpoint PATH`` replace the random model (sizes from it).
"""

import argparse
import os
import statistics
import time

import torch

from elf_fast.model import create_model
from elf_fast.sampling import SamplerConfig, decode, sample_latents


def add_common_args(ap: argparse.ArgumentParser, steps_help: str = "SDE steps (default %(default)s)") -> None:
    """The options this script shares with ab_port_sampling.py: rounds, sizes, --bf16, weights."""
    ap.add_argument("--rounds", type=int, default=14, help="timed rounds per path (after two warm-up rounds)")
    ap.add_argument("--preset", default="ELF-T", help="model preset (default %(default)s)")
    ap.add_argument("--latent-dim", type=int, default=64, help="C (default %(default)s)")
    ap.add_argument("--vocab", type=int, default=4096, help="V (default %(default)s)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per call (default %(default)s)")
    ap.add_argument("--length", type=int, default=64, help="tokens per sequence (default %(default)s)")
    ap.add_argument("--steps", type=int, default=8, help=steps_help)
    ap.add_argument("--bf16", action="store_true", help="also time the fused path with bf16 block weights")
    ap.add_argument("--checkpoint", help="trained weights instead of a random model (preset, C, V from it)")
    ap.add_argument("--builtin", action="store_true", help="the shipped built-in checkpoint as --checkpoint")


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_common_args(ap)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.builtin or args.checkpoint:
        from elf_fast.checkpoint import load_checkpoint
        from elf_fast.generator import builtin_checkpoint

        model = load_checkpoint(args.checkpoint or builtin_checkpoint(), max_length=args.length)[0].float().eval()
    else:
        model = create_model(args.preset, latent_dim=args.latent_dim, vocab_size=args.vocab,
                             max_length=args.length).eval()
    cfg = SamplerConfig(steps=args.steps, sampler="sde", gamma=1.5, w_sc=3.0)

    models = {"kernel": model, "reference": model}
    if args.bf16:
        import copy

        models["kernel-bf16"] = copy.deepcopy(model).set_block_dtype(torch.bfloat16)

    def run(m, with_latents=False):
        z = sample_latents(m, args.batch, args.length, cfg, seed=0, device="cpu")
        ids = decode(m, z, cfg.w_sc)
        return (z, ids) if with_latents else ids

    times = {impl: [] for impl in models}
    for _ in range(args.rounds + 2):  # the first two rounds warm up
        for impl, ts in times.items():
            os.environ["ELF_FAST_BACKEND"] = "reference" if impl == "reference" else "kernel"
            t0 = time.perf_counter()
            run(models[impl])
            ts.append(time.perf_counter() - t0)
    med = {k: statistics.median(v[2:]) * 1e3 for k, v in times.items()}
    low = {k: min(v[2:]) * 1e3 for k, v in times.items()}
    for k in times:
        print(f"{k:9s} median {med[k]:7.1f} ms   min {low[k]:7.1f} ms")
    print(f"fused vs plain: {med['reference'] / med['kernel']:.2f}x (medians), "
          f"{low['reference'] / low['kernel']:.2f}x (minima), {torch.get_num_threads()} threads, cpu")
    if args.bf16:
        os.environ["ELF_FAST_BACKEND"] = "kernel"
        z32, ids32 = run(models["kernel"], True)
        z16, ids16 = run(models["kernel-bf16"], True)
        rel = ((z16.float() - z32).norm() / z32.norm()).item()
        agree = (ids16 == ids32).float().mean().item()
        print(f"fused bf16 blocks vs plain: {med['reference'] / med['kernel-bf16']:.2f}x (medians), "
              f"{low['reference'] / low['kernel-bf16']:.2f}x (minima); vs fused fp32: latents relative error "
              f"{rel:.2e}, decoded tokens agreeing {100 * agree:.1f}% "
              f"({'trained' if args.builtin or args.checkpoint else 'random'} weights, seed 0)")


if __name__ == "__main__":
    main()
