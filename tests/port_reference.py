"""A plain functional ELF forward written from docs/method.md (§3 and §8), over a port-style
state dict, for parity tests of elf_fast.model. Deliberately naive: explicit concatenation,
explicit softmax attention, explicit RoPE on interleaved pairs, no fused ops.

Port-style state dict layout (docs/method.md §8, ELF-B shapes with C=512, V=32128):
  t_emb_tokens, self_cond_cfg_tokens, mode_tokens  (1, 4, H)
  proj_kernel (H, C), proj_bias (C,), unembed_kernel (C, V), unembed_bias (V,)
  self_cond_proj.weight (C, 2C) .bias (C,)
  text_proj.proj1.weight (128, C); text_proj.proj2.weight (H, 128) .bias (H,)
  {t_embedder, self_cond_cfg_embedder}.mlp_0.weight (H, 256) .bias; .mlp_2.weight (H, H) .bias
  blocks.{i}.norm1.weight (H,); .attn.qkv.weight (3H, H) .bias; .attn.q_norm.weight (hd,);
  .attn.k_norm.weight (hd,); .attn.proj.weight (H, H) .bias; .norm2.weight (H,);
  .mlp.w12.weight (2F, H) .bias; .mlp.w3.weight (H, F) .bias
  final_layer.norm_final.weight (H,); final_layer.linear.weight (C, H) .bias (C,)
"""

import math

import torch


def _lin(x, s, name, bias=True):
    y = x @ s[name + ".weight"].T
    return y + s[name + ".bias"] if bias else y


def _rms(x, w, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _embed(s, name, t):
    i = torch.arange(128, dtype=torch.float32)
    f = torch.exp(-math.log(10000.0) * i / 128)
    a = t[:, None] * f[None]
    e = torch.cat([torch.cos(a), torch.sin(a)], -1)
    hdn = _lin(e, s, name + ".mlp_0")
    return _lin(hdn * torch.sigmoid(hdn), s, name + ".mlp_2")


def _rope(x, L):
    # x: (B, h, 12 + L, hd); prefix unrotated; text position p at angle p * 10000^(-2j/hd)
    hd = x.shape[-1]
    out = x.clone()
    for j in range(hd // 2):
        theta = 10000.0 ** (-2.0 * j / hd)
        ang = torch.arange(L, dtype=torch.float64) * theta
        c, sn = ang.cos().float(), ang.sin().float()
        a, b = x[..., 12:, 2 * j], x[..., 12:, 2 * j + 1]
        out[..., 12:, 2 * j] = a * c - b * sn
        out[..., 12:, 2 * j + 1] = b * c + a * sn
    return out


def port_forward(s, num_heads, z_cat, t, w_sc, decode):
    """z_cat: (B, L, 2C) = [z, x_prev]; t, w_sc, decode: (B,). Returns x_hat (B, L, C), logits (B, L, V)."""
    B, L, _ = z_cat.shape
    u = _lin(z_cat, s, "self_cond_proj")
    h0 = _lin(_lin(u, s, "text_proj.proj1", bias=False), s, "text_proj.proj2")
    x = torch.cat([
        s["t_emb_tokens"] + _embed(s, "t_embedder", t)[:, None],
        s["self_cond_cfg_tokens"] + _embed(s, "self_cond_cfg_embedder", w_sc)[:, None],
        s["mode_tokens"] * decode[:, None, None],
        h0,
    ], 1)
    H = x.shape[-1]
    hd = H // num_heads
    depth = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        y = _rms(x, s[p + "norm1.weight"])
        qkv = _lin(y, s, p + "attn.qkv").view(B, 12 + L, 3, num_heads, hd)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (B, h, T, hd)
        q = _rope(_rms(q, s[p + "attn.q_norm.weight"]), L)
        k = _rope(_rms(k, s[p + "attn.k_norm.weight"]), L)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
        x = x + _lin((att @ v).transpose(1, 2).reshape(B, 12 + L, H), s, p + "attn.proj")
        y = _rms(x, s[p + "norm2.weight"])
        a, b = _lin(y, s, p + "mlp.w12").chunk(2, -1)
        x = x + _lin(a * torch.sigmoid(a) * b, s, p + "mlp.w3")
    h = x[:, 12:]
    x_hat = _lin(_rms(h, s["final_layer.norm_final.weight"]), s, "final_layer.linear")
    g = h @ s["proj_kernel"] + s["proj_bias"]
    g = 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
    return x_hat, g @ s["unembed_kernel"] + s["unembed_bias"]
