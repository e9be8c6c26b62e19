"""elf_fast's fused operations, dispatched to the compiled kernel or the reference.

Each op has one schema (``csrc/registration.cpp``), C++ and CUDA kernels, and
one pure-PyTorch reference (:mod:`elf_fast.reference`) that defines its meaning.
The functions here check arguments with the op's rule function in :mod:`elf_fast.op_rules`
(``ValueError`` naming the argument; the fake implementations below run the same rules),
make inputs contiguous (the kernels themselves reject non-contiguous tensors) and pick a path:

* ``backend="kernel"``: the compiled op ``torch.ops.elf_fast.<name>``; raises if
  it is not built for the tensor's device;
* ``backend="reference"``: the reference;
* ``backend="auto"`` (default): the kernel when built for the device, else the
  reference, with one warning per op and device;
* ``backend="emu"``: the CUDA kernel run by the SIMT emulator on CPU tensors
  (``torch.ops.elf_fast_emu.<name>``, a test build: :mod:`elf_fast.emulation`).

``backend=None`` reads ``ELF_FAST_BACKEND`` (default ``auto``). Importing this
module never touches the GPU: availability is read from the dispatcher's tables.
The ops carry fake (meta) implementations and, for the training ops, autograd
formulas, so ``torch.compile(fullgraph=True)`` traces code that calls them.
"""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext

import torch

from elf_fast import op_rules, reference

try:
    from elf_fast import _C  # noqa: F401  (loading it registers torch.ops.elf_fast.*)

    _LOAD_ERROR: str | None = None
except ImportError as exc:  # CPU-only checkout without a build, or an ABI mismatch
    _C = None
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"

OPS = ("selfcond_proj", "selfcond_proj_folded", "flow_step", "unembed_argmax", "linear_cross_entropy", "rms_norm", "qk_norm_rope", "swiglu")
# the block ops' backward kernels (CPU only), called by the autograd formulas registered below
BACKWARD_OPS = ("rms_norm_backward", "qk_norm_rope_backward", "swiglu_backward")
BACKENDS = ("auto", "kernel", "reference", "emu")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _registered(op: str, device_type: str) -> bool:
    key = _DISPATCH_KEYS.get(device_type)
    return (
        _C is not None
        and key is not None
        and torch._C._dispatch_has_kernel_for_dispatch_key(f"elf_fast::{op}", key)
    )


