"""A/B timing of end-to-end sampling on the CPU: fused kernels vs the plain-PyTorch references,
alternated.

On a noisy machine (a shared VM's timings drift by 2x between short runs) timing the two
paths one after the other compares two different machines; alternating them round by round
in one process lets the drift hit both. The default sizes are those of the CPU row of
benchmarks/test_bench_sampling.py (``CPU_SIZE``: ELF-T, C 64, V 4096, batch 4 x 64 tokens,
8-step SDE; w_sc 3, random weights); the script imports only the package.

    python scripts/ab_sampling.py [--rounds 14] [--preset P --latent-dim C --vocab V --batch B --length L --steps S]
"""

import argparse
import os
import statistics
import time

import torch

from elf_fast.model import create_model
from elf_fast.sampling import SamplerConfig, decode, sample_latents


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--rounds", type=int, default=14, help="timed rounds per path (after two warm-up rounds)")
    ap.add_argument("--preset", default="ELF-T", help="model preset (default %(default)s)")
    ap.add_argument("--latent-dim", type=int, default=64, help="C (default %(default)s)")
    ap.add_argument("--vocab", type=int, default=4096, help="V (default %(default)s)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per call (default %(default)s)")
    ap.add_argument("--length", type=int, default=64, help="tokens per sequence (default %(default)s)")
    ap.add_argument("--steps", type=int, default=8, help="SDE steps (default %(default)s)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.preset, latent_dim=args.latent_dim, vocab_size=args.vocab, max_length=args.length).eval()
    cfg = SamplerConfig(steps=args.steps, sampler="sde", gamma=1.5, w_sc=3.0)

    def run():
        z = sample_latents(model, args.batch, args.length, cfg, seed=0, device="cpu")
        return decode(model, z, cfg.w_sc)

    times = {"kernel": [], "reference": []}
    for _ in range(args.rounds + 2):  # the first two rounds warm up
        for impl, ts in times.items():
            os.environ["ELF_FAST_BACKEND"] = impl
            t0 = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t0)
    med = {k: statistics.median(v[2:]) * 1e3 for k, v in times.items()}
    low = {k: min(v[2:]) * 1e3 for k, v in times.items()}
    for k in times:
        print(f"{k:9s} median {med[k]:7.1f} ms   min {low[k]:7.1f} ms")
    print(f"fused vs plain: {med['reference'] / med['kernel']:.2f}x (medians), "
          f"{low['reference'] / low['kernel']:.2f}x (minima), {torch.get_num_threads()} threads, cpu")


if __name__ == "__main__":
    main()
