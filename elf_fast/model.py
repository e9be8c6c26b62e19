"""The ELF network (docs/method.md §3), with parameter names and shapes of the port (docs/method.md §8).

Forward pass: fused self-condition projection + bottleneck -> 12 prefix tokens (time, w_sc,
mode) + L text positions -> D pre-norm blocks (RMSNorm, attention with QK-norm and
interleaved RoPE on text positions, SwiGLU) -> drop the prefix -> ``final_layer`` gives
``x_hat``. The blocks' element-wise work runs through the fused ``rms_norm``,
``qk_norm_rope`` and ``swiglu`` ops: always on the CPU (under autograd with their fused
backward kernels), on CUDA when no gradient is needed (sampling, the no-grad
self-conditioning forwards of training) and through their references otherwise. The
decode head (``proj_kernel``, ``unembed_kernel``) runs through the fused ``unembed_argmax``
/ ``linear_cross_entropy`` ops and never builds (N, V) logits.

Choices docs/method.md leaves open, written down here:
* qkv output is laid out (3, heads, head_dim) along its last dim, as in timm/DiT;
* ``proj_kernel`` / ``unembed_kernel`` start xavier-uniform (they are linear maps), biases 0.

Attention goes through ``F.scaled_dot_product_attention``. On CUDA the back-end order is set
by ``ELF_FAST_SDPA``: ``cudnn`` (default) tries cuDNN attention first, then flash, memory-
efficient and math (the issue's H100 measurement at ELF-B shapes: cuDNN 317 TFLOP/s, flash
231); ``torch`` leaves PyTorch's own order (flash, efficient, math, cuDNN last). Not measured
by elf_fast on a GPU yet. The CPU is unaffected.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

from elf_fast import ops, reference, validate

NUM_PREFIX = 12  # time (4) + w_sc (4) + mode (4) tokens

# CUDA attention back-ends by ELF_FAST_SDPA, tried in this order (None: PyTorch's own order).
SDPA_ORDERS = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
              SDPBackend.MATH],
    "torch": None,
}


def sdpa_order() -> list | None:
    """The CUDA attention back-end order that ``ELF_FAST_SDPA`` (default ``cudnn``) selects."""
    choice = os.environ.get("ELF_FAST_SDPA", "cudnn")
    if choice not in SDPA_ORDERS:
        raise ValueError(f"ELF_FAST_SDPA must be one of {sorted(SDPA_ORDERS)}, got {choice!r}")
    return SDPA_ORDERS[choice]


@dataclass(frozen=True)
class ELFConfig:
    latent_dim: int = 512        # C: the encoder's embedding width
    hidden_size: int = 768       # H
    depth: int = 12              # D
    num_heads: int = 12
    vocab_size: int = 32128      # V
    max_length: int = 1024       # text positions the RoPE table covers
    bottleneck_dim: int = 128
    mlp_ratio: float = 4.0
    freq_dim: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("latent_dim", "hidden_size", "depth", "num_heads", "vocab_size", "max_length", "bottleneck_dim",
                     "freq_dim"):  # bounded far above any real model: a typo fails here, not in an allocation
            object.__setattr__(self, name, validate.integer(f"model.{name}", getattr(self, name), 1,
                                                            1 << 22 if name != "depth" else 4096))
        for name in ("mlp_ratio", "rope_theta", "norm_eps"):
            object.__setattr__(self, name, validate.number(f"model.{name}", getattr(self, name), 0.0, 1e12,
                                                           low_open=True))
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must split into {self.num_heads} heads of even size")
        for name in ("latent_dim", "depth", "vocab_size", "max_length", "bottleneck_dim", "freq_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(int(self.mlp_ratio * self.hidden_size) * 2 / 3)

    def to_dict(self) -> dict:
        return asdict(self)


#: name -> architecture (docs/method.md §3); C, V and max_length come from the encoder and data.
PRESETS: dict[str, dict] = {
    "ELF-B": dict(depth=12, hidden_size=768, num_heads=12),
    "ELF-M": dict(depth=24, hidden_size=1056, num_heads=16),
    "ELF-L": dict(depth=32, hidden_size=1280, num_heads=16),
    "ELF-T": dict(depth=4, hidden_size=256, num_heads=4),   # tiny, for CPU work and tests
    "ELF-XS": dict(depth=4, hidden_size=128, num_heads=2),  # the built-in CPU-trained checkpoint
}


def preset_config(name: str, **overrides) -> ELFConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return ELFConfig(**{**PRESETS[name], **overrides})


def create_model(name: str, **overrides) -> "ELF":
    """``create_model("ELF-B", latent_dim=512, vocab_size=32128)``."""
    return ELF(preset_config(name, **overrides))


# ----------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    """Weight-only RMSNorm computed in float32 (eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the scalar itself (not x1000), then Linear-SiLU-Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp_0 = nn.Linear(freq_dim, hidden)
        self.mlp_2 = nn.Linear(hidden, hidden)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, H)
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        w = self.mlp_0.weight
        return self.mlp_2(F.silu(self.mlp_0(emb.to(w.dtype))))


