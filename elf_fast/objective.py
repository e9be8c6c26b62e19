"""The ELF training objective (docs/method.md §4): one mini-batch -> (loss, stats).

Each example is either a *decode* row (probability ``decoder_prob``) or a *denoise* row:

* denoise rows: ``z = t x + (1 - t) sigma_n eps`` with logit-normal t; the network predicts
  ``x_hat`` and the loss is the velocity MSE ``mean_C (v_hat - v_target)^2`` per position,
  ``v = (. - z) / max(1 - t, t_eps)``. With probability ``sc_prob`` a row is self-conditioned:
  its ``x_prev`` half is ``x_u`` from a no-grad forward on ``[z, 0]``, and its target carries
  the trained-in self-conditioning guidance ``(1 - 1/w_sc) (v_c - v_u)``, ``v_c`` from a second
  no-grad forward on ``[z, x_u]``;
* decode rows: ``z_dec = lam x + (1 - lam) dec_noise_scale eps`` with a per-token logit-normal
  lam, fed at t = 1 with mode tokens on and a zero self-conditioning half; the loss is the
  decode head's cross-entropy, through the fused chunked op (never (N, V) logits).

Both kinds share one forward with grad on the mixed batch; the total is
``(sum of MSE terms + sum of CE terms) / number of loss positions``.

Choices docs/method.md leaves open, written down here:

* **Draws.** Every random number comes from ``generator`` in a fixed order
  (:func:`draw_noise`), full-size for every row whatever its kind, so a run is reproducible
  from (seed, step, rank) and a test can redraw the same numbers. One Gaussian tensor ``eps``
  serves as the denoise noise of denoise rows and as the decoder noise ``eps'`` of decode rows:
  a row is one kind or the other, so each row still sees independent noise.
* **w_sc inputs.** Every forward of a row (both no-grad forwards and the forward with grad)
  gets the row's sampled ``w_sc``, decode rows included: at sampling time the decode forward
  runs with the run's w_sc, which may be anywhere in the range. With ``self_cond_cfg=False``
  (plain self-conditioning, no guidance in the target) every row gets ``w_sc = 1``, the scale
  that means "no guidance".
* **Which rows the no-grad forwards see.** ``x_u`` and ``v_c`` only matter for self-conditioned
  denoise rows, so by default (``sc_subbatch=True``) both no-grad forwards run on those rows
  only (about 40% of the batch at the defaults): one small host sync for the row count, but
  about a quarter of the step's FLOPs saved. ``sc_subbatch=False`` runs them on the whole batch
  (static shapes, no sync). Likewise the decode head's CE runs on the decode rows only (one
  more small sync; the fused CE op syncs anyway for its target-range check), 5x less head work
  than masking the other rows out.
* **Condition positions** follow the reference port exactly (docs/method.md §4.1): they hold
  the clean x (zeros for a label-dropped row) in the denoiser input z and in every
  self-conditioning half of a denoise row — the "zero" half is the clean condition there and
  zeros elsewhere, in the no-grad forward and on the rows that do not self-condition, and x_u
  is restored there — while decode rows keep their noised z_dec at condition positions and an
  all-zero self-conditioning half. They never carry loss: they are removed from
  ``loss_mask`` here even if the caller left them in.
* **Arithmetic.** All element-wise work is float32, whatever autocast does to the blocks. In
  ``v_hat - v_target`` and ``v_c - v_u`` the z terms cancel exactly, so they are computed as
  ``(x_hat - x) / d`` and ``(x_c - x_u) / d``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from elf_fast import reference


@dataclass(frozen=True)
class ObjectiveConfig:
    decoder_prob: float = 0.2       # P(example is a decode row)
    p_mean: float = -1.5            # t = sigmoid(N(p_mean, p_std))
    p_std: float = 0.8
    sigma_n: float = reference.SIGMA_N  # denoiser noise scale: z_0 = sigma_n eps
    t_eps: float = reference.T_EPS      # floor of 1 - t in the velocity
    dec_lam_mean: float = 0.8       # per-token lam = sigmoid(N(dec_lam_mean, dec_lam_std))
    dec_lam_std: float = 0.8
    dec_noise_scale: float = 5.0    # 5.0 for OpenWebText, 1.0 for translation / summary
    sc_prob: float = 0.5            # P(denoise row is self-conditioned)
    w_sc_a: float = 1.5             # w_sc = a (b/a)^u - 1, u ~ U(0, 1): log-uniform on [a-1, b-1]
    w_sc_b: float = 6.0
    self_cond_cfg: bool = True      # the trained-in self-conditioning guidance in the target
    sc_subbatch: bool = True        # run the no-grad forwards on the self-conditioned rows only

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        for name in ("decoder_prob", "sc_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("p_std", "dec_lam_std", "dec_noise_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sigma_n <= 0:
            raise ValueError(f"sigma_n must be > 0, got {self.sigma_n}")
        if not 0.0 < self.t_eps <= 1.0:
            raise ValueError(f"t_eps must be in (0, 1], got {self.t_eps}")
        if self.w_sc_a <= 1.0 or self.w_sc_b <= 1.0:  # keeps w_sc > 0, so 1 / w_sc is finite
            raise ValueError(f"w_sc_a and w_sc_b must be > 1, got {self.w_sc_a}, {self.w_sc_b}")

    def to_dict(self) -> dict:
        return asdict(self)


class NoiseDraws(NamedTuple):
    """Every random number of one mini-batch (B examples, L positions, C channels)."""

    decode: torch.Tensor   # (B,) bool: decode row
    t: torch.Tensor        # (B,) float32: denoise time (decode rows run at t = 1 instead)
    w_sc: torch.Tensor     # (B,) float32: self-conditioning guidance scale
    use_sc: torch.Tensor   # (B,) bool: self-conditioning coin (only denoise rows act on it)
    lam: torch.Tensor      # (B, L) float32: decoder interpolation weight per token
    eps: torch.Tensor      # (B, L, C) float32: denoise noise (denoise rows) / decoder noise (decode rows)


def make_generator(seed: int, step: int, rank: int = 0, device="cpu") -> torch.Generator:
    """A generator on ``device`` seeded from (seed, step, rank), so any step of any rank replays.

    The three integers go through splitmix64 one after another: nearby (seed, step, rank)
    triples give unrelated seeds, and the triple (not a sum of its parts) decides the stream.
    """
    for name, value in (("seed", seed), ("step", step), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"'{name}' must be a non-negative int, got {value!r}")
    mask = (1 << 64) - 1
    state = 0
    for value in (seed, step, rank):
        state = (state ^ value) & mask
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state = z ^ (z >> 31)
    return torch.Generator(device=device).manual_seed(state)


def draw_noise(cfg: ObjectiveConfig, batch: int, length: int, channels: int, *, device=None,
               generator: torch.Generator | None = None) -> NoiseDraws:
    """Draw one mini-batch's random numbers from ``generator``, always in the same order."""
    kw = dict(device=device, generator=generator, dtype=torch.float32)
    decode = torch.rand(batch, **kw) < cfg.decoder_prob
    t = torch.sigmoid(torch.randn(batch, **kw) * cfg.p_std + cfg.p_mean)
    u = torch.rand(batch, **kw)
    w_sc = cfg.w_sc_a * (cfg.w_sc_b / cfg.w_sc_a) ** u - 1.0
    use_sc = torch.rand(batch, **kw) < cfg.sc_prob
    lam = torch.sigmoid(torch.randn(batch, length, **kw) * cfg.dec_lam_std + cfg.dec_lam_mean)
    eps = torch.randn(batch, length, channels, **kw)
    return NoiseDraws(decode, t, w_sc, use_sc, lam, eps)


