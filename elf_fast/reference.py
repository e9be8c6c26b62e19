"""Pure-PyTorch references for elf_fast's fused operations.

These functions *define* what every kernel computes (docs/method.md §7). Tests and
benchmarks import them from here; nothing else re-implements them. They favour
clarity over speed: they build the concatenations and logits tensors the fused
kernels avoid.

Layouts follow the checkpoints (docs/method.md §8): ``nn.Linear`` weights are
(out, in); ``proj_kernel`` P is (H, C) and ``unembed_kernel`` U is (C, V), used
as ``h @ P`` and ``y @ U``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Floor of ``1 - t`` in the velocity ``v = (x_hat - z) / max(1 - t, t_eps)``.
T_EPS = 0.05
#: ``denoiser_noise_scale``: z_0 = sigma_n * eps.
SIGMA_N = 2.0

# Philox4x32-10 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# --------------------------------------------------------------------------- #
# 1. self-condition projection
# --------------------------------------------------------------------------- #
def selfcond_proj(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2):
    """``proj2(proj1(self_cond_proj([z, x_prev])))`` exactly as the port computes it.

    z, x_prev: (N, C) (``x_prev=None`` means zeros); w_sc: (C, 2C); b_sc: (C,);
    w_p1: (128, C); w_p2: (H, 128); b_p2: (H,). Returns (N, H) in z's dtype.
    """
    if x_prev is None:
        x_prev = torch.zeros_like(z)
    u = F.linear(torch.cat([z, x_prev], dim=-1), w_sc, b_sc)  # (N, C)
    return F.linear(F.linear(u, w_p1), w_p2, b_p2)  # (N, H)


def selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2):
    """:func:`selfcond_proj` with its first two maps folded into one (the inference form).

    ``m = w_p1 @ w_sc`` (R, 2C) and ``b1 = w_p1 @ b_sc`` (R,) (formed by
    :func:`elf_fast.ops.fold_selfcond_weights`); returns ``(z m_z^T + x_prev m_x^T + b1) w_p2^T + b_p2``
    with ``[m_z | m_x] = m``, (N, H) in z's dtype. ``x_prev=None`` means zeros (its term is skipped).
    """
    C = z.shape[-1]
    a = F.linear(z, m[:, :C], b1)  # (N, R)
    if x_prev is not None:
        a = a + F.linear(x_prev, m[:, C:])
    return F.linear(a, w_p2, b_p2)  # (N, H)


# --------------------------------------------------------------------------- #
# 2. counter-based RNG and the flow step
# --------------------------------------------------------------------------- #
def _mulhilo32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit halves of a * b for a uint32 constant and int64 tensor b < 2**32.

    int64 cannot hold a 64-bit product, so a is split in 16-bit limbs.
    """
    a_lo, a_hi = a & 0xFFFF, a >> 16
    p_lo = b * a_lo  # < 2**48
    p_hi = b * a_hi  # < 2**48
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on int64 tensors holding uint32 values; returns four such tensors."""
    for r in range(10):
        if r:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_normal(numel: int, seed: int, offset: int, device=None, index_base: int = 0) -> torch.Tensor:
    """Standard normals for global indices ``index_base .. index_base + numel - 1``, float32.

    Index e uses Philox4x32-10 with key ``(seed lo32, seed hi32)`` and counter
    ``(g lo32, g hi32, offset lo32, offset hi32)``, g = e // 4; the four outputs
    (x0..x3) of that call become lanes 0..3 by Box-Muller:
    ``u = ((x >> 9) + 0.5) * 2**-23`` (exact in float32, never 0 or 1),
    ``r = sqrt(-2 ln u_x0)``, ``th = 2 pi u_x1`` -> lanes ``r cos th``, ``r sin th``;
    likewise x2, x3 for lanes 2, 3. The value of an element depends only on
    (seed, offset, e), never on how a kernel is launched. ``index_base`` (a multiple of 4)
    lets a tensor hold a slice of a longer stream: the sampler gives the batch starting at
    sample b0 of (L, C) samples ``index_base = b0 L C``, so a sample's noise does not depend
    on the batch it is drawn in.
    """
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if index_base < 0 or index_base % 4:
        raise ValueError(f"index_base must be a multiple of 4 and >= 0, got {index_base}")
    groups = (numel + 3) // 4
    g = torch.arange(groups, dtype=torch.int64, device=device) + index_base // 4
    off = int(offset) & 0xFFFFFFFFFFFFFFFF
    sd = int(seed) & 0xFFFFFFFFFFFFFFFF
    x0, x1, x2, x3 = philox4x32(
        g & _MASK32,
        g >> 32,
        torch.full_like(g, off & _MASK32),
        torch.full_like(g, off >> 32),
        sd & _MASK32,
        sd >> 32,
    )

    def unif(x):
        return ((x >> 9).to(torch.float32) + 0.5) * (2.0**-23)

    two_pi = torch.tensor(2.0 * math.pi, dtype=torch.float32)
    r01 = torch.sqrt(-2.0 * torch.log(unif(x0)))
    th01 = two_pi.to(g.device) * unif(x1)
    r23 = torch.sqrt(-2.0 * torch.log(unif(x2)))
    th23 = two_pi.to(g.device) * unif(x3)
    out = torch.stack(
        [r01 * torch.cos(th01), r01 * torch.sin(th01), r23 * torch.cos(th23), r23 * torch.sin(th23)],
        dim=1,
    )
    return out.reshape(-1)[:numel]


def sde_alpha(gamma: float, t: float, t_next: float) -> float:
    """Churn factor of the SDE step: ``clip(1 - gamma (t_next - t), 0, 1)``."""
    return min(max(1.0 - gamma * (t_next - t), 0.0), 1.0)


def flow_step(
    z,
    x_c,
    x_u=None,
    cond_mask=None,
    x_cond=None,
    *,
    t: float,
    t_next: float,
    cfg: float = 1.0,
    alpha: float = 1.0,
    sigma_n: float = SIGMA_N,
    t_eps: float = T_EPS,
    seed: int = 0,
    offset: int = 0,
    index_base: int = 0,
):
    """All element-wise work of one sampler step (docs/method.md §5).

    z: (..., C) state at time t; x_c (and x_u for CFG): the network's x_hat of the
    conditional (unconditional) branch; cond_mask: bool (...) marking condition
    positions, whose clean embedding is x_cond (..., C).

    1. ``x = x_u + cfg (x_c - x_u)`` if x_u is given, else ``x = x_c``;
    2. ``v = (x - z) / max(1 - t, t_eps)``; ``z' = z + (t_next - t) v``;
    3. at condition positions ``x = x_cond`` and ``z' = x_cond`` (v = 0 there);
    4. if ``alpha < 1`` (the next step is an SDE step with back time
       ``alpha * t_next``): ``z' = alpha z' + (1 - alpha) sigma_n eps`` with eps from
       :func:`philox_normal` (seed, offset, index_base), then condition positions restored again.

    All arithmetic in float32. Returns ``(z_next, x_hat)`` in z's dtype: z_next is
    the input of the next network call (already noised when alpha < 1), x_hat
    the next self-conditioning input.
    """
    zf = z.float()
    x = x_c.float()
    if x_u is not None:
        xu = x_u.float()
        x = xu + cfg * (x - xu)
    inv = 1.0 / max(1.0 - t, t_eps)
    dt = t_next - t
    z_new = zf + dt * ((x - zf) * inv)
    if cond_mask is not None:
        m = cond_mask.unsqueeze(-1)
        xc = x_cond.float()
        x = torch.where(m, xc, x)
        z_new = torch.where(m, xc, z_new)
    if alpha < 1.0:
        eps = philox_normal(z.numel(), seed, offset, device=z.device, index_base=index_base).view(z.shape)
        z_new = alpha * z_new + ((1.0 - alpha) * sigma_n) * eps
        if cond_mask is not None:
            z_new = torch.where(m, xc, z_new)
    return z_new.to(z.dtype), x.to(z.dtype)


# --------------------------------------------------------------------------- #
# 3. decode head: unembed-argmax and linear cross-entropy
# --------------------------------------------------------------------------- #
def decode_logits(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias):
    """``gelu_tanh(h P + p) U + u`` in float32: (N, V). The tensor the kernels never build."""
    y = gelu_tanh(h.float() @ proj_kernel.float() + proj_bias.float())
    return y @ unembed_kernel.float() + unembed_bias.float()


def unembed_argmax(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias):
    """Token ids (int64, (N,)) of the largest decode logit and that logit (float32).

    Ties go to the lowest vocabulary index (``torch.argmax`` documents first occurrence).
    A NaN logit never wins: the id is the arg max of the row's other logits, and a row with no
    logit but NaN gets id 0 and maximum -inf (the kernels' running maximum ignores NaN).
    """
    logits = decode_logits(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias)
    logits = logits.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))  # in place: no copy
    ids = logits.argmax(dim=-1)
    return ids, logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def linear_cross_entropy(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, targets, mask=None, reduction="sum"):
    """Cross-entropy of the decode head: ``sum_i w_i CE(logits_i, targets_i)``.

    ``w_i`` is ``mask_i`` (bool or float weights, default 1) and 0 where
    ``targets_i < 0`` (ignored rows). ``reduction="mean"`` divides by ``sum w``
    (at least 1). Computed in float32 with the (N, V) logits materialised.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    logits = decode_logits(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias)
    ce = F.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    w = (targets >= 0).float()
    if mask is not None:
        w = w * mask.float()
    loss = (ce * w).sum()
    if reduction == "mean":
        loss = loss / w.sum().clamp_min(1.0)
    return loss


# --------------------------------------------------- transformer-block element-wise ops
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weight-only RMSNorm over the last dim, in float32, rounded once to x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2j, 2j+1): (a, b) -> (a cos - b sin, b cos + a sin).

    x: (..., T, hd); cos, sin: (T, hd / 2). Computed in float32, returned in float32.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)


def qk_norm_rope(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, num_heads: int, eps: float = 1e-6):
    """Attention inputs from the qkv projection's output.

    qkv: (B, T, 3 * H) laid out (3, heads, head_dim) along the last dim; q_weight,
    k_weight: (head_dim,); cos, sin: (T, head_dim / 2). q and k are RMS-normed over
    head_dim (float32) and rotated (:func:`apply_rope`); v is moved. Returns
    ``(q, k, v)``, each (B, heads, T, head_dim) in qkv's dtype, rounded once.
    """
    B, T, three_h = qkv.shape
    hd = three_h // (3 * num_heads)
    q, k, v = qkv.view(B, T, 3, num_heads, hd).permute(2, 0, 3, 1, 4)  # (B, h, T, hd)

    def norm_rotate(x, w):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
        return apply_rope(y, cos, sin).to(qkv.dtype)

    return norm_rotate(q, q_weight), norm_rotate(k, k_weight), v.contiguous()


def swiglu(u: torch.Tensor) -> torch.Tensor:
    """``silu(a) * b`` for ``a, b = u.chunk(2, -1)``, in float32, rounded once to u's dtype."""
    a, b = u.float().chunk(2, dim=-1)
    return (F.silu(a) * b).to(u.dtype)
