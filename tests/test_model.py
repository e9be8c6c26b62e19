import pytest
import torch

from elf_fast.model import ELF, PRESETS, SDPA_ORDERS, config_from_state_dict, create_model, preset_config, sdpa_order
from conftest import requires_cuda, requires_kernels
from port_reference import port_forward

# The port's layout (docs/method.md §8) for ELF-B (C=512, V=32128), per block shown for block 0.
ELF_B_SHAPES = {
    "t_emb_tokens": (1, 4, 768), "self_cond_cfg_tokens": (1, 4, 768), "mode_tokens": (1, 4, 768),
    "proj_kernel": (768, 512), "proj_bias": (512,), "unembed_kernel": (512, 32128), "unembed_bias": (32128,),
    "self_cond_proj.weight": (512, 1024), "self_cond_proj.bias": (512,),
    "text_proj.proj1.weight": (128, 512), "text_proj.proj2.weight": (768, 128), "text_proj.proj2.bias": (768,),
    "t_embedder.mlp_0.weight": (768, 256), "t_embedder.mlp_0.bias": (768,),
    "t_embedder.mlp_2.weight": (768, 768), "t_embedder.mlp_2.bias": (768,),
    "self_cond_cfg_embedder.mlp_0.weight": (768, 256), "self_cond_cfg_embedder.mlp_0.bias": (768,),
    "self_cond_cfg_embedder.mlp_2.weight": (768, 768), "self_cond_cfg_embedder.mlp_2.bias": (768,),
    "blocks.0.norm1.weight": (768,), "blocks.0.attn.qkv.weight": (2304, 768), "blocks.0.attn.qkv.bias": (2304,),
    "blocks.0.attn.q_norm.weight": (64,), "blocks.0.attn.k_norm.weight": (64,),
    "blocks.0.attn.proj.weight": (768, 768), "blocks.0.attn.proj.bias": (768,), "blocks.0.norm2.weight": (768,),
    "blocks.0.mlp.w12.weight": (4096, 768), "blocks.0.mlp.w12.bias": (4096,),
    "blocks.0.mlp.w3.weight": (768, 2048), "blocks.0.mlp.w3.bias": (768,),
    "final_layer.norm_final.weight": (768,), "final_layer.linear.weight": (512, 768), "final_layer.linear.bias": (512,),
}


def test_elf_b_state_dict_matches_the_port_layout():
    with torch.device("meta"):
        model = create_model("ELF-B", latent_dim=512, vocab_size=32128)
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    per_block = {k for k in sd if k.startswith("blocks.0.")}
    assert {k for k in sd if not k.startswith("blocks.")} | per_block == set(ELF_B_SHAPES)
    assert all(sd[k] == ELF_B_SHAPES[k] for k in ELF_B_SHAPES)
    assert len([k for k in sd if k.startswith("blocks.")]) == 12 * len(per_block)
    assert sum(p.numel() for p in model.parameters()) == 104_594_304  # the port's ELF-B: 104.6 M


@pytest.mark.parametrize("name,millions", [("ELF-M", 342.6), ("ELF-L", 652.1)])
def test_preset_sizes(name, millions):
    with torch.device("meta"):
        model = create_model(name, latent_dim=512, vocab_size=32128)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < 0.1


def test_presets_and_config_errors():
    assert set(PRESETS) >= {"ELF-B", "ELF-M", "ELF-L"}
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("ELF-XXL")
    with pytest.raises(ValueError, match="heads"):
        preset_config("ELF-B", num_heads=7)


def test_init_follows_the_spec():
    model = create_model("ELF-T", latent_dim=16, vocab_size=50, max_length=8)
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0
    assert 0.01 < model.t_emb_tokens.std().item() < 0.03
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = create_model("ELF-T", latent_dim=24, vocab_size=97, max_length=20).eval()
    with torch.no_grad():  # non-trivial values everywhere (the init of docs/method.md §3 zeroes final_layer)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@requires_kernels
@pytest.mark.parametrize("decode", [0.0, 1.0])
def test_parity_with_the_port_style_forward(decode):
    model = _tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reloaded = ELF(config_from_state_dict(state, max_length=20))
    reloaded.load_state_dict(state, strict=True)
    B, L, C = 3, 20, 24
    z, x_prev = torch.randn(B, L, C), torch.randn(B, L, C)
    t, w = torch.rand(B), torch.rand(B) * 4 + 1
    dec = torch.full((B,), decode)
    with torch.no_grad():
        x_hat, h = reloaded(z, t, w, x_prev=x_prev, decode=dec)
        logits = reloaded.decode_logits(h)
        want_x, want_logits = port_forward(state, 4, torch.cat([z, x_prev], -1), t, w, dec)
        ids = reloaded.decode_ids(h)
    assert (x_hat - want_x).abs().max() <= 1e-5 * want_x.abs().max()
    assert (logits - want_logits).abs().max() <= 1e-5 * want_logits.abs().max()
    assert torch.equal(ids, want_logits.argmax(-1))


