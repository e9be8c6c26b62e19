r"""A/B timing of end-to-end CPU sampling: elf_fast's fused sampler against the official PyTorch
port's own sampler code, same weights, same sizes, alternated round by round in one process.

The port is github.com/lillian039/ELF, branch ``pytorch_elf``; ``--port-src`` points at its
``src/`` folder, which this script puts on ``sys.path`` and imports at run time (nothing of the
port is copied into elf_fast). Its ``src/`` needs ``einops`` and ``pyyaml`` besides torch.

    git -C /path/to/ELF archive pytorch_elf | tar -x -C /tmp/port     # or a clone of that branch
    OMP_NUM_THREADS=N python scripts/ab_port_sampling.py --port-src /tmp/port/src [--rounds 14]
        [--preset P --latent-dim C --vocab V --batch B --length L --steps S --sampler sde|ode
         --gamma G --w-sc W] [--bf16] [--checkpoint PATH | --builtin]

    # ELF-T widths (the default; the CPU row of benchmarks/test_bench_sampling.py):
    python scripts/ab_port_sampling.py --port-src /tmp/port/src \
        --preset ELF-T --latent-dim 64 --vocab 4096 --batch 4 --length 64
    # ELF-B widths (T5-small latents, T5 vocabulary), the port's unconditional ELF-B setting is --steps 32:
    python scripts/ab_port_sampling.py --port-src /tmp/port/src \
        --preset ELF-B --latent-dim 512 --vocab 32128 --batch 1 --length 256

Paths timed, each from the same weights (one state dict loaded strictly into both models; the two
share parameter names and layouts, docs/method.md §8):

* ``port``: the port's own unconditional generation loop as its ``generation.py`` runs it on a
  CPU: ``sampling_utils.get_sampling_steps`` (the logit-normal grid from the global generator),
  the initial noise ``torch.randn(..., generator=g) * denoiser_noise_scale``,
  ``generation_utils._generate_samples_single_batch`` (its SDE / ODE steps with its own
  ``torch.randn`` draws) and ``generation_utils._dlm_decode_batch`` (the final decode to ids),
  in float32 (the port's bf16 autocast is CUDA-only). Its ``mask_after_eos`` is left out, as
  elf_fast's path does not truncate either.
* ``fused``: elf_fast's ``sample_latents`` + ``decode`` on the kernel back-end
  (``ELF_FAST_BACKEND=kernel``: the extension must be built), float32.
* ``fused-bf16`` (``--bf16``): the same with the transformer blocks' weights in bfloat16
  (``ELF.set_block_dtype``), as in scripts/ab_sampling.py; it changes the numbers (the check below
  prints by how much), so its speed-up is not a same-computation figure.

Defaults: 8-step SDE, gamma 1.5, w_sc 3 (scripts/ab_sampling.py's); the port's own unconditional
ELF-B sampler setting is 32-step SDE, gamma 1.5, w_sc 3 (its sampling_configs/
uncond_sampling_configs.yml): ``--steps 32``. The port-side settings it reads from its training
config (t_eps 0.05, denoiser_noise_scale 2, grid P_mean -1.5 / P_std 0.8, self_cond_prob 0.5,
4 self-conditioning CFG tokens, as in its train_owt_ELF-B.yml) are filled from elf_fast's
``SamplerConfig``, so both sides run the same settings.

Before timing, a same-computation check: one run of each side on the same grid and the same noise
(the port's ``torch.randn`` is handed elf_fast's own Philox draws, as
tests/fixtures/port/make_port_fixtures.py does), printing the relative difference of the final
latents and the share of decoded tokens that agree (with the number of distinct ids the port
decoded: random weights tend to collapse the sampled sequence onto a few tokens at large V, where the
latent difference is the discriminating figure; trained weights give a real token check). The timed
rounds then let each side draw its own noise (timing only).

Random weights (the default) have their zero-initialised tensors (the final layer, the biases)
randomised so the model's outputs are not degenerate; ``--builtin`` (the shipped ELF-XS
checkpoint) or ``--checkpoint PATH`` load trained weights instead (preset, C and V from them).
The paths run in turn, their order reversed every other round; the first two rounds warm up and
are not counted; medians and minima of the rest are printed with the CPU model and the thread
count. On a shared machine, repeat the run and report medians.
"""

import argparse
import os
import platform
import statistics
import sys
import time
import types
from types import SimpleNamespace