def _check_mask(name: str, m, shape, device) -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        raise ValueError(f"'{name}' must be a tensor, got {type(m).__name__}")
    if m.dtype != torch.bool:
        raise ValueError(f"'{name}' must be a bool tensor, got {m.dtype}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"'{name}' must have shape {tuple(shape)} (B, L), got {tuple(m.shape)}")
    if m.device != device:
        raise ValueError(f"'{name}' is on {m.device}, expected {device} (like 'x')")
    return m


def _check_inputs(model, x, targets, loss_mask, cond_mask, cfg, generator) -> None:
    if not isinstance(cfg, ObjectiveConfig):
        raise ValueError(f"'cfg' must be an ObjectiveConfig, got {type(cfg).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
        raise ValueError(f"'x' must be a (B, L, C) float tensor, got {getattr(x, 'shape', type(x).__name__)}")
    B, L, C = x.shape
    if C != model.config.latent_dim:
        raise ValueError(f"'x' has {C} channels, the model expects latent_dim={model.config.latent_dim}")
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"'targets' must be an int64 tensor, got {getattr(targets, 'dtype', type(targets).__name__)}")
    if tuple(targets.shape) != (B, L):
        raise ValueError(f"'targets' must have shape {(B, L)} (B, L), got {tuple(targets.shape)}")
    if targets.device != x.device:
        raise ValueError(f"'targets' is on {targets.device}, expected {x.device} (like 'x')")
    _check_mask("loss_mask", loss_mask, (B, L), x.device)
    if cond_mask is not None:
        _check_mask("cond_mask", cond_mask, (B, L), x.device)
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"'generator' is on {generator.device}, expected the batch's device {x.device}")


