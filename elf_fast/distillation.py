"""Progressive distillation of ELF into few-step students (docs/method.md §9): one mini-batch -> (loss, stats).

A trained ELF (the *teacher*: frozen, EMA weights) is distilled into a *student* of the same
architecture that crosses a span ``s = 1 / student_steps`` of the flow in one forward. The
curriculum (:data:`CURRICULUM`) halves the student's steps round by round, 16 -> 1, while the
teacher takes 4 -> 64 Euler sub-steps over the span; the teacher is the original model in every
round (a runner chains the rounds; this module is one round's loss).

Each example is a *decode* row (probability ``decoder_prob``), trained exactly as in
:func:`elf_fast.objective.elf_loss` (z_dec at t = 1, mode tokens on, the decode head's fused
cross-entropy), or a *distillation* row:

* ``t_s = u (1 - s)`` with ``u`` from the logit-normal training schedule (``student_schedule``:
  :data:`STUDENT_SCHEDULES`, the port's default), ``t_t = t_s + s``,
  ``z_s = t_s x + (1 - t_s) sigma_n eps`` (condition positions hold x), an SC-CFG scale ``w``
  drawn as training's ``w_sc``; with probability ``self_cond_prob`` the self-conditioning half
  is the teacher's own prediction at ``(z_s, t_s)`` from a zero half, else zeros;
* the target (:func:`teacher_target`, (E9)-(E10)): the teacher integrated with Euler from
  ``t_s`` to ``t_t`` over ``teacher_substeps`` sub-steps, reaching ``z_t``, and the prediction
  at ``t_s`` whose one sampler step lands on ``z_t``:
  ``x_target = z_s + max(1 - t_s, t_eps) / (t_t - t_s) (z_t - z_s)``;
* the loss: the per-token MSE (mean over channels) of the student's ``x_hat`` at
  ``(z_s, t_s, w)`` against ``x_target``, averaged over the row's loss positions.

The total is the mean over examples (those with at least one loss position) of each example's
CE or MSE. Optimiser, clipping and EMA are training's.

Choices the method leaves open, written down here:

* **Draws.** Every random number comes from ``generator`` in a fixed order: first exactly
  :func:`elf_fast.objective.draw_noise` (decode coin, u, w, self-conditioning coin, lam, eps,
  all full-size), then the sub-step fractions (B, teacher_substeps - 1), then, for a
  ``student_schedule`` other than ``"logit_normal"``, B uniform draws that place t_s instead of
  u (u is still drawn, so the draws before stay the same). A run is reproducible
  from (seed, step, rank) via :func:`elf_fast.objective.make_generator`, and a decode-only
  batch sees the very draws (and loss) ``elf_loss`` would.
* **Interior sub-step times** of a row are ``t_s + r_j (t_t - t_s)``, ``r_j`` its sorted
  logit-normal draws (the same p_mean, p_std as u), so the teacher's sub-steps crowd the start
  of the span as the sampler's logit-normal grid crowds t = 0.
* **Per-row times and the integrator.** :func:`elf_fast.ops.flow_step` (the sampler's step)
  takes scalar times, but every row has its own t_s. ``integrator="fused"`` (default) runs
  the fused op once per group of rows sharing (t, t_next) (in practice one call per row and
  sub-step: B_denoise x n small launches per batch); ``integrator="vectorised"`` computes the
  same update for all rows at once with float32 torch ops, the op's arithmetic exactly (the
  scalars ``1 / max(1 - t, t_eps)`` and ``t_next - t`` formed in float64 and rounded to
  float32 once per row, then ``z + dt ((x - z) inv)`` one rounding per operation, as in
  ``csrc/flow_step_math.h``), so both give the same bits (tests/test_distillation.py checks
  it on the CPU). Prefer ``vectorised`` where launches are dear (a GPU at large batch).
* **The target's denominator** is the sampler's ``max(1 - t_s, t_eps)``, so one sampler (E6)
  step of the student from ``t_s`` with ``x_target`` reaches ``z_t`` exactly. It is
  ``1 - t_s`` whenever ``s >= t_eps`` (t_s <= 1 - s), i.e. in every curriculum round.
  With one sub-step the target is the teacher's prediction at t_s itself (returned as such,
  not through the formula); rows whose span is below ``span_floor`` (1e-3) fall back to it too.
* **Which rows the teacher sees**: the distillation rows only (decode rows need no target),
  and the self-conditioning forward only the self-conditioned ones; one small host sync each.
* **Condition positions** hold the clean x in z_s, z_dec, every teacher sub-step (the fused
  step restores them, as in sampling) and the self-conditioning half; the target equals x
  there. They never carry loss.
* **Arithmetic**: element-wise work in float32 whatever autocast does to the blocks; the
  teacher runs under ``torch.no_grad`` and is never written to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from elf_fast import ops, reference
from elf_fast.objective import (ObjectiveConfig, _check_inputs, _restore, _zero_half, combine_losses, draw_noise,  # noqa: F401
                                make_generator)

#: The curriculum's rounds: (student_steps, teacher_substeps); the teacher covers each student
#: span with 64 / student_steps Euler sub-steps, so every round's target is a 64-step teacher.
CURRICULUM: tuple[tuple[int, int], ...] = ((16, 4), (8, 8), (4, 16), (2, 32), (1, 64))

INTEGRATORS = ("fused", "vectorised")

#: Where a student's step starts (t_s) in training: ``"logit_normal"`` ``t_s = u (1 - s)``, u from
#: the training schedule (the port's default, ``pd_student_schedule``); ``"uniform"`` u uniform
#: on [0, 1) (the port's other choice); ``"grid"`` ``t_s = i s``, i uniform in {0, ..., k - 1}:
#: the only times where a k-step sampler on the uniform grid starts a step.
STUDENT_SCHEDULES = ("logit_normal", "uniform", "grid")


def student_sampler(steps: int, *, conditional: bool = False, schedule: str = "logit_normal") -> dict:
    """The sampler a ``steps``-step student's checkpoint header recommends (docs/method.md §9).

    ODE steps on the grid that matches where the student was trained: the uniform grid
    ``t_i = i / k`` for ``t_s`` on that grid (``schedule="grid"``: every step is one span it was
    trained to cross, from a time it was trained at), else (logit-normal or uniform ``t_s``) the
    logit-normal grid, which starts its steps where the training law has its mass; w_sc 2.5.
    Not the reference port's few-step SDE (gamma 1.5 on the logit-normal grid): measured on text
    (docs/distill_study.md, "Sampler on text"), that SDE cut every student's entropy by ~0.8
    nats (2.6 -> 1.8; real text 3.57) for a 7-13 % lower Gen. PPL, the teacher's too; ODE on the
    logit-normal grid kept the entropy and scored, on average over its random grids, as well as or
    better than ODE on the uniform grid. (``--sampler sde --gamma 1.5`` gives the port's setting.)
    Conditional students get cfg 1: their targets are the teacher's paths without guidance;
    they keep the conditional method's w_sc 1.
    """
    if schedule not in STUDENT_SCHEDULES:
        raise ValueError(f"schedule must be one of {STUDENT_SCHEDULES}, got {schedule!r}")
    grid = "uniform" if schedule == "grid" else "logit_normal"
    if conditional:
        return {"steps": steps, "sampler": "ode", "grid": grid, "w_sc": 1.0, "cfg": 1.0}
    return {"steps": steps, "sampler": "ode", "grid": grid, "w_sc": 2.5}


@dataclass(frozen=True)
class DistillConfig:
    student_steps: int = 16         # the student crosses s = 1 / student_steps per forward
    teacher_substeps: int = 4       # teacher Euler sub-steps over one student span
    decoder_prob: float = 0.2       # P(example is a decode row, trained as in elf_loss)
    p_mean: float = -1.5            # u = sigmoid(N(p_mean, p_std)); sub-step fractions likewise
    p_std: float = 0.8
    self_cond_prob: float = 0.5     # P(distillation row gets the teacher's prediction as its SC half)
    sigma_n: float = reference.SIGMA_N
    t_eps: float = reference.T_EPS
    span_floor: float = 1e-3        # spans t_t - t_s below this: target = teacher's direct prediction
    dec_lam_mean: float = 0.8       # decode rows as in ObjectiveConfig
    dec_lam_std: float = 0.8
    dec_noise_scale: float = 5.0
    w_sc_a: float = 1.5             # w = a (b/a)^u - 1: training's w_sc draw, [0.5, 5] at the defaults
    w_sc_b: float = 6.0
    integrator: str = "fused"       # "fused" (ops.flow_step per time group) or "vectorised" (same bits)
    student_schedule: str = "logit_normal"  # where t_s lies: STUDENT_SCHEDULES

    def __post_init__(self):
        for name in ("student_steps", "teacher_substeps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {self.integrator!r}")
        if self.student_schedule not in STUDENT_SCHEDULES:
            raise ValueError(f"student_schedule must be one of {STUDENT_SCHEDULES}, got {self.student_schedule!r}")
        try:  # the fields shared with training's objective follow its rules, checked there once
            self.objective_config()
        except (TypeError, ValueError) as e:
            raise ValueError(str(e).replace("sc_prob", "self_cond_prob")) from None
        if not 0.0 < self.span_floor < 1.0:
            raise ValueError(f"span_floor must be in (0, 1), got {self.span_floor}")

    @property
    def span(self) -> float:
        """s = 1 / student_steps: the part of [0, 1] one student forward crosses."""
        return 1.0 / self.student_steps

    def objective_config(self) -> ObjectiveConfig:
        """The training objective's config whose draws and decode rows this round shares."""
        return ObjectiveConfig(decoder_prob=self.decoder_prob, p_mean=self.p_mean, p_std=self.p_std,
                               sigma_n=self.sigma_n, t_eps=self.t_eps, dec_lam_mean=self.dec_lam_mean,
                               dec_lam_std=self.dec_lam_std, dec_noise_scale=self.dec_noise_scale,
                               sc_prob=self.self_cond_prob, w_sc_a=self.w_sc_a, w_sc_b=self.w_sc_b)

    def to_dict(self) -> dict:
        return asdict(self)


def curriculum(**overrides) -> list[DistillConfig]:
    """One :class:`DistillConfig` per round of :data:`CURRICULUM`, other fields from ``overrides``."""
    return [DistillConfig(student_steps=k, teacher_substeps=n, **overrides) for k, n in CURRICULUM]


class DistillDraws(NamedTuple):
    """Every random number of one distillation mini-batch, in draw order."""

    decode: torch.Tensor     # (B,) bool: decode row
    u: torch.Tensor          # (B,) float32 logit-normal; t_s = u (1 - s)
    w_sc: torch.Tensor       # (B,) float32: SC-CFG scale
    use_sc: torch.Tensor     # (B,) bool: self-conditioning coin (distillation rows act on it)
    lam: torch.Tensor        # (B, L) float32: decoder interpolation weight per token
    eps: torch.Tensor        # (B, L, C) float32: denoise noise / decoder noise
    fractions: torch.Tensor  # (B, n - 1) float32, sorted per row: interior sub-step times in the span
    t_s: torch.Tensor        # (B,) float32: each distillation row's start time (student_schedule)


def draw_distill_noise(cfg: DistillConfig, batch: int, length: int, channels: int, *, device=None,
                       generator: torch.Generator | None = None) -> DistillDraws:
    """:func:`elf_fast.objective.draw_noise` with ``cfg.objective_config()``, then the sub-step
    fractions, then (``student_schedule`` uniform or grid) the uniform draws that place t_s."""
    d = draw_noise(cfg.objective_config(), batch, length, channels, device=device, generator=generator)
    r = torch.randn(batch, cfg.teacher_substeps - 1, device=device, generator=generator, dtype=torch.float32)
    fractions = torch.sigmoid(r * cfg.p_std + cfg.p_mean).sort(dim=1).values
    if cfg.student_schedule == "logit_normal":
        t_s = d.t * (1.0 - cfg.span)
    else:
        v = torch.rand(batch, device=device, generator=generator, dtype=torch.float32)
        if cfg.student_schedule == "uniform":
            t_s = v * (1.0 - cfg.span)
        else:  # grid: i / k, i uniform in {0, ..., k - 1}
            k = cfg.student_steps
            t_s = (v * k).floor().clamp_max(k - 1) / k
    return DistillDraws(d.decode, d.t, d.w_sc, d.use_sc, d.lam, d.eps, fractions, t_s)


# ------------------------------------------------------------------ the teacher's target
def _euler_rows(z, x_hat, t, t_next, cond_mask, x_cond, t_eps):
    """The fused op's update with per-row times, vectorised: ``(z_next, x_hat)``, float32.

    Mirrors csrc/flow_step_math.h with alpha = 1: the per-row scalars are formed in float64
    and rounded to float32 once; then each float32 operation rounds once (no FMA), so the
    bits equal ``ops.flow_step`` called row by row.
    """
    t64, tn64 = t.double(), t_next.double()
    inv = (1.0 / (1.0 - t64).clamp_min(t_eps)).float()[:, None, None]
    dt = (tn64 - t64).float()[:, None, None]
    zf, x = z.float(), x_hat.float()
    z_next = zf + dt * ((x - zf) * inv)
    if cond_mask is not None:
        m = cond_mask[..., None]
        x = torch.where(m, x_cond, x)
        z_next = torch.where(m, x_cond, z_next)
    return z_next, x


def _euler_fused(z, x_hat, t_list, tn_list, cond_mask, x_cond, t_eps):
    """``ops.flow_step`` (alpha = 1) once per group of rows sharing (t, t_next): ``(z_next, x_hat)``."""
    groups: dict[tuple[float, float], list[int]] = {}
    for b, key in enumerate(zip(t_list, tn_list)):
        groups.setdefault(key, []).append(b)
    if len(groups) == 1:
        (t, tn), = groups
        return ops.flow_step(z, x_hat, None, cond_mask, x_cond, t=t, t_next=tn, alpha=1.0, t_eps=t_eps)
    z_next, x_next = torch.empty_like(z), torch.empty_like(z)
    for (t, tn), rows in groups.items():
        if len(rows) == 1:  # a view, no gather
            b = rows[0]
            sl = slice(b, b + 1)
            zn, xn = ops.flow_step(z[sl], x_hat[sl], None, None if cond_mask is None else cond_mask[sl],
                                   None if x_cond is None else x_cond[sl], t=t, t_next=tn, alpha=1.0, t_eps=t_eps)
            z_next[sl], x_next[sl] = zn, xn
            continue
        idx = torch.tensor(rows, device=z.device)
        pick = lambda a: None if a is None else a.index_select(0, idx)  # noqa: E731
        zn, xn = ops.flow_step(pick(z), pick(x_hat), None, pick(cond_mask), pick(x_cond), t=t, t_next=tn,
                               alpha=1.0, t_eps=t_eps)
        z_next.index_copy_(0, idx, zn)
        x_next.index_copy_(0, idx, xn)
    return z_next, x_next


def _check_times(name, t, B, device):
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or tuple(t.shape) != (B,):
        raise ValueError(f"'{name}' must be a (B,) = ({B},) float tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if t.device != device:
        raise ValueError(f"'{name}' is on {t.device}, expected {device} (like 'z_s')")


@torch.no_grad()
def teacher_target(teacher, z_s, t_s, t_t, w, x_prev=None, *, substeps: int, interior_times=None, cond_mask=None, x_cond=None, t_eps: float = reference.T_EPS, span_floor: float = 1e-3,
                   integrator: str = "fused") -> torch.Tensor:
    """The teacher's distillation target ``x_target`` (B, L, C) float32 (docs/method.md (E9)-(E10)).

    teacher: :class:`elf_fast.model.ELF` (run without grad, never modified); z_s: (B, L, C) the
    state at t_s; t_s, t_t: (B,) start and end of each row's span (t_s <= t_t); w: (B,) SC-CFG
    scale fed to every teacher forward; x_prev: (B, L, C) self-conditioning half of the first
    sub-step (None = zeros), later sub-steps chain the previous one's prediction;
    interior_times: (B, substeps - 1) the absolute interior times of each row, sorted and
    within [t_s, t_t] (None: uniform sub-steps); cond_mask / x_cond: (B, L) bool condition positions and their clean embeddings (B, L, C), pinned in the
    state at every sub-step and in the target.

    Each of the ``substeps`` Euler sub-steps is one teacher forward and the sampler's step
    (E6) with alpha = 1, through :func:`elf_fast.ops.flow_step` (``integrator="fused"``, rows
    grouped by their (t, t_next)) or the same arithmetic vectorised over per-row times
    (``"vectorised"``, identical bits); see the module docstring. From the reached ``z_t``:
    ``x_target = z_s + max(1 - t_s, t_eps) / (t_t - t_s) (z_t - z_s)``; with ``substeps == 1``,
    and on rows with ``t_t - t_s < span_floor``, the teacher's prediction at t_s instead.
    """
    if not isinstance(z_s, torch.Tensor) or not z_s.is_floating_point() or z_s.dim() != 3:
        raise ValueError(f"'z_s' must be a (B, L, C) float tensor, got {getattr(z_s, 'shape', type(z_s).__name__)}")
    B, L, C = z_s.shape
    dev = z_s.device
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"'substeps' must be an int >= 1, got {substeps!r}")
    if integrator not in INTEGRATORS:
        raise ValueError(f"'integrator' must be one of {INTEGRATORS}, got {integrator!r}")
    if not t_eps > 0:
        raise ValueError(f"'t_eps' must be > 0, got {t_eps}")
    for name, t in (("t_s", t_s), ("t_t", t_t), ("w", w)):
        _check_times(name, t, B, dev)
    if x_prev is not None and (not isinstance(x_prev, torch.Tensor) or tuple(x_prev.shape) != (B, L, C)):
        raise ValueError(f"'x_prev' must be None or (B, L, C) = {(B, L, C)}, got {getattr(x_prev, 'shape', x_prev)}")
    if (cond_mask is None) != (x_cond is None):
        raise ValueError("'cond_mask' and 'x_cond' must be given together")
    if cond_mask is not None:
        if cond_mask.dtype != torch.bool or tuple(cond_mask.shape) != (B, L):
            raise ValueError(f"'cond_mask' must be a (B, L) = {(B, L)} bool tensor, got {cond_mask.dtype} "
                             f"{tuple(cond_mask.shape)}")
        if tuple(x_cond.shape) != (B, L, C):
            raise ValueError(f"'x_cond' must be (B, L, C) = {(B, L, C)}, got {tuple(x_cond.shape)}")
        x_cond = x_cond.float()
    t_s, t_t = t_s.float(), t_t.float()
    if interior_times is None:
        frac = torch.arange(1, substeps, device=dev, dtype=torch.float32) / substeps
        interior_times = t_s[:, None] + frac[None] * (t_t - t_s)[:, None]
    elif not isinstance(interior_times, torch.Tensor) or tuple(interior_times.shape) != (B, substeps - 1):
        raise ValueError(f"'interior_times' must be (B, substeps - 1) = {(B, substeps - 1)}, got "
                         f"{getattr(interior_times, 'shape', type(interior_times).__name__)}")
    times = torch.cat([t_s[:, None], interior_times.to(device=dev, dtype=torch.float32), t_t[:, None]], 1)
    if B and not bool(((times[:, 1:] >= times[:, :-1]).all() & (times[:, 0] >= 0).all() & (times[:, -1] <= 1).all())):
        raise ValueError("times must satisfy 0 <= t_s <= interior_times (sorted) <= t_t <= 1 on every row")

    z = _restore(z_s.float(), x_cond, cond_mask)
    xp = None if x_prev is None else x_prev.float()
    x_direct = None
    time_lists = times.t().tolist() if integrator == "fused" else None  # one host sync: the op takes floats
    for i in range(substeps):
        x_hat = teacher(z, times[:, i], w, x_prev=xp)[0].float()
        if i == 0:
            x_direct = _restore(x_hat, x_cond, cond_mask)
            if substeps == 1:
                return x_direct
        if integrator == "fused":
            z, xp = _euler_fused(z, x_hat, time_lists[i], time_lists[i + 1], cond_mask, x_cond, t_eps)
        else:
            z, xp = _euler_rows(z, x_hat, times[:, i], times[:, i + 1], cond_mask, x_cond, t_eps)

    z0 = _restore(z_s.float(), x_cond, cond_mask)
    span = t_t - t_s
    scale = (1.0 - t_s).clamp_min(t_eps) / span.clamp_min(span_floor)
    x_target = z0 + scale[:, None, None] * (z - z0)
    return torch.where((span < span_floor)[:, None, None], x_direct, x_target)


# ------------------------------------------------------------------ the loss
def _check_teacher(student, teacher) -> None:
    if teacher is student:
        raise ValueError("'teacher' must be a separate (frozen) model, not the student itself")
    for name in ("latent_dim", "vocab_size"):
        a, b = getattr(teacher.config, name), getattr(student.config, name)
        if a != b:
            raise ValueError(f"'teacher' has {name}={a}, the student {b}: distillation needs the same latent space")


def distill_loss(student, teacher, x, targets, loss_mask, *, cond_mask=None,
                 cfg: DistillConfig = DistillConfig(), generator: torch.Generator | None = None):
    """One round's distillation loss of one mini-batch (docs/method.md §9) and detached statistics.

    Arguments as :func:`elf_fast.objective.elf_loss` (the batch dict training's ``make_batch``
    gives: x, targets, loss_mask, cond_mask), plus ``teacher``: the frozen
    :class:`elf_fast.model.ELF` (EMA weights) the ``student`` learns from; no gradient reaches
    it. ``generator``: a ``torch.Generator`` on x's device, e.g. ``make_generator(seed, step, rank)``.

    Returns ``(loss, stats)``: ``loss`` a scalar with grad (the mean over examples with a loss
    position of each example's mean CE or mean per-token MSE); ``stats`` detached scalar
    tensors: loss, mse (mean over distillation examples), ce (mean over decode examples),
    n_denoise (distillation examples with a loss position), n_decode (decode examples with one),
    frac_decode, frac_selfcond (fractions of all examples).
    """
    if not isinstance(cfg, DistillConfig):
        raise ValueError(f"'cfg' must be a DistillConfig, got {type(cfg).__name__}")
    _check_inputs(student, x, targets, loss_mask, cond_mask, cfg.objective_config(), generator)
    _check_teacher(student, teacher)
    B, L, C = x.shape
    d = draw_distill_noise(cfg, B, L, C, device=x.device, generator=generator)
    x = x.detach().float()
    if cond_mask is not None:
        loss_mask = loss_mask & ~cond_mask  # condition positions never carry loss
    s = cfg.span

    # Distillation rows: z_s at t_s (u (1 - s) by default); decode rows: z_dec as elf_loss builds it.
    t_s = d.t_s
    t_t = t_s + s
    tb = t_s[:, None, None]
    z_s = _restore(tb * x + (1 - tb) * cfg.sigma_n * d.eps, x, cond_mask)
    lam = d.lam[..., None]
    z_dec = lam * x + (1 - lam) * cfg.dec_noise_scale * d.eps  # left noised at condition positions (as elf_loss)
    is_sc = d.use_sc & ~d.decode

    # The teacher, on the distillation rows only: self-conditioning half, then the target.
    den_rows = (~d.decode).nonzero().squeeze(1)
    x_prev = None if cfg.self_cond_prob == 0 else torch.zeros_like(x)
    x_target = torch.zeros_like(x)
    if den_rows.numel():
        pick = lambda a: None if a is None else a.index_select(0, den_rows)  # noqa: E731
        xr, zr, tr, ttr, wr, cm = map(pick, (x, z_s, t_s, t_t, d.w_sc, cond_mask))
        xp_r = None
        if x_prev is not None:
            xp_r = _teacher_self_condition(teacher, xr, zr, tr, wr, is_sc.index_select(0, den_rows), cm)
            x_prev.index_copy_(0, den_rows, xp_r)
        interior = tr[:, None] + pick(d.fractions) * s
        tgt = teacher_target(teacher, zr, tr, ttr, wr, xp_r, substeps=cfg.teacher_substeps, interior_times=interior,
                             cond_mask=cm, x_cond=None if cm is None else xr, t_eps=cfg.t_eps,
                             span_floor=cfg.span_floor, integrator=cfg.integrator)
        x_target.index_copy_(0, den_rows, tgt)

    # One student forward with grad on the mixed batch (decode rows: z_dec at t = 1, mode on, zero half).
    z_in = torch.where(d.decode[:, None, None], z_dec, z_s)
    t_in = torch.where(d.decode, torch.ones_like(t_s), t_s)
    x_hat, h = student(z_in, t_in, d.w_sc, x_prev=x_prev, decode=d.decode)

    # Per-example means: each loss position of row b weighs 1 / (row b's loss positions).
    n_pos = loss_mask.sum(1)                                  # (B,)
    weight = loss_mask.float() / n_pos.clamp_min(1)[:, None]  # (B, L)
    den_w = weight * (~d.decode)[:, None]
    mse_sum = ((x_hat.float() - x_target).pow(2).mean(-1) * den_w).sum()

    dec_rows = d.decode.nonzero().squeeze(1)
    dec_mask = loss_mask.index_select(0, dec_rows)
    dec_targets = targets.index_select(0, dec_rows).long().masked_fill(~dec_mask, 0)
    ce_sum = student.decode_loss(h.index_select(0, dec_rows), dec_targets, weight.index_select(0, dec_rows),
                                 reduction="sum")

    has_pos = n_pos > 0
    return combine_losses(mse_sum, ce_sum, (has_pos & ~d.decode).sum(), (has_pos & d.decode).sum(), d.decode, is_sc)


@torch.no_grad()
def _teacher_self_condition(teacher, x, z, t, w, is_sc, cond_mask):
    """The self-conditioning half of each row, as in training (docs/method.md §4.1): the
    teacher's prediction on ``[z, zero half]`` (condition positions restored to x) on the
    ``is_sc`` rows, the zero half (the clean condition at condition positions, zeros
    elsewhere) on the others."""
    out = torch.zeros_like(z) if cond_mask is None else _zero_half(x, cond_mask)
    rows = is_sc.nonzero().squeeze(1)
    if rows.numel():
        pick = lambda a: None if a is None else a.index_select(0, rows)  # noqa: E731
        xr, cm = pick(x), pick(cond_mask)
        x_u = teacher(pick(z), pick(t), pick(w), x_prev=_zero_half(xr, cm))[0].float()
        out.index_copy_(0, rows, _restore(x_u, xr, cm))
    return out