@requires_kernels
def test_zero_self_condition_half_equals_x_prev_none():
    model = _tiny(1)
    z = torch.randn(2, 7, 24)
    t, w = torch.rand(2), torch.ones(2)
    with torch.no_grad():
        a, _ = model(z, t, w, x_prev=None)
        b, _ = model(z, t, w, x_prev=torch.zeros_like(z))
    assert torch.allclose(a, b, atol=1e-6)


@requires_kernels
def test_key_padding_mask_hides_padded_positions():
    model = _tiny(2)
    z = torch.randn(1, 10, 24)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[:, 6:] = False
    t, w = torch.rand(1), torch.ones(1)
    with torch.no_grad():
        full, _ = model(z, t, w, attn_mask=mask)
        z2 = z.clone()
        z2[:, 6:] = torch.randn(1, 4, 24)  # padded content must not matter to valid positions
        other, _ = model(z2, t, w, attn_mask=mask)
    assert torch.allclose(full[:, :6], other[:, :6], atol=1e-6)


def test_bad_inputs():
    model = _tiny()
    with pytest.raises(ValueError, match="latent_dim"):
        model(torch.randn(1, 4, 8), torch.rand(1), torch.ones(1))
    with pytest.raises(ValueError, match="max_length"):
        model(torch.randn(1, 21, 24), torch.rand(1), torch.ones(1))
    with pytest.raises(ValueError, match="not an ELF state dict"):
        config_from_state_dict({"foo": torch.zeros(1)})


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _tiny(4).train()
    z, t, w = torch.randn(2, 8, 24), torch.rand(2), torch.ones(2)

    def grads():
        model.zero_grad()
        x_hat, h = model(z, t, w, x_prev=torch.randn(2, 8, 24, generator=torch.Generator().manual_seed(0)))
        (x_hat.square().sum() + h.sum()).backward()
        return [p.grad.clone() for p in model.blocks.parameters()]

    plain = grads()
    model.gradient_checkpointing = True
    for a, b in zip(grads(), plain):
        assert torch.allclose(a, b, atol=1e-6)


def test_sdpa_order_from_the_environment(monkeypatch):
    from torch.nn.attention import SDPBackend

    monkeypatch.delenv("ELF_FAST_SDPA", raising=False)
    order = sdpa_order()  # default: cuDNN first, every back-end still enabled
    assert order[0] == SDPBackend.CUDNN_ATTENTION and set(order) == {
        SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH}
    monkeypatch.setenv("ELF_FAST_SDPA", "torch")
    assert sdpa_order() is None and set(SDPA_ORDERS) == {"cudnn", "torch"}
    monkeypatch.setenv("ELF_FAST_SDPA", "fastest")
    with pytest.raises(ValueError, match="ELF_FAST_SDPA"):
        sdpa_order()


@requires_cuda
@pytest.mark.parametrize("masked", [False, True])
def test_attention_backend_order_gives_the_same_network(masked, monkeypatch):
    # ELF_FAST_SDPA=cudnn (cuDNN attention first) against PyTorch's own order, bf16 blocks, ELF-B
    # head layout (12 heads of 64) at 12 + 300 positions, with and without key padding: forward
    # outputs and the gradients training would take.
    from elf_fast.model import create_model

    torch.manual_seed(0)
    model = create_model("ELF-B", latent_dim=64, vocab_size=97, max_length=300, depth=2).to("cuda")
    model.set_block_dtype(torch.bfloat16)
    z = torch.randn(2, 300, 64, device="cuda")
    t, w = torch.rand(2, device="cuda"), torch.ones(2, device="cuda")
    mask = None
    if masked:
        mask = torch.ones(2, 300, dtype=torch.bool, device="cuda")
        mask[1, 250:] = False
    outs, grads = {}, {}
    for choice in ("cudnn", "torch"):
        monkeypatch.setenv("ELF_FAST_SDPA", choice)
        model.zero_grad()
        h = model(z, t, w, attn_mask=mask)[1].float()
        h.square().mean().backward()
        outs[choice] = h.detach()
        grads[choice] = model.blocks[0].attn.qkv.weight.grad.float()
    for got, ref in ((outs["cudnn"], outs["torch"]), (grads["cudnn"], grads["torch"])):
        assert torch.isfinite(got).all()
        assert (got - ref).abs().max() <= 0.03 * ref.abs().max()