def _has_schema(qualified_name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(qualified_name, "")
    except RuntimeError:
        return False
    return True


if _C is not None:
    _STALE = [op for op in (*OPS, *BACKWARD_OPS) if not _has_schema(f"elf_fast::{op}")]
    if _STALE:
        raise ImportError(f"elf_fast._C was built from older sources (it lacks {', '.join(_STALE)}); rebuild it: "
                          "pip install --no-build-isolation -e .")

# Read once at import (plain dict lookups later keep torch.compile tracing free of graph breaks).
_AVAILABLE = {(op, dev): _registered(op, dev) for op in OPS for dev in _DISPATCH_KEYS}
_WARNED: set[tuple[str, str]] = set()


def kernel_available(op: str, device: str | torch.device = "cpu") -> bool:
    """Whether the compiled kernel of ``op`` is built for ``device`` (no GPU is touched)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; elf_fast ops are {OPS}")
    return _AVAILABLE.get((op, torch.device(device).type), False)


def build_info() -> dict:
    """What the loaded extension provides: load error (if any), CUDA build, kernels per device."""
    return {
        "extension_loaded": _C is not None,
        "load_error": _LOAD_ERROR,
        "cuda_built": bool(_C is not None and _C.cuda_built),
        "kernels": {f"{op}/{dev}": ok for (op, dev), ok in _AVAILABLE.items()},
    }


class BackendUnavailable(RuntimeError):
    """A forced back-end (``backend=`` or ``ELF_FAST_BACKEND``: kernel, emu) that is not built here."""


def _backend_choice(backend: str | None) -> str:
    """``backend``, or ELF_FAST_BACKEND (default ``auto``) when it is None."""
    return backend if backend is not None else os.environ.get("ELF_FAST_BACKEND", "auto")


def _kernel(op: str, device: torch.device, backend: str | None):
    """The compiled op to call for ``op`` on ``device`` under ``backend``, or None for the reference."""
    choice = _backend_choice(backend)
    if choice not in BACKENDS:
        where = "" if backend is not None else " (the environment variable ELF_FAST_BACKEND)"
        raise ValueError(f"backend must be one of {BACKENDS}, got {choice!r}{where}")
    if choice == "reference":
        return None
    if choice == "emu":
        return _emulated(op, device)
    if _AVAILABLE.get((op, device.type), False):
        return getattr(torch.ops.elf_fast, op)
    why = (
        f"the extension elf_fast._C did not load ({_LOAD_ERROR})"
        if _C is None
        else f"no {device.type} kernel was built (see setup.py: ELF_FAST_CUDA)"
    )
    if choice == "kernel":
        raise BackendUnavailable(f"elf_fast.{op}: backend='kernel' requested but {why}")
    if (op, device.type) not in _WARNED:
        _WARNED.add((op, device.type))
        warnings.warn(f"elf_fast.{op}: using the PyTorch reference on {device.type}: {why}", stacklevel=3)
    return None


def _emulated(op: str, device: torch.device):
    if device.type != "cpu":
        raise ValueError(f"elf_fast.{op}: backend='emu' runs the emulated CUDA kernel on CPU tensors, got {device}")
    from elf_fast import emulation

    if emulation.load() is None:
        raise BackendUnavailable(f"elf_fast.{op}: backend='emu' requested but {emulation.load_error()}")
    return getattr(torch.ops.elf_fast_emu, op)


# ----------------------------------------------------------------- helpers
def _contig(*ts):
    return tuple(None if t is None else t.contiguous() for t in ts)


def _needs_grad(*ts) -> bool:
    """Whether autograd will record a graph through an op on these inputs."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


# ------------------------------------------------------ 1. self-cond projection
def selfcond_proj(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2, *, backend: str | None = None):
    """``proj2(proj1(self_cond_proj([z, x_prev])))`` without the concatenation.

    z, x_prev: (..., C) (``x_prev=None``: zeros, skipped); w_sc: (C, 2C); b_sc: (C,);
    w_p1: (R, C); w_p2: (H, R); b_p2: (H,). Returns (..., H). Differentiable.
    """
    op_rules.selfcond_proj(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2)
    args = _contig(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2)
    kernel = _kernel("selfcond_proj", z.device, backend)
    if kernel is not None:
        return kernel(*args)
    return reference.selfcond_proj(*args)


def fold_selfcond_weights(w_sc, b_sc, w_p1):
    """``(m, b1) = (w_p1 @ w_sc, w_p1 @ b_sc)``: the weights of :func:`selfcond_proj_folded`.

    w_sc: (C, 2C); b_sc: (C,); w_p1: (R, C), one dtype and device. Returns m (R, 2C) and b1 (R,)
    in that dtype, fp32-accurate whatever the global matmul settings:

    * on CUDA the products are formed in float64 and rounded once (every product of two float32,
      bfloat16 or float16 values is exact in float64): an fp32 GEMM there would follow the global
      TF32 setting;
    * elsewhere (the CPU) in float32, exactly as :func:`selfcond_proj` forms them in-op (one fp32
      GEMM, then the cast), so on the CPU the folded inference path and the training op agree bit
      for bit.

    O(R C^2) work, once per weight version: :class:`elf_fast.model.ELF` caches the result for
    inference. Ambient autocast does not reach it.
    """
    op_rules.selfcond_weights(w_sc, b_sc, w_p1)
    dev = w_sc.device.type
    acc = torch.float64 if dev == "cuda" else torch.float32
    no_autocast = torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else nullcontext()
    with no_autocast:
        w1 = w_p1.to(acc)
        m = torch.mm(w1, w_sc.to(acc)).to(w_sc.dtype)
        b1 = torch.mv(w1, b_sc.to(acc)).to(w_sc.dtype)
    return m, b1


def selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2, *, backend: str | None = None):
    """:func:`selfcond_proj` for inference, with ``(m, b1) = fold_selfcond_weights(w_sc, b_sc, w_p1)``
    formed once: ``(z m_z^T + x_prev m_x^T + b1) w_p2^T + b_p2``, two GEMMs a call.

    z, x_prev: (..., C) (``x_prev=None``: zeros, skipped); m: (R, 2C); b1: (R,); w_p2: (H, R);
    b_p2: (H,). Returns (..., H). On CUDA its float32 GEMMs run as 3xTF32 on tensor cores, within
    ~1e-6 of fp32 whatever the global TF32 setting (docs/method.md §7.6); on the CPU, plain fp32.
    No backward kernel: when autograd needs a graph the reference runs (and autograd differentiates it).
    """
    op_rules.selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2)
    grad = _needs_grad(z, x_prev, m, b1, w_p2, b_p2)
    kernel = None if grad else _kernel("selfcond_proj_folded", z.device, backend)
    if kernel is None:
        return reference.selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2)
    return kernel(*_contig(z, x_prev, m, b1, w_p2, b_p2))


