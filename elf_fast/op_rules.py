"""Each fused op's input rules, written once; a broken rule raises ``ValueError`` naming the argument.

Two callers run each rule function: the wrappers in :mod:`elf_fast.ops` (before they pick the
kernel or the reference, so both are checked) and the ops' fake implementations
(``register_python_side`` there), so that ``torch.compile`` and FakeTensor tracing report a bad
shape with the wrapper's message instead of failing later or not at all. The compiled kernels
check again in C++ (``csrc/checks.cpp``, ``RuntimeError``): they guard the raw
``torch.ops.elf_fast.*`` ops when they run.

The rules work on real tensors, on fake tensors and, under dynamic shapes, on symbolic sizes:
every rule goes through :func:`require` (``if`` appears only for an optional argument).
"""

from __future__ import annotations

import math
import numbers

import torch

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the range of the compiled ops' int arguments


def require(cond, message) -> None:
    """Raise ``ValueError(message())`` unless ``cond``.

    ``cond`` is a plain bool in eager mode (checked here: torch._check_value costs microseconds a
    call) or a SymBool on fake tensors with symbolic sizes, where :func:`torch._check_value` turns
    it into a shape guard, or a deferred runtime assert for a data-dependent size, instead of
    specialising. Under Dynamo (a wrapper traced by torch.compile) the Python branch is what Dynamo
    turns into a guard: it cannot trace torch._check_value with a message that reads tensors.
    """
    if isinstance(cond, bool) or torch.compiler.is_dynamo_compiling():
        if not cond:
            raise ValueError(message())
    else:
        torch._check_value(cond, message)


# ----------------------------------------------------------------- shared rules
def float_tensor(name: str, t, dtype=None, device=None) -> None:
    """``t`` is a float32/bfloat16/float16 tensor (of ``dtype`` and on ``device`` when given)."""
    require(isinstance(t, torch.Tensor), lambda: f"'{name}' must be a tensor, got {type(t).__name__}")
    require(t.dtype in FLOATS, lambda: f"'{name}' must be float32, bfloat16 or float16, got {t.dtype}")
    if dtype is not None:
        require(t.dtype == dtype, lambda: f"'{name}' has dtype {t.dtype}, expected {dtype} (like the other inputs)")
    if device is not None:
        require(t.device == device, lambda: f"'{name}' is on {t.device}, expected {device} (like the other inputs)")


def shape(name: str, t: torch.Tensor, expected) -> None:
    """``t.shape == expected``, compared size by size (each comparison may be symbolic)."""
    expected = tuple(expected)

    def message():
        return f"'{name}' must have shape {expected}, got {tuple(t.shape)}"

    require(t.dim() == len(expected), message)
    for got, want in zip(t.shape, expected):
        require(got == want, message)


def features(name: str, t: torch.Tensor, layout: str, even: bool = False) -> None:
    """``t`` is ``(..., F)`` with F > 0 (and even when ``even``); ``layout`` names it in the message."""

    def message():
        return f"'{name}' must be {layout}, got {tuple(t.shape)}"

    require(t.dim() >= 1, message)
    require(t.shape[-1] > 0, message)
    if even:
        require(t.shape[-1] % 2 == 0, message)


def matrix(name: str, t: torch.Tensor, layout: str, axis: int, size):
    """``t`` is 2-D with ``t.shape[axis] == size``; ``layout.format(size)`` names it in the message.
    Returns the message, for further rules on ``t``."""

    def message():
        return f"'{name}' must be {layout.format(size)}, got {tuple(t.shape)}"

    require(t.dim() == 2, message)
    require(t.shape[axis] == size, message)
    return message


def on_device(name: str, t: torch.Tensor, device) -> None:
    require(t.device == device, lambda: f"'{name}' is on {t.device}, expected {device}")


def per_row(name: str, t: torch.Tensor, h: torch.Tensor, flat_rows: bool) -> None:
    """``t`` holds one entry per row of ``h`` (..., H): shaped like the rows, or, with ``flat_rows``
    (the raw op, which takes them flattened), any shape with that many elements."""
    if not flat_rows:
        shape(name, t, h.shape[:-1])
        return
    n = math.prod(h.shape[:-1])
    require(t.numel() == n, lambda: f"'{name}' must have {n} elements (one per row of 'h'), got shape {tuple(t.shape)}")


# ----------------------------------------------------------------- one function per op
def _latents(z, x_prev) -> tuple[int, dict]:
    """z (..., C) and the optional x_prev of z's shape: returns C and z's dtype/device."""
    float_tensor("z", z)
    features("z", z, "(..., C) with C > 0")
    kw = dict(dtype=z.dtype, device=z.device)
    if x_prev is not None:
        float_tensor("x_prev", x_prev, **kw)
        shape("x_prev", x_prev, z.shape)
    return z.shape[-1], kw


