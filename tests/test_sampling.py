import pytest
import torch

from elf_fast import reference
from elf_fast.model import create_model
from elf_fast.sampling import (COMPILE_MODES, SamplerConfig, churn, compile_model, decode, sample_latents, time_grid,
                               truncate_at_eos)
from conftest import requires_cuda, requires_kernels


def _tiny(seed=0, C=16, V=53, L=12):
    torch.manual_seed(seed)
    model = create_model("ELF-T", latent_dim=C, vocab_size=V, max_length=L).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def plain_sampler(model, B, L, cfg, seed, grid, x_cond=None, cond_mask=None):
    """docs/method.md §5 written out step by step with plain PyTorch and the reference RNG."""
    C = model.config.latent_dim
    eps = lambda off: reference.philox_normal(B * L * C, seed, off).view(B, L, C)  # noqa: E731
    z = cfg.sigma_n * eps(0)
    if cond_mask is not None:
        z = torch.where(cond_mask[..., None], x_cond, z)
    # the first self-conditioning input: the clean condition at condition positions, else 0 (§4.1)
    x_prev = None if cond_mask is None else torch.where(cond_mask[..., None], x_cond, torch.zeros_like(x_cond))
    for i in range(cfg.steps):
        t, t_next = grid[i], grid[i + 1]
        if cfg.sampler == "sde" and i < cfg.steps - 1:  # back off to t_b = alpha t, inject noise
            alpha = min(max(1 - cfg.gamma * (t_next - t), 0.0), 1.0)
            z = alpha * z + (1 - alpha) * cfg.sigma_n * eps(1 + i)
            t = alpha * t
            if cond_mask is not None:
                z = torch.where(cond_mask[..., None], x_cond, z)
        tt, ww = torch.full((B,), t), torch.full((B,), cfg.w_sc)
        x_hat, _ = model(z, tt, ww, x_prev=x_prev)
        if cfg.cfg != 1.0:
            keep = (~cond_mask)[..., None].float()
            x_u, _ = model(z * keep, tt, ww, x_prev=None if x_prev is None else x_prev * keep)
            x_hat = x_u + cfg.cfg * (x_hat - x_u)
        v = (x_hat - z) / max(1 - t, cfg.t_eps)
        z = z + (t_next - t) * v
        if cond_mask is not None:
            z = torch.where(cond_mask[..., None], x_cond, z)
            x_hat = torch.where(cond_mask[..., None], x_cond, x_hat)
        x_prev = x_hat
    return z


def test_time_grids():
    cfg = SamplerConfig(steps=8)
    g = time_grid(cfg, torch.Generator().manual_seed(0))
    assert len(g) == 9 and g[0] == 0.0 and g[-1] == 1.0 and g == sorted(g)
    assert time_grid(cfg, torch.Generator().manual_seed(0)) == g
    assert time_grid(cfg, torch.Generator().manual_seed(1)) != g
    u = time_grid(SamplerConfig(steps=4, grid="uniform"))
    assert u == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    a = churn(SamplerConfig(steps=4, grid="uniform", gamma=1.5), u)
    assert a == pytest.approx([0.625, 0.625, 0.625, 1.0])  # the last step is a plain ODE step
    assert churn(SamplerConfig(steps=4, sampler="ode"), u) == [1.0] * 4