# ---------------------------------------------------------------- 2. flow step
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
    sigma_n: float = reference.SIGMA_N,
    t_eps: float = reference.T_EPS,
    seed: int = 0,
    offset: int = 0,
    index_base: int = 0,
    backend: str | None = None,
):
    """One sampler step's element-wise work in one pass; see :func:`elf_fast.reference.flow_step`.

    Returns ``(z_next, x_hat)`` in z's dtype. With ``alpha < 1`` z_next already
    carries the SDE noise for the next step (time ``alpha * t_next``); noise comes
    from Philox(seed, offset) at global indices ``index_base + e`` (a multiple of 4),
    identical on every launch configuration.
    ``flow_step(zeros, zeros, t=0, t_next=0, alpha=0, sigma_n=s)`` draws ``s * eps``.
    """
    op_rules.flow_step(z, x_c, x_u, cond_mask, x_cond, alpha=alpha, t_eps=t_eps, index_base=index_base, t=t,
                       t_next=t_next, cfg=cfg, sigma_n=sigma_n, seed=seed, offset=offset)
    tensors = _contig(z, x_c, x_u, cond_mask, x_cond)
    kernel = _kernel("flow_step", z.device, backend)
    if kernel is not None:
        return kernel(
            *tensors, float(t), float(t_next), float(cfg), float(alpha), float(sigma_n), float(t_eps),
            int(seed), int(offset), int(index_base),
        )
    return reference.flow_step(
        *tensors, t=t, t_next=t_next, cfg=cfg, alpha=alpha, sigma_n=sigma_n, t_eps=t_eps, seed=seed, offset=offset,
        index_base=index_base,
    )


# -------------------------------------------------------------- 3. decode head
def unembed_argmax(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, *, vocab_tile: int = 0,
                   backend: str | None = None):
    """Greedy decode: ``argmax_v (gelu_tanh(h P + p) U + u)_v`` without the (N, V) logits.

    h: (..., H). Returns ``(ids, max_logit)``: int64 and float32 of shape (...).
    Ties go to the lowest id. ``vocab_tile`` sets the kernel's vocabulary tile (0: automatic).
    """
    op_rules.unembed_argmax(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, vocab_tile)
    args = _contig(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias)
    kernel = _kernel("unembed_argmax", h.device, backend)
    if kernel is not None:
        return kernel(*args, int(vocab_tile))
    ids, best = reference.unembed_argmax(*(a.reshape(-1, a.shape[-1]) if i == 0 else a for i, a in enumerate(args)))
    return ids.view(h.shape[:-1]), best.view(h.shape[:-1])