def selfcond_proj(z, x_prev, w_sc, b_sc, w_p1, w_p2, b_p2) -> None:
    C, kw = _latents(z, x_prev)
    for name, t in (("w_sc", w_sc), ("b_sc", b_sc), ("w_p1", w_p1), ("w_p2", w_p2), ("b_p2", b_p2)):
        float_tensor(name, t, **kw)
    shape("w_sc", w_sc, (C, 2 * C))
    shape("b_sc", b_sc, (C,))
    matrix("w_p1", w_p1, "(R, {})", 1, C)
    matrix("w_p2", w_p2, "(H, {})", 1, w_p1.shape[0])
    shape("b_p2", b_p2, (w_p2.shape[0],))


def selfcond_weights(w_sc, b_sc, w_p1) -> None:
    """The weights :func:`elf_fast.ops.fold_selfcond_weights` folds: w_sc (C, 2C), b_sc (C,), w_p1 (R, C)."""
    float_tensor("w_sc", w_sc)
    require(w_sc.dim() == 2, lambda: f"'w_sc' must be (C, 2C), got {tuple(w_sc.shape)}")
    C = w_sc.shape[0]
    shape("w_sc", w_sc, (C, 2 * C))
    kw = dict(dtype=w_sc.dtype, device=w_sc.device)
    float_tensor("b_sc", b_sc, **kw)
    shape("b_sc", b_sc, (C,))
    float_tensor("w_p1", w_p1, **kw)
    matrix("w_p1", w_p1, "(R, {})", 1, C)


def selfcond_proj_folded(z, x_prev, m, b1, w_p2, b_p2) -> None:
    C, kw = _latents(z, x_prev)
    for name, t in (("m", m), ("b1", b1), ("w_p2", w_p2), ("b_p2", b_p2)):
        float_tensor(name, t, **kw)
    matrix("m", m, "(R, {})", 1, 2 * C)
    shape("b1", b1, (m.shape[0],))
    matrix("w_p2", w_p2, "(H, {})", 1, m.shape[0])
    shape("b_p2", b_p2, (w_p2.shape[0],))


def int64(name: str, v, low: int = INT64_MIN) -> None:
    """``v`` is an int the compiled ops take (64-bit, >= ``low``); a SymInt passes."""
    if isinstance(v, torch.SymInt):
        return
    require(isinstance(v, numbers.Integral) and not isinstance(v, bool),
            lambda: f"'{name}' must be an int, got {type(v).__name__}")
    require(int(v) >= low, lambda: f"'{name}' must be >= {low}, got {v}")
    require(int(v) <= INT64_MAX, lambda: f"'{name}' must be below 2**63 (a 64-bit int), got {v}")


def finite(name: str, v) -> None:
    """``v`` is a finite real number (NaN and inf are refused: kernels and reference would differ)."""
    if isinstance(v, (torch.SymFloat, torch.SymInt)):
        return
    # compared, not math.isfinite: Dynamo folds comparisons of constants but cannot trace isfinite
    require(isinstance(v, numbers.Real) and not isinstance(v, bool) and -math.inf < v < math.inf,
            lambda: f"'{name}' must be a finite number, got {v!r}")


def flow_step(z, x_c, x_u, cond_mask, x_cond, *, alpha: float, t_eps: float, index_base: int = 0,
              t: float = 0.0, t_next: float = 0.0, cfg: float = 1.0, sigma_n: float = 1.0, seed: int = 0,
              offset: int = 0) -> None:
    float_tensor("z", z)
    features("z", z, "(..., C) with C > 0")
    float_tensor("x_c", x_c, device=z.device)
    shape("x_c", x_c, z.shape)
    if x_u is not None:
        float_tensor("x_u", x_u, dtype=x_c.dtype, device=z.device)
        shape("x_u", x_u, z.shape)
    require((cond_mask is None) == (x_cond is None), lambda: "'cond_mask' and 'x_cond' must be given together")
    if cond_mask is not None:
        require(isinstance(cond_mask, torch.Tensor) and cond_mask.dtype == torch.bool,
                lambda: f"'cond_mask' must be a bool tensor, got {getattr(cond_mask, 'dtype', type(cond_mask))}")
        on_device("cond_mask", cond_mask, z.device)
        shape("cond_mask", cond_mask, z.shape[:-1])
        float_tensor("x_cond", x_cond, dtype=z.dtype, device=z.device)
        shape("x_cond", x_cond, z.shape)
    for name, v in (("t", t), ("t_next", t_next), ("cfg", cfg), ("sigma_n", sigma_n), ("t_eps", t_eps)):
        finite(name, v)
    require(0.0 <= alpha <= 1.0, lambda: f"'alpha' must be in [0, 1], got {alpha}")
    require(t_eps > 0.0, lambda: f"'t_eps' must be > 0, got {t_eps}")
    int64("seed", seed)
    int64("offset", offset)
    int64("index_base", index_base, 0)
    require(index_base >= 0 and index_base % 4 == 0,
            lambda: f"'index_base' must be a multiple of 4 and >= 0, got {index_base}")