@requires_kernels
@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_matches_the_plain_reference_sampler(sampler):
    model = _tiny()
    cfg = SamplerConfig(steps=6, sampler=sampler, w_sc=2.0)
    grid = time_grid(cfg, torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = plain_sampler(model, 2, 12, cfg, seed=9, grid=grid)
    got = sample_latents(model, 2, 12, cfg, seed=9, grid=grid)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@requires_kernels
def test_cfg_and_condition_restore_match_the_plain_sampler():
    model = _tiny(1)
    B, L, C = 2, 12, 16
    x_cond = torch.randn(B, L, C)
    cond_mask = torch.zeros(B, L, dtype=torch.bool)
    cond_mask[:, :5] = True
    cfg = SamplerConfig(steps=5, sampler="ode", cfg=2.0, w_sc=1.0)
    grid = time_grid(cfg, torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = plain_sampler(model, B, L, cfg, 4, grid, x_cond, cond_mask)
    got = sample_latents(model, B, L, cfg, seed=4, grid=grid, x_cond=x_cond, cond_mask=cond_mask)
    assert torch.equal(got[cond_mask], x_cond[cond_mask])
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@requires_kernels
def test_same_seed_same_tokens():
    model = _tiny(2)
    cfg = SamplerConfig(steps=4)
    runs = [decode(model, sample_latents(model, 3, 12, cfg, seed=s), cfg.w_sc) for s in (7, 7, 8)]
    assert runs[0].shape == (3, 12) and runs[0].dtype == torch.int64
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_truncate_at_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [1, 1, 1, 1, 1]])
    assert truncate_at_eos(ids, eos_id=2, pad_id=0).tolist() == [[5, 6, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_bad_sampler_settings():
    with pytest.raises(ValueError, match="sampler"):
        SamplerConfig(sampler="heun")
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="w_sc must be a finite number"):
        SamplerConfig(w_sc=float("nan"))
    model = _tiny()
    with pytest.raises(ValueError, match="cfg != 1 needs a condition"):
        sample_latents(model, 1, 12, SamplerConfig(steps=2, cfg=2.0))


@requires_kernels
def test_bf16_blocks_stay_close_to_fp32():
    model = _tiny(3)
    cfg = SamplerConfig(steps=3)
    z32 = sample_latents(model, 2, 12, cfg, seed=1)
    model.set_block_dtype(torch.bfloat16)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16 and model.proj_kernel.dtype == torch.float32
    zbf = sample_latents(model, 2, 12, cfg, seed=1)
    assert zbf.dtype == torch.float32
    assert (zbf - z32).abs().max() <= 0.05 * z32.abs().max()


@requires_kernels
def test_compiled_model_samples_what_the_eager_one_does():
    # torch.compile(fullgraph=True) over the whole network (fused ops as custom ops), CPU inductor:
    # the same latents to rounding and the same tokens, with and without the self-condition input.
    cfg = SamplerConfig(steps=3)
    eager = _tiny(4)
    z_ref = sample_latents(eager, 2, 12, cfg, seed=5)
    ids_ref = decode(eager, z_ref, cfg.w_sc)
    compiled = compile_model(_tiny(4), "default")
    z = sample_latents(compiled, 2, 12, cfg, seed=5)
    assert torch.allclose(z, z_ref, rtol=1e-4, atol=1e-5), (z - z_ref).abs().max()
    assert torch.equal(decode(compiled, z, cfg.w_sc), ids_ref)


def test_compile_mode_is_checked():
    assert "reduce-overhead" in COMPILE_MODES
    with pytest.raises(ValueError, match="compile mode"):
        compile_model(_tiny(), "fast")


@requires_cuda
def test_compiled_cuda_graph_sampling_matches_eager():
    # compile_model(mode="reduce-overhead"): each forward replayed from a CUDA graph (bf16 blocks);
    # two sampling runs so the second one replays the recorded graphs
    from elf_fast.model import create_model
    from elf_fast.sampling import SamplerConfig, compile_model, sample_latents

    torch.manual_seed(0)
    model = create_model("ELF-T", latent_dim=64, vocab_size=97, max_length=48).to("cuda").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.set_block_dtype(torch.bfloat16)
    cfg = SamplerConfig(steps=4)
    want = sample_latents(model, 3, 48, cfg, seed=2)
    compile_model(model, "reduce-overhead")
    for _ in range(2):
        got = sample_latents(model, 3, 48, cfg, seed=2)
        assert (got - want).abs().max() <= 0.02 * want.abs().max()
