"""Sampling ELF (docs/method.md §5): ODE / SDE integration in embedding space, then one decode.

Every step is one network call (two branches batched into one call under CFG) followed by one
fused :func:`elf_fast.ops.flow_step`, which also injects the SDE noise for the *next* step, so
the state ``z`` handed to the network is always the one it should see. The last step of every
run is a plain ODE step; the final decode is a forward at t = 1 with mode tokens on, then the
fused ``unembed_argmax``.

Noise: Philox(seed, offset, index) inside ``flow_step`` — offset 0 is the initial noise, offset 1
the first step's churn, offset 2 + i the noise injected after step i; index is the element's
place in the run, sample ``first_sample + b`` of the batch starting at element
``(first_sample + b) L C`` — so sample i of a run depends only on (seed, i): the same whatever
the batch size, on the same device and back-end (when ``L C`` is a multiple of 4, as for every
real encoder width; otherwise samples are padded to the next multiple of 4 between batches).

:func:`compile_model` puts the network under ``torch.compile`` (whole graph, static shapes; the
fused ops are traced as custom ops). With ``mode="reduce-overhead"`` on CUDA each forward is
replayed from a CUDA graph, which removes the per-kernel launch cost of the step loop.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import torch

from elf_fast import ops, reference, validate
from elf_fast.model import ELF


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 32
    sampler: str = "sde"          # "sde" (churn gamma) or "ode" (Euler)
    gamma: float = 1.5            # SDE churn (docs/method.md §5: 1.5 at 32 steps, 1.0 at 64)
    w_sc: float = 3.0             # self-conditioning CFG scale, an input token of the network
    cfg: float = 1.0              # CFG scale for conditional models (1 = off)
    grid: str = "logit_normal"    # or "uniform"
    p_mean: float = -1.5
    p_std: float = 0.8
    sigma_n: float = reference.SIGMA_N
    t_eps: float = reference.T_EPS

    def __post_init__(self):
        if self.sampler not in ("sde", "ode"):
            raise ValueError(f"sampler must be 'sde' or 'ode', got {self.sampler!r}")
        if self.grid not in ("logit_normal", "uniform"):
            raise ValueError(f"grid must be 'logit_normal' or 'uniform', got {self.grid!r}")
        for name in ("steps", "gamma", "w_sc", "cfg"):  # their limits: elf_fast.validate.LIMITS
            object.__setattr__(self, name, validate.setting(name, getattr(self, name)))
        for name in ("p_mean", "p_std", "sigma_n", "t_eps"):
            object.__setattr__(self, name, validate.number(name, getattr(self, name)))
        if self.p_std <= 0 or self.sigma_n <= 0 or self.t_eps <= 0:
            raise ValueError("p_std, sigma_n and t_eps must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


#: The method's sampler defaults (docs/method.md §5), unconditional (False) and conditional (True).
METHOD_DEFAULTS = {False: {"steps": 32, "sampler": "sde", "gamma": 1.5, "w_sc": 3.0, "cfg": 1.0, "grid": "logit_normal"},
                   True: {"steps": 64, "sampler": "ode", "gamma": 1.5, "w_sc": 1.0, "cfg": 2.0, "grid": "logit_normal"}}


def sampler_settings(conditional: bool, recommended: dict | None = None, **given) -> SamplerConfig:
    """The sampler a run uses: each setting from ``given`` (None counts as not given), else
    ``recommended`` (a checkpoint header's ``sampler`` entry), else :data:`METHOD_DEFAULTS`.
    ``cfg`` is for conditional models only (ValueError when given otherwise). Any other
    :class:`SamplerConfig` field (``grid``, ...) may be given too."""
    given = {k: v for k, v in given.items() if v is not None}
    _check_settings(given, "")
    if not conditional and given.get("cfg", 1.0) != 1.0:
        raise ValueError("cfg applies to conditional checkpoints only")
    _check_settings(recommended or {}, f" (in the checkpoint's recommended sampler settings {recommended})")
    settings = {**METHOD_DEFAULTS[bool(conditional)], **(recommended or {}), **given}
    if not conditional:
        settings["cfg"] = 1.0
    try:
        return SamplerConfig(**settings)
    except TypeError as e:  # a keyword that is not a SamplerConfig field
        raise ValueError(f"not a sampler setting: {e}") from None


def _check_settings(settings: dict, source: str) -> None:
    """Each of ``settings`` on its own (the error says where a bad one came from)."""
    for k, v in settings.items():
        try:
            if k in validate.LIMITS:
                validate.setting(k, v)
            elif k in ("sampler", "grid"):
                SamplerConfig(**{k: v})
        except ValueError as e:
            raise ValueError(f"{e}{source}") from None


# torch.compile modes compile_model accepts ("reduce-overhead" adds CUDA graphs on CUDA).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_model(model: ELF, mode: str = "default", *, dynamic: bool | None = False) -> ELF:
    """Compile ``model``'s forward in place (``fullgraph=True``) and return it; in place, so its
    state dict keys and a DDP wrapper see the same module.

    With ``dynamic=False`` (sampling: fixed batch shapes) the first call at each new shape (and
    the first with and without ``x_prev``) compiles, which takes tens of seconds; later calls
    run the compiled graph. Training passes ``dynamic=None``: its self-conditioning sub-batches
    change size from step to step, so the batch dimension goes dynamic after the first
    recompile instead of compiling every size. Results match the eager forward to rounding
    (the inductor may fuse the reference ops differently).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    model.compile(fullgraph=True, dynamic=dynamic, mode=mode)
    return model


def _forward(model: ELF, *args, **kwargs):
    """``model(*args, **kwargs)``; when torch.compile's CUDA-graph trees are in use, first tells
    them that a new step begins, so replaying a graph may reuse the memory of the outputs of the
    previous one (which the sampler has consumed by then). Without compiled CUDA graphs (their
    module never imported) nothing is called, and torch._inductor is not imported for nothing."""
    if args[0].is_cuda and "torch._inductor.cudagraph_trees" in sys.modules:
        torch.compiler.cudagraph_mark_step_begin()
    return model(*args, **kwargs)


def time_grid(cfg: SamplerConfig, generator: torch.Generator | None = None) -> list[float]:
    """``[0, sorted(steps - 1 logit-normal draws), 1]`` or ``linspace(0, 1, steps + 1)``."""
    if cfg.grid == "uniform":
        return torch.linspace(0.0, 1.0, cfg.steps + 1, dtype=torch.float64).tolist()
    draws = torch.sigmoid(torch.randn(cfg.steps - 1, generator=generator, dtype=torch.float64) * cfg.p_std + cfg.p_mean)
    return [0.0, *sorted(draws.tolist()), 1.0]


def churn(cfg: SamplerConfig, grid: list[float]) -> list[float]:
    """alpha_i of each step: ``clip(1 - gamma (t_{i+1} - t_i), 0, 1)`` for SDE steps, 1 for ODE and the last step."""
    out = []
    for i in range(cfg.steps):
        sde = cfg.sampler == "sde" and i < cfg.steps - 1
        out.append(reference.sde_alpha(cfg.gamma, grid[i], grid[i + 1]) if sde else 1.0)
    return out


@torch.no_grad()
def sample_latents(model: ELF, batch: int, length: int, cfg: SamplerConfig, *, seed: int = 0,
                   grid: list[float] | None = None, x_cond: torch.Tensor | None = None,
                   cond_mask: torch.Tensor | None = None, device=None, progress=None, backend: str | None = None,
                   first_sample: int = 0) -> torch.Tensor:
    """Integrate the flow from noise to t = 1; returns z (B, L, C) float32.

    Conditional runs pass ``x_cond`` (B, L, C, clean embeddings) and ``cond_mask`` (B, L), the
    packed layout of docs/method.md §4.1: condition positions hold x_cond throughout, and the
    first step's self-conditioning input is x_cond there (zeros elsewhere), as in training;
    with ``cfg.cfg != 1`` an unconditional branch (condition positions of z and of the
    self-conditioning input zeroed) is batched with the conditional one and combined in
    flow_step.
    ``grid`` overrides the time grid (default: drawn from ``seed``). ``progress`` is called as
    ``progress(step)`` after each step. ``first_sample`` is the index in the run of the batch's
    first sample: its noise starts there, so a sample's noise does not depend on the batching.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    C = model.config.latent_dim
    if (x_cond is None) != (cond_mask is None):
        raise ValueError("'x_cond' and 'cond_mask' must be given together")
    if cond_mask is not None:
        cond_mask = cond_mask.to(device=device, dtype=torch.bool)
        x_cond = x_cond.to(device=device, dtype=torch.float32)
        if x_cond.shape != (batch, length, C) or cond_mask.shape != (batch, length):
            raise ValueError(f"x_cond / cond_mask must be {(batch, length, C)} / {(batch, length)}, got "
                             f"{tuple(x_cond.shape)} / {tuple(cond_mask.shape)}")
    use_cfg = cfg.cfg != 1.0
    if use_cfg and cond_mask is None:
        raise ValueError("cfg != 1 needs a condition (x_cond, cond_mask)")
    if grid is None:
        grid = time_grid(cfg, torch.Generator().manual_seed(seed))
    if len(grid) != cfg.steps + 1:
        raise ValueError(f"grid must have steps + 1 = {cfg.steps + 1} points, got {len(grid)}")
    alphas = churn(cfg, grid)
    if first_sample < 0:
        raise ValueError(f"first_sample must be >= 0, got {first_sample}")
    index_base = first_sample * (-(-length * C // 4) * 4)  # whole samples, rounded up to Philox's groups of 4
    step = dict(sigma_n=cfg.sigma_n, t_eps=cfg.t_eps, seed=seed, index_base=index_base, backend=backend)
    cond = (cond_mask, x_cond) if cond_mask is not None else (None, None)

    zeros = torch.zeros(batch, length, C, device=device)
    z, _ = ops.flow_step(zeros, zeros, None, *cond, t=0.0, t_next=0.0, alpha=0.0, offset=0, **step)  # sigma_n eps
    if alphas[0] < 1.0:  # churn of the first SDE step: x = z keeps v = 0
        z, _ = ops.flow_step(z, z, None, *cond, t=0.0, t_next=0.0, alpha=alphas[0], offset=1, **step)
    # The first self-conditioning input: "no prediction yet", i.e. the clean condition at
    # condition positions and zeros elsewhere (None: all zeros, the W_x half skipped).
    x_prev = None if cond_mask is None else torch.where(cond_mask[..., None], x_cond, 0.0)
    w = torch.full((batch,), cfg.w_sc, device=device)
    keep = None if cond_mask is None else (~cond_mask).unsqueeze(-1).float()
    for i in range(cfg.steps):
        t_cur = alphas[i] * grid[i]  # the SDE step starts from the backed-off time
        t = torch.full((batch,), t_cur, device=device)
        if use_cfg:
            zz = torch.cat([z, z * keep])
            xx = torch.cat([x_prev, x_prev * keep])
            out, _ = _forward(model, zz, torch.cat([t, t]), torch.cat([w, w]), x_prev=xx)
            x_c, x_u = out.chunk(2)
        else:
            x_c, _ = _forward(model, z, t, w, x_prev=x_prev)
            x_u = None
        a_next = alphas[i + 1] if i + 1 < cfg.steps else 1.0
        z, x_prev = ops.flow_step(z, x_c, x_u, *cond, t=t_cur, t_next=grid[i + 1], cfg=cfg.cfg, alpha=a_next,
                                  offset=2 + i, **step)
        if progress is not None:
            progress(i)
    return z


@torch.no_grad()
def decode(model: ELF, z: torch.Tensor, w_sc: float, *, backend: str | None = None) -> torch.Tensor:
    """The final decode: a forward at t = 1 on ``[z, 0]`` (zeros everywhere, condition positions
    included) with mode tokens on, then greedy ids (B, L)."""
    B = z.shape[0]
    ones = torch.ones(B, device=z.device)
    _, h = _forward(model, z, ones, ones * w_sc, x_prev=None, decode=True)
    return model.decode_ids(h, backend=backend)


def truncate_at_eos(ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Everything from the first EOS on becomes padding (the EOS itself too)."""
    after = (ids == eos_id).int().cumsum(-1) > 0
    return ids.masked_fill(after, pad_id)