def decode_head(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias) -> None:
    """The rules unembed_argmax and linear_cross_entropy share: h (..., H), P (H, C), p (C,), U (C, V), u (V,)."""
    float_tensor("h", h)
    features("h", h, "(..., H) with H > 0")
    kw = dict(dtype=h.dtype, device=h.device)
    for name, t in (("proj_kernel", proj_kernel), ("proj_bias", proj_bias),
                    ("unembed_kernel", unembed_kernel), ("unembed_bias", unembed_bias)):
        float_tensor(name, t, **kw)
    matrix("proj_kernel", proj_kernel, "({}, C)", 0, h.shape[-1])
    C = proj_kernel.shape[1]
    shape("proj_bias", proj_bias, (C,))
    message = matrix("unembed_kernel", unembed_kernel, "({}, V) with V > 0", 0, C)
    require(unembed_kernel.shape[1] > 0, message)
    shape("unembed_bias", unembed_bias, (unembed_kernel.shape[1],))


def unembed_argmax(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, vocab_tile: int) -> None:
    decode_head(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias)
    int64("vocab_tile", vocab_tile, 0)


def linear_cross_entropy(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias, targets, mask,
                         reduction: str = "sum", chunk: int = 0, *, flat_rows: bool = False) -> None:
    """``flat_rows``: the raw op's form, which takes targets and the weights (named ``weight``
    there) flattened, one per row of h; the wrapper takes them shaped like h's rows."""
    decode_head(h, proj_kernel, proj_bias, unembed_kernel, unembed_bias)
    require(isinstance(targets, torch.Tensor) and targets.dtype in (torch.int64, torch.int32),
            lambda: f"'targets' must be an int64 or int32 tensor, got {getattr(targets, 'dtype', type(targets))}")
    per_row("targets", targets, h, flat_rows)
    on_device("targets", targets, h.device)
    if mask is not None:
        name = "weight" if flat_rows else "mask"
        require(isinstance(mask, torch.Tensor), lambda: f"'{name}' must be a tensor, got {type(mask).__name__}")
        per_row(name, mask, h, flat_rows)
        on_device(name, mask, h.device)
    require(reduction in ("sum", "mean"), lambda: f"'reduction' must be 'sum' or 'mean', got {reduction!r}")
    int64("chunk", chunk, 0)


def rms_norm(x, weight, eps: float) -> None:
    float_tensor("x", x)
    features("x", x, "(..., D) with D > 0")
    float_tensor("weight", weight, device=x.device)
    shape("weight", weight, (x.shape[-1],))
    require(eps >= 0, lambda: f"'eps' must be >= 0, got {eps}")


def qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads: int, eps: float) -> None:
    float_tensor("qkv", qkv)
    require(qkv.dim() == 3, lambda: f"'qkv' must be (B, T, 3 * H), got {tuple(qkv.shape)}")

    def heads_message():
        return f"'num_heads' must be a positive int, got {num_heads!r}"

    require(isinstance(num_heads, (int, torch.SymInt)) and not isinstance(num_heads, bool), heads_message)
    require(num_heads > 0, heads_message)

    def layout_message():
        return f"'qkv' last dim {qkv.shape[2]} is not 3 * num_heads ({num_heads}) * an even head_dim"

    require(qkv.shape[2] % (3 * num_heads) == 0, layout_message)
    hd, T = qkv.shape[2] // (3 * num_heads), qkv.shape[1]
    require(hd % 2 == 0, layout_message)
    for name, t in (("q_weight", q_weight), ("k_weight", k_weight)):
        float_tensor(name, t, device=qkv.device)
        shape(name, t, (hd,))
    for name, t in (("cos", cos), ("sin", sin)):
        float_tensor(name, t, dtype=torch.float32, device=qkv.device)
        shape(name, t, (T, hd // 2))
    require(eps >= 0, lambda: f"'eps' must be >= 0, got {eps}")


def swiglu(u) -> None:
    float_tensor("u", u)
    features("u", u, "(..., 2F) with F > 0", even=True)