def rope_table(cfg: ELFConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (12 + max_length, head_dim / 2): prefix rows unrotated (1, 0)."""
    hd = cfg.head_dim
    theta = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd)  # (hd/2,)
    pos = torch.arange(cfg.max_length, dtype=torch.float64, device=device)
    ang = pos[:, None] * theta[None]
    cos = torch.cat([torch.ones(NUM_PREFIX, hd // 2, dtype=torch.float64, device=device), ang.cos()])
    sin = torch.cat([torch.zeros(NUM_PREFIX, hd // 2, dtype=torch.float64, device=device), ang.sin()])
    return cos.float(), sin.float()


class Attention(nn.Module):
    def __init__(self, cfg: ELFConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x, cos, sin, attn_mask=None):
        B, T, H = x.shape
        q, k, v = ops.qk_norm_rope(self.qkv(x), self.q_norm.weight, self.k_norm.weight, cos, sin,
                                   self.num_heads, self.q_norm.eps)  # (B, h, T, hd) each
        order = sdpa_order() if q.is_cuda else None
        if order is None and q.dtype == torch.bfloat16 and torch.is_grad_enabled() and (
                q.requires_grad or k.requires_grad or v.requires_grad):
            # CPU training under bf16 autocast: ATen's CPU flash attention has a slow bf16 backward
            # (fwd+bwd 19-27 ms against 6-7 ms in float32 at 64 x 2 heads x 64-76 positions x 64, one
            # thread): attend in float32, which is also the more accurate, and round once (autocast,
            # which would cast the inputs back to bf16, is off around the call)
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
            out = out.to(q.dtype)
        elif order is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:  # all four back-ends stay enabled; only the order in which they are tried changes
            with sdpa_kernel(order, set_priority=True):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, T, H))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ELFConfig):
        super().__init__()
        self.w12 = nn.Linear(cfg.hidden_size, 2 * cfg.mlp_hidden)
        self.w3 = nn.Linear(cfg.mlp_hidden, cfg.hidden_size)

    def forward(self, x):
        return self.w3(ops.swiglu(self.w12(x)))


class Block(nn.Module):
    def __init__(self, cfg: ELFConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, attn_mask=None):
        x = x + self.attn(self.norm1(x), cos, sin, attn_mask)
        return x + self.mlp(self.norm2(x))


class TextProj(nn.Module):
    def __init__(self, cfg: ELFConfig):
        super().__init__()
        self.proj1 = nn.Linear(cfg.latent_dim, cfg.bottleneck_dim, bias=False)
        self.proj2 = nn.Linear(cfg.bottleneck_dim, cfg.hidden_size)


class FinalLayer(nn.Module):
    def __init__(self, cfg: ELFConfig):
        super().__init__()
        self.norm_final = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.linear = nn.Linear(cfg.hidden_size, cfg.latent_dim)

    def forward(self, x):
        return self.linear(self.norm_final(x))


class FoldedSelfCondCache:
    """``(m, b1) = ops.fold_selfcond_weights(w_sc, b_sc, w_p1)``, kept while those weights are unchanged.

    The key is, per weight, ``(_version, data_ptr(), device, dtype, shape, stride)``: an in-place
    update (optimizer step, ``load_state_dict``, ``.copy_`` under no_grad) bumps ``_version``; a
    ``.to(device / dtype)`` or ``load_state_dict(assign=True)`` gives a new storage, device or dtype.
    The cache holds detached aliases of the weights it folded, so their storages stay alive and
    no later tensor can reuse their addresses (a new storage always has a new ``data_ptr``).
    In-place writes that bypass the version counter are not seen: writes through ``.data`` and
    the fused optimizers (``torch.optim.AdamW(fused=True)`` and the like: torch 2.14 does not bump
    ``_version`` for them) -- :class:`ELF` uses the cache only in eval mode and clears it on every
    ``train()`` / ``eval()``; after such a write in eval mode call :meth:`ELF.clear_selfcond_cache`.
    Not part of the state dict; a deep copy or pickle of the model starts with an empty cache.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self._key = self._value = self._sources = None

    @staticmethod
    def _key_of(weights):
        return tuple((t._version, t.data_ptr(), t.device, t.dtype, tuple(t.shape), t.stride()) for t in weights)

    def get(self, w_sc, b_sc, w_p1):
        """The folded weights for these tensors, folding them again if anything changed; None for
        inference tensors (created under ``torch.inference_mode``, they have no version counter)."""
        weights = (w_sc, b_sc, w_p1)
        if any(t.is_inference() for t in weights):
            return None
        key = self._key_of(weights)
        if key != self._key:
            with torch.no_grad():
                value = ops.fold_selfcond_weights(w_sc, b_sc, w_p1)
            self._key, self._value = key, value
            self._sources = tuple(t.detach() for t in weights)  # keeps the storages (and addresses) alive
        return self._value

    def __reduce__(self):  # deepcopy and pickle give an empty cache
        return type(self), ()


# ------------------------------------------------------------------ network
class ELF(nn.Module):
    def __init__(self, cfg: ELFConfig):
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False  # recompute block activations in backward (saves memory)
        H, C, V = cfg.hidden_size, cfg.latent_dim, cfg.vocab_size
        self.t_emb_tokens = nn.Parameter(torch.zeros(1, 4, H))
        self.self_cond_cfg_tokens = nn.Parameter(torch.zeros(1, 4, H))
        self.mode_tokens = nn.Parameter(torch.zeros(1, 4, H))
        self.proj_kernel = nn.Parameter(torch.zeros(H, C))
        self.proj_bias = nn.Parameter(torch.zeros(C))
        self.unembed_kernel = nn.Parameter(torch.zeros(C, V))
        self.unembed_bias = nn.Parameter(torch.zeros(V))
        self.self_cond_proj = nn.Linear(2 * C, C)
        self.text_proj = TextProj(cfg)
        self.t_embedder = TimestepEmbedder(H, cfg.freq_dim)
        self.self_cond_cfg_embedder = TimestepEmbedder(H, cfg.freq_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        cos, sin = rope_table(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._selfcond_cache = FoldedSelfCondCache()  # inference only: see _folded_selfcond_weights
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The init of docs/method.md §3: Linear xavier-uniform / bias 0; embedder MLPs and tokens N(0, 0.02); final linear 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in (self.t_embedder, self.self_cond_cfg_embedder):
            for lin in (emb.mlp_0, emb.mlp_2):
                nn.init.normal_(lin.weight, std=0.02)
        for tok in (self.t_emb_tokens, self.self_cond_cfg_tokens, self.mode_tokens):
            nn.init.normal_(tok, std=0.02)
        nn.init.xavier_uniform_(self.proj_kernel)
        nn.init.xavier_uniform_(self.unembed_kernel)
        nn.init.zeros_(self.proj_bias)
        nn.init.zeros_(self.unembed_bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def train(self, mode: bool = True) -> "ELF":
        self._selfcond_cache.clear()  # training's writes may bypass the version counter (fused optimizers)
        return super().train(mode)

    def clear_selfcond_cache(self) -> None:
        """Drop the cached folded self-condition weights (they are formed again on the next inference
        forward). Needed only after an eval-mode weight write that bypasses ``_version``."""
        self._selfcond_cache.clear()

    def _folded_selfcond_weights(self, *inputs):
        """``(m, b1)`` for ``ops.selfcond_proj_folded``, from the cache, when the forward may use it:
        in eval mode, outside torch.compile tracing, and when no gradient is needed (grad mode off, or
        none of ``inputs`` and of the projection's weights requires grad). Else None: the
        differentiable ``ops.selfcond_proj`` runs, so training never sees a cached fold.

        Under torch.compile the cache is skipped: Dynamo cannot trace its key (``is_inference()`` and
        ``data_ptr()`` comparisons are graph breaks, checked with torch 2.14), so the traced graph runs
        ``selfcond_proj``, which folds in-op on every call, as before the cache existed."""
        if self.training or torch.compiler.is_compiling():
            return None
        w_sc, b_sc = self.self_cond_proj.weight, self.self_cond_proj.bias
        w_p1, w_p2, b_p2 = self.text_proj.proj1.weight, self.text_proj.proj2.weight, self.text_proj.proj2.bias
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (*inputs, w_sc, b_sc, w_p1, w_p2, b_p2)):
            return None
        return self._selfcond_cache.get(w_sc, b_sc, w_p1)

    @property
    def head_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.proj_kernel, self.proj_bias, self.unembed_kernel, self.unembed_bias

    def embed_input(self, z, x_prev=None, self_cond: bool = True):
        """Steps 1-2 of the forward pass in float32: (B, L, C) -> h0 (B, L, H).

        ``self_cond=True`` is the port's ``[z, x_prev]`` input (``x_prev=None`` meaning
        its zero half), through the fused ``selfcond_proj`` -- or, for inference (eval mode, no
        gradient needed), ``selfcond_proj_folded`` with the fold cached per weight version;
        ``False`` feeds z alone.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            w = self.self_cond_proj.weight
            zf = z.to(w.dtype)
            if not self_cond:
                return self.text_proj.proj2(self.text_proj.proj1(zf))
            xf = None if x_prev is None else x_prev.to(w.dtype)
            folded = self._folded_selfcond_weights(zf, xf)
            if folded is not None:  # inference: the fold cached per weight version, two GEMMs a call
                return ops.selfcond_proj_folded(zf, xf, *folded, self.text_proj.proj2.weight,
                                                self.text_proj.proj2.bias)
            return ops.selfcond_proj(zf, xf, w, self.self_cond_proj.bias, self.text_proj.proj1.weight,
                                     self.text_proj.proj2.weight, self.text_proj.proj2.bias)

    def forward(self, z, t, w_sc, x_prev=None, decode=None, attn_mask=None, self_cond: bool = True):
        """Run the network.

        z, x_prev: (B, L, C); t, w_sc: (B,) float; decode: None (denoise), a bool, or a (B,)
        bool/float tensor switching the mode tokens per example; attn_mask: (B, L) bool key
        padding (True = valid). Returns ``(x_hat (B, L, C), h (B, L, H))``; h is the block
        output the decode head reads (no final norm).
        """
        B, L, C = z.shape
        cfg = self.config
        if C != cfg.latent_dim:
            raise ValueError(f"z has {C} channels, the model expects latent_dim={cfg.latent_dim}")
        if L > cfg.max_length:
            raise ValueError(f"sequence length {L} exceeds max_length={cfg.max_length}")
        h0 = self.embed_input(z, x_prev, self_cond)  # (B, L, H) fp32
        dtype = self.blocks[0].norm1.weight.dtype if len(self.blocks) else h0.dtype
        temb = self.t_embedder(t.expand(B) if t.dim() == 0 else t)  # (B, H)
        semb = self.self_cond_cfg_embedder(w_sc.expand(B) if w_sc.dim() == 0 else w_sc)
        if decode is None:
            mode = torch.zeros(B, device=z.device)
        elif isinstance(decode, bool):
            mode = torch.full((B,), float(decode), device=z.device)
        else:
            mode = decode.to(device=z.device, dtype=torch.float32).expand(B)
        prefix = torch.cat([
            self.t_emb_tokens + temb[:, None],
            self.self_cond_cfg_tokens + semb[:, None],
            self.mode_tokens * mode[:, None, None].to(self.mode_tokens.dtype),
        ], dim=1)  # (B, 12, H)
        x = torch.cat([prefix.to(dtype), h0.to(dtype)], dim=1)  # (B, 12 + L, H)
        mask = None
        if attn_mask is not None:
            if attn_mask.shape != (B, L):
                raise ValueError(f"attn_mask must be (B, L) = {(B, L)}, got {tuple(attn_mask.shape)}")
            keep = torch.cat([attn_mask.new_ones(B, NUM_PREFIX), attn_mask.bool()], dim=1)
            mask = keep[:, None, None, :]  # (B, 1, 1, 12 + L): key padding
        cos, sin = self.rope_cos[: NUM_PREFIX + L], self.rope_sin[: NUM_PREFIX + L]
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            if recompute:  # keep only block inputs; recompute activations in backward
                x = torch.utils.checkpoint.checkpoint(blk, x, cos, sin, mask, use_reentrant=False)
            else:
                x = blk(x, cos, sin, mask)
        h = x[:, NUM_PREFIX:]
        return self.final_layer(h.to(self.final_layer.linear.weight.dtype)), h

    def set_block_dtype(self, dtype: torch.dtype) -> "ELF":
        """Keep the transformer blocks' weights in ``dtype`` (bf16 for GPU inference, no
        autocast casts per call); the input projection, embedders, final layer and decode
        head stay float32 as docs/method.md §3 computes them."""
        self.blocks.to(dtype)
        return self

    # ------------------------------------------------------------ decode head
    def decode_ids(self, h, *, backend=None):
        """Greedy tokens (B, L) int64 from block outputs h (B, L, H), without (N, V) logits."""
        params = [p.float() for p in self.head_params]
        return ops.unembed_argmax(h.float(), *params, backend=backend)[0]

    def decode_logits(self, h):
        """The full (B, L, V) float32 logits: for tests and inspection, not for sampling or training."""
        return reference.decode_logits(h.reshape(-1, h.shape[-1]), *self.head_params).view(*h.shape[:-1], -1)

    def decode_loss(self, h, targets, mask=None, *, reduction="sum", backend=None):
        """Cross-entropy of the decode head (fused, chunked); see :func:`elf_fast.ops.linear_cross_entropy`.

        float32 (h and the head's parameters cast to float32), except under CPU bf16 autocast
        (``torch.autocast("cpu", dtype=torch.bfloat16)``, as ``train.cpu_bf16`` runs the step) on a
        CPU with native bf16 (:func:`elf_fast.muon.cpu_has_native_bf16`): there h and the
        parameters are cast to bfloat16, so the CPU kernel runs its three vocabulary-sized GEMMs in
        bf16 (3-4x faster there; the log-softmax, the loss and the gradient accumulation stay
        float32, and the gradients are rounded once to bf16, as autocast's own GEMMs round theirs).
        Everywhere else (no autocast, CUDA, CPUs that emulate bf16) the float32 path runs as before.
        """
        dt = torch.bfloat16 if _cpu_bf16_decode_head(h) else torch.float32
        params = [p.to(dt) for p in self.head_params]
        return ops.linear_cross_entropy(h.to(dt), *params, targets, mask, reduction=reduction, backend=backend)


@functools.cache
def _cpu_native_bf16() -> bool:
    from elf_fast.muon import cpu_has_native_bf16

    return cpu_has_native_bf16() is True


def _cpu_bf16_decode_head(h: torch.Tensor) -> bool:
    """Whether :meth:`ELF.decode_loss` runs the decode head in bf16: h on the CPU under bf16
    autocast, on a CPU with native bf16."""
    return (h.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and _cpu_native_bf16())


def config_from_state_dict(state: dict, max_length: int | None = None) -> ELFConfig:
    """Read the architecture off a port-style state dict (shapes of section 9)."""
    try:
        H = state["t_emb_tokens"].shape[-1]
        C, V = state["unembed_kernel"].shape
        head_dim = state["blocks.0.attn.q_norm.weight"].shape[0]
        bottleneck = state["text_proj.proj1.weight"].shape[0]
        freq_dim = state["t_embedder.mlp_0.weight"].shape[1]
        mlp_hidden = state["blocks.0.mlp.w3.weight"].shape[1]
    except KeyError as e:
        raise ValueError(f"not an ELF state dict: missing key {e.args[0]!r}") from None
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    cfg = ELFConfig(latent_dim=C, hidden_size=H, depth=depth, num_heads=H // head_dim, vocab_size=V,
                    bottleneck_dim=bottleneck, freq_dim=freq_dim, **({"max_length": max_length} if max_length else {}))
    if cfg.mlp_hidden != mlp_hidden:  # another mlp_ratio: solve int(int(r H) * 2/3) == mlp_hidden
        cfg = replace(cfg, mlp_ratio=math.ceil(mlp_hidden * 3 / 2) / H)
        if cfg.mlp_hidden != mlp_hidden:
            raise ValueError(f"cannot match the SwiGLU width {mlp_hidden} with hidden size {H}")
    return cfg