def _restore(y, x, cond_mask):
    """Condition positions always hold the clean x: (B, L, C) -> (B, L, C)."""
    return y if cond_mask is None else torch.where(cond_mask[..., None], x, y)


def check_draws(d: NoiseDraws, B: int, L: int, C: int, device) -> NoiseDraws:
    """``d`` if it is a :class:`NoiseDraws` for a (B, L, C) batch on ``device``, else ValueError."""
    if not isinstance(d, NoiseDraws):
        raise ValueError(f"'draws' must be a NoiseDraws, got {type(d).__name__}")
    shapes = {"decode": (B,), "t": (B,), "w_sc": (B,), "use_sc": (B,), "lam": (B, L), "eps": (B, L, C)}
    for name, shape in shapes.items():
        v = getattr(d, name)
        want = torch.bool if name in ("decode", "use_sc") else torch.float32
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape or v.dtype != want or v.device != device:
            raise ValueError(f"draws.{name} must be a {want} tensor of shape {shape} on {device}, got "
                             f"{getattr(v, 'dtype', type(v).__name__)} {tuple(getattr(v, 'shape', ()))}")
    return d


def _zero_half(x, cond_mask):
    """The self-conditioning half that stands for "no previous prediction": the clean condition
    at condition positions, zeros elsewhere; None (no condition) means all zeros."""
    return None if cond_mask is None else torch.where(cond_mask[..., None], x, 0.0)


def elf_loss(model, x, targets, loss_mask, *, cond_mask=None, cfg: ObjectiveConfig = ObjectiveConfig(),
             generator: torch.Generator | None = None, draws: NoiseDraws | None = None):
    """The ELF loss of one mini-batch (docs/method.md §4) and detached statistics.

    model: :class:`elf_fast.model.ELF`; x: (B, L, C) clean normalised embeddings from the frozen
    encoder (condition positions hold the clean condition, or zeros for label-dropped examples);
    targets: (B, L) int64 token ids; loss_mask: (B, L) bool, the positions that carry loss;
    cond_mask: (B, L) bool condition positions (the packed layout, docs/method.md §4.1: the
    network gets no attention mask); generator: a ``torch.Generator`` on x's device (see
    :func:`make_generator`); ``draws`` instead of ``generator``: the batch's random numbers
    themselves (:class:`NoiseDraws`, as :func:`draw_noise` returns them), for replaying a
    batch exactly (the port-parity tests do).

    Returns ``(loss, stats)``: ``loss`` a scalar with grad; ``stats`` a dict of detached
    scalar tensors (no host sync): loss, mse (mean over denoise loss positions), ce (mean over
    decode loss positions), n_denoise_pos, n_decode_pos, frac_decode (fraction of examples that
    are decode rows) and frac_selfcond (fraction of examples that are self-conditioned denoise
    rows).
    """
    _check_inputs(model, x, targets, loss_mask, cond_mask, cfg, generator)
    B, L, C = x.shape
    if draws is not None:
        if generator is not None:
            raise ValueError("pass either 'generator' or 'draws', not both")
        d = check_draws(draws, B, L, C, x.device)
    else:
        d = draw_noise(cfg, B, L, C, device=x.device, generator=generator)
    x = x.detach().float()
    if cond_mask is not None:
        loss_mask = loss_mask & ~cond_mask  # condition positions never carry loss

    # Inputs of both kinds of row, for every row (B, L, C); each row uses one of them.
    tb = d.t[:, None, None]
    z = _restore(tb * x + (1 - tb) * cfg.sigma_n * d.eps, x, cond_mask)
    lam = d.lam[..., None]
    z_dec = lam * x + (1 - lam) * cfg.dec_noise_scale * d.eps  # left noised at condition positions too
    inv_d = 1.0 / (1 - tb).clamp_min(cfg.t_eps)  # (B, 1, 1): 1 / max(1 - t, t_eps)
    w_sc = d.w_sc if cfg.self_cond_cfg else torch.ones_like(d.w_sc)
    is_sc = d.use_sc & ~d.decode  # (B,) self-conditioned denoise rows

    # Self-conditioning half and guidance term, from no-grad forwards: x_u on the
    # self-conditioned rows, the zero half on the other denoise rows, zeros on decode rows.
    x_prev = guide = None
    if cfg.sc_prob > 0:
        x_prev, guide = _self_condition(model, x, z, d.t, w_sc, is_sc, cond_mask, cfg)
        half = _zero_half(x, cond_mask)
        if half is not None:  # denoise rows that do not self-condition
            x_prev = torch.where((~is_sc & ~d.decode)[:, None, None], half, x_prev)

    # One forward with grad on the mixed batch: decode rows get z_dec at t = 1, mode tokens on;
    # denoise rows z at t, mode off.
    z_in = torch.where(d.decode[:, None, None], z_dec, z)
    t_in = torch.where(d.decode, torch.ones_like(d.t), d.t)
    x_hat, h = model(z_in, t_in, w_sc, x_prev=x_prev, decode=d.decode)

    # Denoise rows: v_hat - target = (x_hat - z)/d - (x - z)/d - guide/d = (x_hat - x - guide)/d.
    err = x_hat.float() - x if guide is None else x_hat.float() - x - guide
    err = err * inv_d
    den_mask = loss_mask & ~d.decode[:, None]  # (B, L)
    mse_sum = (err.pow(2).mean(-1) * den_mask).sum()

    # Decode rows: CE of the decode head on those rows only (fused, chunked: no (N, V) logits).
    # The op always takes the head parameters, so they join the graph even with no decode row.
    dec_rows = d.decode.nonzero().squeeze(1)
    dec_mask = loss_mask.index_select(0, dec_rows)                                     # (B_dec, L)
    dec_targets = targets.index_select(0, dec_rows).long().masked_fill(~dec_mask, 0)  # ids off the mask are unused
    ce_sum = model.decode_loss(h.index_select(0, dec_rows), dec_targets, dec_mask, reduction="sum")

    return combine_losses(mse_sum, ce_sum, den_mask.sum(), dec_mask.sum(), d.decode, is_sc, "_pos")