def linear_cross_entropy(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, targets, mask=None, *,
                         reduction: str = "sum", chunk: int = 0, backend: str | None = None):
    """Decode-head cross-entropy ``sum_i w_i CE(logits_i, targets_i)`` without the (N, V) logits.

    h: (..., H); targets: (...) int (negative = ignored); mask: (...) bool or float
    weights. ``reduction="mean"`` divides by the summed weights. Differentiable in
    h and the four head parameters; gradients are computed chunk by chunk in the
    forward pass (``chunk`` rows at a time, 0: automatic) and scaled in backward.
    The chunk changes the summation order only, not the result beyond rounding. Automatic
    chunks bound the (rows, V) fp32 logits block: 16 MB on the CPU, 256 MiB on CUDA (about
    2k rows at V 32k; peak extra memory ~0.4 GB fp32 / ~0.6 GB bf16 at N 32768, V 32128,
    C 512, where the fp32 reference needs 8 GB and more).

    Negative target ids mark ignored rows; every other id must be < V, on rows the mask
    weights 0 too (the reference's rule: F.cross_entropy rejects them). The kernels check this as they read the ids, not
    before: the CPU kernel raises ``RuntimeError`` naming the id and V; on CUDA a bad id
    trips a device-side assert (which poisons the CUDA context; the emulator raises
    ``RuntimeError`` naming the condition). So the kernel path never syncs with the device
    (``reduction="mean"`` divides on the device too) and can be captured in a CUDA graph.

    Precision: the loss is float32 and the gradients, accumulated in float32, come back in the
    inputs' dtype. float32 inputs: float32 GEMMs (3xTF32 on CUDA, ~fp32-accurate). bf16/fp16
    inputs on CUDA: GEMMs in that dtype with fp32 output. bf16 inputs on the CPU: where bf16 is
    native (AVX512-BF16 / AMX, see :func:`elf_fast.muon.cpu_has_native_bf16`) the three GEMMs
    against ``unembed_kernel`` (logits, and the gradients of y and of the kernel) run in bf16
    (oneDNN, fp32 accumulation, output rounded to bf16; logits and dlogits are rounded to bf16,
    the log-softmax and loss stay float32); on other CPUs, or with ``ELF_FAST_LCE_CPU_BF16=0``,
    the bf16 values are upcast and every GEMM is float32. Other CPU inputs: float32 throughout.
    Ambient autocast changes none of this (the op's inner GEMMs are shielded from it);
    :meth:`elf_fast.model.ELF.decode_loss` passes bf16 under CPU bf16 autocast.
    """
    op_rules.linear_cross_entropy(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, targets, mask,
                                  reduction, chunk)
    kernel = _kernel("linear_cross_entropy", h.device, backend)
    if kernel is None:
        H = h.shape[-1]
        return reference.linear_cross_entropy(
            h.reshape(-1, H), proj_kernel, proj_bias, unembed_kernel, unembed_bias, targets.reshape(-1).long(),
            None if mask is None else mask.reshape(-1), reduction=reduction,
        )
    params = (proj_kernel, proj_bias, unembed_kernel, unembed_bias)
    compute_grad = _needs_grad(h, *params)
    tg = targets.reshape(-1).long().contiguous()
    weight = None if mask is None else mask.reshape(-1).to(torch.float32).contiguous()
    outs = kernel(*_contig(h, *params), tg, weight, compute_grad, int(chunk))
    loss = outs[0]
    if reduction == "mean":
        w = (tg >= 0).to(torch.float32)
        if weight is not None:
            w = w * weight
        loss = loss / w.sum().clamp_min(1.0)
    return loss


# ------------------------------------------- 4. transformer-block element-wise ops
# Without a graph to build, the kernel of the device (CPU, CUDA, or the emulation). With one
# (``_needs_grad``): on the CPU the kernel forward, whose registered autograd formula calls the
# CPU backward kernel (``<op>_backward``, recomputing the norm statistics from the saved inputs);
# on CUDA and under the emulation, which have no backward kernels, the reference, differentiated
# by autograd. ``backend="reference"`` (or ELF_FAST_BACKEND=reference) is the reference everywhere.
def _block_kernel(op: str, device: torch.device, backend: str | None, needs_grad: bool):
    if needs_grad and (device.type != "cpu" or _backend_choice(backend) == "emu"):
        return None
    return _kernel(op, device, backend)


