"""Muon (``torch.optim.Muon``) with its Newton-Schulz iterations in a chosen dtype.

``torch.optim.Muon`` always orthogonalises in bfloat16. On CPUs without bf16 arithmetic
(AVX2-only: no AVX512-BF16, no AMX) every bf16 matmul is emulated, and on such a machine the
iterations took 7 s of an 8 s ELF-T step. :class:`Muon` runs them in ``ns_dtype``:

- ``"auto"`` (default): bfloat16 on CUDA and on CPUs that advertise AVX512-BF16 or AMX-BF16
  (there it is torch's Muon, step for step), float32 on other CPUs;
- ``"bfloat16"``: always torch's Muon;
- ``"float32"``: the same iterations (coefficients, steps, normalisation) in float32; a more
  accurate orthogonalisation, so the weights differ from the bf16 run's after the first step.

The optimiser state (``momentum_buffer``) and param groups are torch's, so checkpoints load in
either class.
"""

from __future__ import annotations

import torch

NS_DTYPES = ("auto", "bfloat16", "float32")


def cpu_has_native_bf16() -> bool | None:
    """Whether bf16 matmuls run natively here: the CPU advertises bf16 arithmetic (AVX512-BF16 or
    AMX) and oneDNN will use it (False when oneDNN is capped below it, e.g. ``ONEDNN_MAX_CPU_ISA=AVX2``:
    torch then emulates bf16 GEMMs, ~100x slower); None where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return None
    if not flags:
        return None
    if not any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16")):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without this query: trust the flags
        return True


def resolve_ns_dtype(ns_dtype: str, device: torch.device) -> torch.dtype:
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"Muon ns_dtype must be one of {NS_DTYPES}, got {ns_dtype!r}")
    if ns_dtype == "auto":
        native = device.type != "cpu" or cpu_has_native_bf16() is not False
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, ns_dtype)


def newton_schulz(g: torch.Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation of a 2-D ``g``, computed in ``dtype``
    (bfloat16: the same operations as torch's)."""
    a, b, c = coefficients
    x = g.to(dtype)
    if g.size(0) > g.size(1):
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    if g.size(0) > g.size(1):
        x = x.T
    return x


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` whose Newton-Schulz runs in ``ns_dtype`` (see the module docstring)."""

    def __init__(self, params, *args, ns_dtype: str = "auto", **kwargs):
        super().__init__(params, *args, **kwargs)
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon ns_dtype must be one of {NS_DTYPES}, got {ns_dtype!r}")
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        from torch.optim._muon import _adjust_lr

        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p, grad, buf in zip(params, grads, bufs):
                if grad.ndim != 2:
                    raise ValueError("Param gradient must be a 2D matrix")
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                dtype = resolve_ns_dtype(self.ns_dtype, p.device)
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