import torch

from elf_fast import ops
from elf_fast.model import create_model
from elf_fast.sampling import SamplerConfig, decode, sample_latents

from ab_sampling import add_common_args  # this folder: run as python scripts/ab_port_sampling.py


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class PinnedRandn(types.ModuleType):
    """Stands in for ``torch`` inside the port's sampling_utils: ``randn`` returns the queued
    tensors in order (shape-checked); everything else is torch's."""

    def __init__(self, queue):
        super().__init__("torch")
        self.queue = list(queue)

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *size, **kw):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if not self.queue or tuple(self.queue[0].shape) != tuple(shape):
            raise RuntimeError(f"the port drew an unexpected torch.randn{tuple(shape)}")
        return self.queue.pop(0).clone()


def philox_noise(shape, seed: int, offset: int, sigma_n: float) -> torch.Tensor:
    """elf_fast's sampler noise ``sigma_n * eps`` at (seed, offset), from its reference op."""
    zeros = torch.zeros(shape)
    return ops.flow_step(zeros, zeros, None, None, None, t=0.0, t_next=0.0, alpha=0.0, sigma_n=sigma_n, t_eps=0.05,
                         seed=seed, offset=offset, index_base=0, backend="reference")[0]


def randomise_zero_tensors(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random values for the parameters a fresh model holds at zero (its final layer, its biases)."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                scale = p.shape[-1] ** -0.5 if p.dim() >= 2 else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--port-src", required=True,
                    help="the port's src/ folder (github.com/lillian039/ELF, branch pytorch_elf)")
    add_common_args(ap, "sampling steps (default %(default)s; the port's ELF-B: 32)")
    ap.add_argument("--sampler", choices=("sde", "ode"), default="sde", help="default %(default)s")
    ap.add_argument("--gamma", type=float, default=1.5, help="SDE churn (default %(default)s)")
    ap.add_argument("--w-sc", type=float, default=3.0, help="self-conditioning CFG scale (default %(default)s)")
    args = ap.parse_args()

    sys.path.insert(0, os.path.abspath(args.port_src))
    from modules.model import ELF as PortELF
    from utils import generation_utils as gu
    from utils import sampling_utils as su

    os.environ["ELF_FAST_BACKEND"] = "kernel"  # the fused path; fails clearly if the extension is not built
    torch.manual_seed(0)
    trained = bool(args.builtin or args.checkpoint)
    if trained:
        from elf_fast.checkpoint import load_checkpoint
        from elf_fast.generator import builtin_checkpoint

        model = load_checkpoint(args.checkpoint or builtin_checkpoint(), max_length=args.length)[0].float().eval()
    else:
        model = create_model(args.preset, latent_dim=args.latent_dim, vocab_size=args.vocab,
                             max_length=args.length).eval()
        randomise_zero_tensors(model, torch.Generator().manual_seed(2605))
    mc = model.config
    B, L, C = args.batch, args.length, mc.latent_dim
    cfg = SamplerConfig(steps=args.steps, sampler=args.sampler, gamma=args.gamma, w_sc=args.w_sc)

    # The port's model, same architecture and RoPE length (max_length = L: positions 0..L-1 on both
    # sides), loaded strictly from elf_fast's state dict.
    port = PortELF(text_encoder_dim=C, max_length=L, hidden_size=mc.hidden_size, depth=mc.depth,
                   num_heads=mc.num_heads, mlp_ratio=mc.mlp_ratio, bottleneck_dim=mc.bottleneck_dim,
                   num_time_tokens=4, num_self_cond_cfg_tokens=4, num_model_mode_tokens=4,
                   vocab_size=mc.vocab_size).eval()
    port.load_state_dict(model.state_dict(), strict=True)
    port_config = SimpleNamespace(t_eps=cfg.t_eps, self_cond_prob=0.5, num_self_cond_cfg_tokens=4,
                                  denoiser_noise_scale=cfg.sigma_n, denoiser_p_mean=cfg.p_mean,
                                  denoiser_p_std=cfg.p_std, use_bf16=False)
    port_sampling = SimpleNamespace(sampling_method=cfg.sampler, sde_gamma=cfg.gamma)

    def port_grid(seed):
        torch.manual_seed(seed)  # the port draws its grid from the global generator
        return su.get_sampling_steps(n_steps=cfg.steps, time_schedule="logit_normal",
                                     P_mean=port_config.denoiser_p_mean, P_std=port_config.denoiser_p_std)

    def port_loop(grid, z, gen):
        z = gu._generate_samples_single_batch(model=port, generator=gen, z=z, t_steps=grid, cond_seq=None,
                                              cond_seq_mask=None, config=port_config,
                                              sampling_config=port_sampling, cfg_scale=1.0,
                                              self_cond_cfg_scale=cfg.w_sc)
        ids = gu._dlm_decode_batch(z=z, model=port, t_final_val=grid[-1].item(), config=port_config,
                                   self_cond_cfg_scale=cfg.w_sc)
        return z, ids

    def run_port(seed=0):
        grid = port_grid(seed)
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn((B, L, C), generator=gen, dtype=torch.float32) * port_config.denoiser_noise_scale
        return port_loop(grid, z, gen)[1]

    def run_fused(m, grid=None, with_latents=False):
        z = sample_latents(m, B, L, cfg, seed=0, grid=grid, device="cpu")
        ids = decode(m, z, cfg.w_sc)
        return (z, ids) if with_latents else ids

    models = {"fused": model}
    if args.bf16:
        import copy

        models["fused-bf16"] = copy.deepcopy(model).set_block_dtype(torch.bfloat16)

    print(f"cpu: {cpu_model()}; {torch.get_num_threads()} torch threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); torch {torch.__version__}")
    print(f"sizes: {args.checkpoint or ('built-in checkpoint' if args.builtin else args.preset)} "
          f"(depth {mc.depth}, hidden {mc.hidden_size}), C {C}, V {mc.vocab_size}, batch {B} x {L} tokens, "
          f"{cfg.steps}-step {cfg.sampler.upper()}"
          + (f" gamma {cfg.gamma}" if cfg.sampler == "sde" else "")
          + f", w_sc {cfg.w_sc}, {'trained' if trained else 'random'} weights")

    # Same-computation check: the port on elf_fast's grid source (its own draw, handed to elf_fast)
    # and on elf_fast's Philox noise (the initial z at offset 0, SDE draw k at offset 1 + k).
    with torch.no_grad():
        grid = port_grid(0)
        z0 = philox_noise((B, L, C), 0, 0, cfg.sigma_n)
        draws = [philox_noise((B, L, C), 0, 1 + k, cfg.sigma_n) / cfg.sigma_n
                 for k in range(cfg.steps - 1 if cfg.sampler == "sde" else 0)]
        pinned = PinnedRandn(draws)
        su.torch = pinned
        try:
            z_port, ids_port = port_loop(grid, z0.clone(), torch.Generator())
        finally:
            su.torch = torch
        if pinned.queue:
            raise RuntimeError(f"the port left {len(pinned.queue)} of elf_fast's noise draws unused")
        for name, m in models.items():
            z, ids = run_fused(m, grid=grid.tolist(), with_latents=True)
            rel = ((z.float() - z_port).norm() / z_port.norm()).item()
            agree = (ids == ids_port).float().mean().item()
            print(f"check, {name} vs port on the same grid and noise (seed 0): latents relative difference "
                  f"{rel:.2e}, decoded tokens agreeing {100 * agree:.1f}% "
                  f"({ids_port.unique().numel()} distinct ids in the port's {ids_port.numel()})"
                  + (" (bf16 blocks: not the same computation)" if name == "fused-bf16" else ""))

    runs = {"port": lambda: run_port(0), **{k: (lambda m=m: run_fused(m)) for k, m in models.items()}}
    times = {impl: [] for impl in runs}
    for r in range(args.rounds + 2):  # the first two rounds warm up
        for impl in (list(runs) if r % 2 == 0 else list(runs)[::-1]):  # the order flips each round
            t0 = time.perf_counter()
            runs[impl]()
            times[impl].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[2:]) * 1e3 for k, v in times.items()}
    low = {k: min(v[2:]) * 1e3 for k, v in times.items()}
    for k in times:
        print(f"{k:10s} median {med[k]:8.1f} ms   min {low[k]:8.1f} ms   ({args.rounds} rounds)")
    for k in models:
        print(f"{k} vs port: {med['port'] / med[k]:.2f}x (medians), {low['port'] / low[k]:.2f}x (minima), "
              f"{torch.get_num_threads()} threads, cpu")


if __name__ == "__main__":
    main()