def rms_norm(x, weight, eps: float = 1e-6, *, backend: str | None = None):
    """Weight-only RMSNorm over the last dim: ``x * rsqrt(mean(x^2) + eps) * weight``.

    x: (..., D) float32/bfloat16/float16; weight: (D,) any float dtype. Computed in
    float32, returned in x's dtype. One pass per row on the kernel path; under autograd
    on the CPU a fused backward kernel (weight's gradient summed in float32).
    """
    op_rules.rms_norm(x, weight, eps)
    kernel = _block_kernel("rms_norm", x.device, backend, _needs_grad(x, weight))
    if kernel is None:
        return reference.rms_norm(x, weight, eps)
    return kernel(x.contiguous(), weight.float().contiguous(), float(eps))


def qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads: int, eps: float = 1e-6, *,
                 backend: str | None = None):
    """q, k, v for attention from the qkv projection: QK-RMSNorm + interleaved RoPE in one pass.

    qkv: (B, T, 3 * H), laid out (3, heads, head_dim); q_weight, k_weight: (head_dim,);
    cos, sin: (T, head_dim / 2) float32. Returns three (B, heads, T, head_dim) tensors in
    qkv's dtype; see :func:`elf_fast.reference.qk_norm_rope`. Under autograd on the CPU a
    fused backward kernel gives qkv's gradient and the weights' (summed in float32); cos and
    sin get none (if they require grad, the reference runs).
    """
    op_rules.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads, eps)
    if _needs_grad(cos, sin):  # the kernels give cos and sin no gradient
        kernel = None
    else:
        kernel = _block_kernel("qk_norm_rope", qkv.device, backend, _needs_grad(qkv, q_weight, k_weight))
    if kernel is None:
        return reference.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads, eps)
    return kernel(*_contig(qkv, q_weight.float(), k_weight.float(), cos, sin), int(num_heads), float(eps))


def swiglu(u, *, backend: str | None = None):
    """``silu(a) * b`` for ``a, b = u.chunk(2, -1)``: (..., 2F) -> (..., F), float32 math
    (under autograd on the CPU, a fused backward kernel)."""
    op_rules.swiglu(u)
    kernel = _block_kernel("swiglu", u.device, backend, _needs_grad(u))
    if kernel is None:
        return reference.swiglu(u)
    return kernel(u.contiguous())