@requires_kernels
def test_decode_loss_runs_bf16_only_under_cpu_bf16_autocast_where_bf16_is_native(monkeypatch):
    """ELF.decode_loss hands the decode head bf16 (the CPU kernel's bf16 GEMMs) only under CPU bf16
    autocast on a CPU with native bf16; without autocast, under fp16 autocast or where bf16 is
    emulated, float32 as before. Under the switch, loss and gradients stay within bf16 error of the
    float32 ones and the parameters' gradients are float32."""
    from elf_fast import model as model_mod, ops
    from elf_fast.muon import cpu_has_native_bf16
    from conftest import tiny_elf

    model = tiny_elf(0, latent_dim=32, vocab_size=997, max_length=16)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 16, model.config.hidden_size, generator=g)
    targets = torch.randint(0, 997, (3, 16), generator=g)
    mask = torch.rand(3, 16, generator=g) < 0.9
    seen = []
    real = ops.linear_cross_entropy

    def spy(h, *args, **kw):
        seen.append((h.dtype, *(a.dtype for a in args[:4])))
        return real(h, *args, **kw)

    monkeypatch.setattr(ops, "linear_cross_entropy", spy)

    def run(ctx):
        model.zero_grad(set_to_none=True)
        hl = h.clone().requires_grad_()
        with ctx:
            loss = model.decode_loss(hl, targets, mask)
        loss.backward()
        return loss.detach(), [hl.grad, *(p.grad for p in model.head_params)]

    loss32, g32 = run(torch.autocast("cpu", enabled=False))
    assert seen.pop() == (torch.float32,) * 5
    run(torch.autocast("cpu", dtype=torch.float16))
    assert seen.pop() == (torch.float32,) * 5
    lossb, gb = run(torch.autocast("cpu", dtype=torch.bfloat16))
    native = cpu_has_native_bf16() is True
    assert seen.pop() == ((torch.bfloat16,) if native else (torch.float32,)) * 5
    assert all(t.dtype == torch.float32 for t in gb)  # the fp32 leaves' gradients
    assert abs(lossb - loss32).item() <= 1e-3 * abs(loss32).item()
    for a, b in zip(gb, g32):
        assert ((a - b).norm() / b.norm()).item() < 2e-2
    if native:  # and where bf16 is emulated, the float32 path under autocast too
        monkeypatch.setattr(model_mod, "_cpu_native_bf16", lambda: False)
        run(torch.autocast("cpu", dtype=torch.bfloat16))
        assert seen.pop() == (torch.float32,) * 5


def test_cpu_bf16_attention_under_grad_runs_in_float32(monkeypatch):
    """Under CPU bf16 autocast with gradients (train.cpu_bf16), attention runs on the bf16 q, k, v
    upcast to float32 (ATen's CPU bf16 flash-attention backward is 3-4x slower than its float32
    one) and rounds its output once to bf16; without gradients it stays bf16, as autocast has it."""
    import torch.nn.functional as F
    from elf_fast import model as model_mod
    from elf_fast.model import Attention, preset_config

    cfg = preset_config("ELF-T", latent_dim=16, vocab_size=64, max_length=12)
    torch.manual_seed(0)
    attn = Attention(cfg)
    x = torch.randn(2, 12, cfg.hidden_size)
    cos, sin = torch.randn(12, cfg.head_dim // 2), torch.randn(12, cfg.head_dim // 2)
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    mask[1, ..., -3:] = False
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return real(q, k, v, **kw)

    monkeypatch.setattr(model_mod.F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, cos, sin, mask)
        assert seen.pop() == torch.float32 and out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        assert attn.qkv.weight.grad is not None
        with torch.no_grad():
            out_ng = attn(x, cos, sin, mask)
        assert seen.pop() == torch.bfloat16
    # the float32 attention of the same bf16 q, k, v, rounded once
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        from elf_fast import ops
        q, k, v = ops.qk_norm_rope(attn.qkv(x), attn.q_norm.weight, attn.k_norm.weight, cos, sin,
                                   cfg.num_heads, attn.q_norm.eps)
    o = real(q.float(), k.float(), v.float(), attn_mask=mask).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        want = attn.proj(o.transpose(1, 2).reshape(2, 12, cfg.hidden_size))
    torch.testing.assert_close(out.detach(), want, rtol=2e-2, atol=1e-3)  # q, k, v: the kernel vs the reference
    torch.testing.assert_close(out_ng.float(), want.float(), rtol=2e-2, atol=2e-2)