def combine_losses(mse_sum, ce_sum, n_den, n_dec, decode, is_sc, unit: str = ""):
    """``(mse_sum + ce_sum) / (n_den + n_dec)`` and the detached statistics every objective logs:
    loss, mse and ce (means over their units), ``n_denoise<unit>`` / ``n_decode<unit>`` (the
    counts: positions for training, examples for distillation), frac_decode and frac_selfcond."""
    loss = (mse_sum + ce_sum) / (n_den + n_dec).clamp_min(1)
    with torch.no_grad():
        stats = {
            "loss": loss.detach(),
            "mse": mse_sum.detach() / n_den.clamp_min(1),
            "ce": ce_sum.detach() / n_dec.clamp_min(1),
            f"n_denoise{unit}": n_den,
            f"n_decode{unit}": n_dec,
            "frac_decode": decode.float().mean(),
            "frac_selfcond": is_sc.float().mean(),
        }
    return loss, stats


@torch.no_grad()
def _self_condition(model, x, z, t, w_sc, is_sc, cond_mask, cfg):
    """``(x_prev, guide)``, each (B, L, C) float32 and zero outside the ``is_sc`` rows.

    x_prev = x_u = net([z, zero half], t, w_sc) (:func:`_zero_half`), condition positions
    restored to x (as the sampler does); guide = (1 - 1/w_sc) (x_c - x_u) with
    x_c = net([z, x_u], t, w_sc), so that guide / max(1 - t, t_eps) = (1 - 1/w_sc) (v_c - v_u);
    None when ``self_cond_cfg`` is off.
    """
    rows = None
    if cfg.sc_subbatch:  # only the self-conditioned rows need x_u and x_c
        rows = is_sc.nonzero().squeeze(1)
        pick = lambda a: None if a is None else a.index_select(0, rows)  # noqa: E731
        x, z, t, w_sc, cond_mask = map(pick, (x, z, t, w_sc, cond_mask))
    if z.shape[0]:
        x_u = _restore(model(z, t, w_sc, x_prev=_zero_half(x, cond_mask))[0].float(), x, cond_mask)
        x_c = model(z, t, w_sc, x_prev=x_u)[0].float() if cfg.self_cond_cfg else None
    else:  # no self-conditioned row in this batch
        x_u = torch.zeros_like(z)
        x_c = torch.zeros_like(z) if cfg.self_cond_cfg else None
    # x_c is left as predicted at condition positions: they carry no loss.
    guide = None if x_c is None else (1 - 1 / w_sc)[:, None, None] * (x_c - x_u)
    if rows is not None:  # scatter back into full-batch tensors, zero elsewhere
        B = is_sc.shape[0]
        full = lambda a: None if a is None else a.new_zeros(B, *a.shape[1:]).index_copy_(0, rows, a)  # noqa: E731
        return full(x_u), full(guide)
    keep = is_sc[:, None, None]
    x_prev = torch.where(keep, x_u, 0.0)
    return x_prev, (None if guide is None else torch.where(keep, guide, 0.0))