# ------------------------------------------- fake implementations and autograd
def register_python_side(ns: str) -> None:
    """Fake (meta) implementations and autograd formulas for the ops of library ``ns``:
    ``elf_fast`` (elf_fast._C) here, ``elf_fast_emu`` when the emulation module loads."""

    @torch.library.register_fake(f"{ns}::selfcond_proj")
    def _selfcond_proj_fake(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2):
        op_rules.selfcond_proj(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2)
        return z.new_empty((*z.shape[:-1], w_p2.shape[0]))

    @torch.library.register_fake(f"{ns}::selfcond_proj_backward")
    def _selfcond_proj_backward_fake(grad, z, x_prev, w_sc, b_sc, w_p1, w_p2):
        gx = torch.empty_like(z) if x_prev is not None else z.new_empty((0,))
        return (torch.empty_like(z), gx, torch.empty_like(w_sc), torch.empty_like(b_sc), torch.empty_like(w_p1),
                torch.empty_like(w_p2), w_p2.new_empty((w_p2.shape[0],)))

    def _selfcond_proj_setup(ctx, inputs, output):
        z, x_prev, w_sc, b_sc, w_p1, w_p2, _ = inputs
        ctx.has_x = x_prev is not None
        ctx.save_for_backward(z, x_prev if ctx.has_x else z.new_empty((0,)), w_sc, b_sc, w_p1, w_p2)

    def _selfcond_proj_backward(ctx, grad):
        z, x_prev, w_sc, b_sc, w_p1, w_p2 = ctx.saved_tensors
        gz, gx, gwsc, gbsc, gw1, gw2, gb2 = getattr(torch.ops, ns).selfcond_proj_backward(
            grad.contiguous(), z, x_prev if ctx.has_x else None, w_sc, b_sc, w_p1, w_p2
        )
        return gz, (gx if ctx.has_x else None), gwsc, gbsc, gw1, gw2, gb2

    torch.library.register_autograd(
        f"{ns}::selfcond_proj", _selfcond_proj_backward, setup_context=_selfcond_proj_setup
    )

    @torch.library.register_fake(f"{ns}::selfcond_proj_folded")
    def _selfcond_proj_folded_fake(z, x_prev, m, b1, w_p2, b_p2):
        op_rules.selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2)
        return z.new_empty((*z.shape[:-1], w_p2.shape[0]))

    @torch.library.register_fake(f"{ns}::flow_step")
    def _flow_step_fake(z, x_c, x_u, cond_mask, x_cond, t, t_next, cfg, alpha, sigma_n, t_eps, seed, offset,
                        index_base=0):
        op_rules.flow_step(z, x_c, x_u, cond_mask, x_cond, alpha=alpha, t_eps=t_eps, index_base=index_base, t=t,
                           t_next=t_next, cfg=cfg, sigma_n=sigma_n, seed=seed, offset=offset)
        return torch.empty_like(z), torch.empty_like(z)

    @torch.library.register_fake(f"{ns}::unembed_argmax")
    def _unembed_argmax_fake(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, vocab_tile):
        op_rules.unembed_argmax(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, vocab_tile)
        shape = h.shape[:-1]
        return h.new_empty(shape, dtype=torch.int64), h.new_empty(shape, dtype=torch.float32)

    @torch.library.register_fake(f"{ns}::linear_cross_entropy")
    def _linear_cross_entropy_fake(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, targets, weight,
                                   compute_grad, chunk):
        op_rules.linear_cross_entropy(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, targets, weight,
                                      chunk=chunk, flat_rows=True)
        loss = h.new_empty((), dtype=torch.float32)
        if not compute_grad:
            return (loss, *(h.new_empty((0,)) for _ in range(5)))
        return (loss, torch.empty_like(h), torch.empty_like(proj_kernel), torch.empty_like(proj_bias),
                torch.empty_like(unembed_kernel), torch.empty_like(unembed_bias))

    def _lce_setup(ctx, inputs, output):
        ctx.compute_grad = inputs[7]
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:])

    def _lce_backward(ctx, grad_loss, *_):
        if not ctx.compute_grad:
            raise RuntimeError(
                "elf_fast.linear_cross_entropy: called with compute_grad=False, so it has no gradients; "
                "use elf_fast.ops.linear_cross_entropy, which sets it when an input requires grad"
            )
        grads = tuple(g * grad_loss.to(g.dtype) for g in ctx.saved_tensors)
        return (*grads, None, None, None, None)

    torch.library.register_autograd(
        f"{ns}::linear_cross_entropy", _lce_backward, setup_context=_lce_setup
    )

    @torch.library.register_fake(f"{ns}::rms_norm")
    def _rms_norm_fake(x, weight, eps):
        op_rules.rms_norm(x, weight, eps)
        return torch.empty_like(x)

    @torch.library.register_fake(f"{ns}::qk_norm_rope")
    def _qk_norm_rope_fake(qkv, q_weight, k_weight, cos, sin, num_heads, eps):
        op_rules.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads, eps)
        B, T, three_h = qkv.shape
        shape = (B, num_heads, T, three_h // (3 * num_heads))
        return qkv.new_empty(shape), qkv.new_empty(shape), qkv.new_empty(shape)

    @torch.library.register_fake(f"{ns}::swiglu")
    def _swiglu_fake(u):
        op_rules.swiglu(u)
        return u.new_empty((*u.shape[:-1], u.shape[-1] // 2))

    # ---- the block ops' backward: the CPU kernels; elsewhere (a CUDA tensor passed to the raw
    # op, the emulation module's namespace), and for a differentiable backward (create_graph=True:
    # the backward kernels have no backward themselves), the reference's vector-Jacobian product
    @torch.library.register_fake(f"{ns}::rms_norm_backward")
    def _rms_norm_backward_fake(grad, x, weight, eps):
        return torch.empty_like(x), weight.new_empty((x.shape[-1],))

    @torch.library.register_fake(f"{ns}::qk_norm_rope_backward")
    def _qk_norm_rope_backward_fake(grad_q, grad_k, grad_v, qkv, q_weight, k_weight, cos, sin, num_heads, eps):
        return torch.empty_like(qkv), torch.empty_like(q_weight), torch.empty_like(k_weight)

    @torch.library.register_fake(f"{ns}::swiglu_backward")
    def _swiglu_backward_fake(grad, u):
        return torch.empty_like(u)

    lib = getattr(torch.ops, ns)

    def _has_backward_kernel(op: str, device: torch.device) -> bool:
        if torch.is_grad_enabled():  # create_graph=True
            return False
        key = _DISPATCH_KEYS.get(device.type)
        return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::{op}_backward", key)

    def _reference_vjp(fn, primals, cotangents):
        _, vjp = torch.func.vjp(fn, *primals)
        return vjp(cotangents)

    def _rms_norm_setup(ctx, inputs, output):
        x, weight, eps = inputs
        ctx.eps = eps
        ctx.save_for_backward(x, weight)

    def _rms_norm_backward(ctx, grad):
        x, weight = ctx.saved_tensors
        if _has_backward_kernel("rms_norm", x.device):
            gx, gw = lib.rms_norm_backward(grad.contiguous(), x, weight, ctx.eps)
        else:
            gx, gw = _reference_vjp(lambda x, w: reference.rms_norm(x, w, ctx.eps), (x, weight), grad)
        return gx, gw, None

    torch.library.register_autograd(f"{ns}::rms_norm", _rms_norm_backward, setup_context=_rms_norm_setup)

    def _qk_norm_rope_setup(ctx, inputs, output):
        qkv, q_weight, k_weight, cos, sin, num_heads, eps = inputs
        ctx.num_heads, ctx.eps = num_heads, eps
        ctx.save_for_backward(qkv, q_weight, k_weight, cos, sin)

    def _qk_norm_rope_backward(ctx, grad_q, grad_k, grad_v):
        qkv, q_weight, k_weight, cos, sin = ctx.saved_tensors
        if _has_backward_kernel("qk_norm_rope", qkv.device):
            gqkv, gwq, gwk = lib.qk_norm_rope_backward(
                grad_q.contiguous(), grad_k.contiguous(), grad_v.contiguous(), qkv, q_weight, k_weight, cos, sin,
                ctx.num_heads, ctx.eps,
            )
        else:
            gqkv, gwq, gwk = _reference_vjp(
                lambda x, wq, wk: reference.qk_norm_rope(x, wq, wk, cos, sin, ctx.num_heads, ctx.eps),
                (qkv, q_weight, k_weight), (grad_q, grad_k, grad_v),
            )
        return gqkv, gwq, gwk, None, None, None, None

    torch.library.register_autograd(
        f"{ns}::qk_norm_rope", _qk_norm_rope_backward, setup_context=_qk_norm_rope_setup
    )

    def _swiglu_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def _swiglu_backward(ctx, grad):
        (u,) = ctx.saved_tensors
        if _has_backward_kernel("swiglu", u.device):
            return lib.swiglu_backward(grad.contiguous(), u)
        return _reference_vjp(reference.swiglu, (u,), grad)[0]

    torch.library.register_autograd(f"{ns}::swiglu", _swiglu_backward, setup_context=_swiglu_setup)


if _C is not None:
    register_python_side("elf_fast")
