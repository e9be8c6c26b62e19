import dataclasses

import pytest
import torch

from elf_fast import reference
from elf_fast.objective import ObjectiveConfig, draw_noise, elf_loss, make_generator
from conftest import tiny_elf, toy_batch

B, L, C, V = 6, 12, 16, 40


def _tiny(seed=0):
    return tiny_elf(seed, C, V, 16)


@pytest.fixture(scope="module")
def model():
    return _tiny()


def _batch(seed=1, cond=False, pad=False):
    return toy_batch(B, L, C, V, seed, cond, pad)


def _loss(model, batch, cfg=ObjectiveConfig(), seed=0, step=0):
    x, targets, loss_mask, _, cond_mask = batch
    return elf_loss(model, x, targets, loss_mask, cond_mask=cond_mask, cfg=cfg,
                    generator=make_generator(seed, step))


def plain_loss(model, batch, cfg, seed=0, step=0):
    """docs/method.md §4 and §4.1 written out literally: velocities, whole-batch forwards, full logits."""
    x, targets, loss_mask, _, cond_mask = batch
    d = draw_noise(cfg, B, L, C, generator=make_generator(seed, step))
    cm = torch.zeros(B, L, 1, dtype=torch.bool) if cond_mask is None else cond_mask[..., None]
    t = d.t[:, None, None]
    z = torch.where(cm, x, t * x + (1 - t) * cfg.sigma_n * d.eps)
    lam = d.lam[..., None]
    z_dec = lam * x + (1 - lam) * cfg.dec_noise_scale * d.eps  # decode rows: noised at condition positions too
    den = torch.clamp(1 - t, min=cfg.t_eps)
    w = d.w_sc if cfg.self_cond_cfg else torch.ones(B)
    sc = (d.use_sc & ~d.decode)[:, None, None]
    zero_half = torch.where(cm, x, torch.zeros_like(x))  # "no prediction yet": the clean condition, else 0
    with torch.no_grad():
        x_u = torch.where(cm, x, model(z, d.t, w, x_prev=zero_half)[0])
        v_u = (x_u - z) / den
        x_c = model(z, d.t, w, x_prev=x_u)[0]
        v_c = (x_c - z) / den
    v_target = (x - z) / den
    if cfg.self_cond_cfg:
        v_target = torch.where(sc, v_target + (1 - 1 / w)[:, None, None] * (v_c - v_u), v_target)
    dec = d.decode[:, None, None]
    x_prev = torch.where(sc, x_u, torch.where(dec, torch.zeros_like(x_u), zero_half))
    x_hat, h = model(torch.where(dec, z_dec, z), torch.where(d.decode, 1.0, d.t), w,
                     x_prev=x_prev, decode=d.decode.float())
    v_hat = (x_hat - z) / den
    mse = ((v_hat - v_target) ** 2).mean(-1)  # (B, L)
    den_mask = loss_mask & ~d.decode[:, None]
    dec_mask = loss_mask & d.decode[:, None]
    ce = reference.linear_cross_entropy(h.reshape(-1, h.shape[-1]), *model.head_params, targets.reshape(-1),
                                        dec_mask.reshape(-1), reduction="sum")
    n = max(int(loss_mask.sum()), 1)
    return ((mse * den_mask).sum() + ce) / n, d


def _close(a, b, rel=1e-4):
    assert torch.allclose(a, b, rtol=rel, atol=rel), (a.item(), b.item())


# ---------------------------------------------------------------- config
def test_config_defaults_and_validation():
    cfg = ObjectiveConfig()
    assert (cfg.decoder_prob, cfg.p_mean, cfg.p_std, cfg.sigma_n, cfg.t_eps) == (0.2, -1.5, 0.8, 2.0, 0.05)
    assert (cfg.dec_lam_mean, cfg.dec_lam_std, cfg.dec_noise_scale, cfg.sc_prob) == (0.8, 0.8, 5.0, 0.5)
    assert (cfg.w_sc_a, cfg.w_sc_b, cfg.self_cond_cfg) == (1.5, 6.0, True)
    for bad in (dict(decoder_prob=1.5), dict(sc_prob=-0.1), dict(p_std=-1), dict(sigma_n=0), dict(t_eps=0),
                dict(w_sc_a=1.0), dict(w_sc_b=0.5), dict(dec_noise_scale=-1), dict(p_mean=float("nan"))):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            ObjectiveConfig(**bad)


def test_draws_follow_the_spec_distributions():
    d = draw_noise(ObjectiveConfig(), 20000, 2, 3, generator=make_generator(3, 0))
    assert abs(d.decode.float().mean().item() - 0.2) < 0.02
    assert abs(d.use_sc.float().mean().item() - 0.5) < 0.02
    assert d.w_sc.min() >= 0.5 - 1e-6 and d.w_sc.max() <= 5.0 + 1e-6
    u = torch.log((d.w_sc + 1) / 1.5) / torch.log(torch.tensor(4.0))  # w = a (b/a)^u - 1 inverted: U(0, 1)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.std().item() - (1 / 12) ** 0.5) < 0.01
    logit_t = torch.logit(d.t.double())
    assert abs(logit_t.mean().item() + 1.5) < 0.03 and abs(logit_t.std().item() - 0.8) < 0.03
    logit_lam = torch.logit(d.lam.double())
    assert abs(logit_lam.mean().item() - 0.8) < 0.03 and abs(logit_lam.std().item() - 0.8) < 0.03


def test_make_generator():
    a = torch.rand(4, generator=make_generator(1, 2, 0))
    assert torch.equal(a, torch.rand(4, generator=make_generator(1, 2, 0)))
    for other in ((1, 3, 0), (1, 2, 1), (2, 2, 0), (2, 1, 0)):
        assert not torch.equal(a, torch.rand(4, generator=make_generator(*other)))
    with pytest.raises(ValueError, match="step"):
        make_generator(0, -1)


# ---------------------------------------------------------------- the loss
def test_deterministic_given_the_generator(model):
    batch = _batch()
    l1, _ = _loss(model, batch, seed=5)
    l2, _ = _loss(model, batch, seed=5)
    l3, _ = _loss(model, batch, seed=6)
    l4, _ = _loss(model, batch, seed=5, step=1)
    assert torch.equal(l1, l2)
    assert not torch.equal(l1, l3) and not torch.equal(l1, l4)


@pytest.mark.parametrize("cond,pad", [(False, False), (True, True)])
@pytest.mark.parametrize("over", [dict(decoder_prob=0.5), dict(decoder_prob=0.5, sc_subbatch=False),
                                  dict(decoder_prob=0.0, sc_prob=1.0), dict(self_cond_cfg=False, sc_prob=0.7),
                                  dict(p_mean=3.0, p_std=0.5, dec_noise_scale=1.0)])  # t near 1: the t_eps floor
def test_matches_the_spec_written_out(model, cond, pad, over):
    cfg = ObjectiveConfig(**over)
    batch = _batch(cond=cond, pad=pad)
    for seed in (0, 1):
        loss, stats = _loss(model, batch, cfg, seed=seed)
        ref, d = plain_loss(model, batch, cfg, seed=seed)
        _close(loss, ref)
        _close(stats["loss"], ref)
        assert stats["frac_decode"] == d.decode.float().mean()
        assert stats["frac_selfcond"] == (d.use_sc & ~d.decode).float().mean()


def test_mixed_batch_stats_and_gradients(model):
    cfg = ObjectiveConfig(decoder_prob=0.5)
    batch = _batch()
    model.zero_grad()
    loss, stats = _loss(model, batch, cfg, seed=0)
    assert 0 < stats["frac_decode"] < 1, "pick a seed with both kinds of rows"
    assert set(stats) == {"loss", "mse", "ce", "n_denoise_pos", "n_decode_pos", "frac_decode", "frac_selfcond"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in stats.values())
    n_dec = int(stats["n_decode_pos"])
    assert n_dec + int(stats["n_denoise_pos"]) == B * L
    _close(stats["loss"], (stats["mse"] * (B * L - n_dec) + stats["ce"] * n_dec) / (B * L))
    assert torch.isfinite(loss)
    loss.backward()
    for p in (model.proj_kernel, model.unembed_kernel, model.final_layer.linear.weight, model.mode_tokens,
              model.self_cond_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_decode_only_is_the_cross_entropy_of_z_dec(model):
    cfg = ObjectiveConfig(decoder_prob=1.0)
    x, targets, loss_mask, valid, cond_mask = batch = _batch(cond=True)
    model.zero_grad()
    loss, stats = _loss(model, batch, cfg, seed=2)
    d = draw_noise(cfg, B, L, C, generator=make_generator(2, 0))
    lam = d.lam[..., None]
    z_dec = lam * x + (1 - lam) * 5.0 * d.eps
    ones = torch.ones(B)
    _, h = model(z_dec, ones, d.w_sc, x_prev=None, decode=True)
    ce = reference.linear_cross_entropy(h.reshape(-1, h.shape[-1]), *model.head_params, targets.reshape(-1),
                                        loss_mask.reshape(-1), reduction="mean")
    _close(loss, ce)
    _close(stats["ce"], ce)
    assert stats["frac_decode"] == 1 and stats["n_denoise_pos"] == 0
    loss.backward()
    assert model.unembed_kernel.grad.abs().sum() > 0 and model.proj_kernel.grad.abs().sum() > 0
    assert model.final_layer.linear.weight.grad is None or model.final_layer.linear.weight.grad.abs().sum() == 0


def test_denoise_only_is_the_velocity_mse(model):
    cfg = ObjectiveConfig(decoder_prob=0.0, sc_prob=0.0)
    x, targets, loss_mask, _, _ = batch = _batch()
    model.zero_grad()
    loss, stats = _loss(model, batch, cfg, seed=3)
    d = draw_noise(cfg, B, L, C, generator=make_generator(3, 0))
    t = d.t[:, None, None]
    z = t * x + (1 - t) * 2.0 * d.eps
    x_hat, _ = model(z, d.t, d.w_sc)
    v_hat = (x_hat - z) / (1 - t).clamp_min(0.05)
    v = (x - z) / (1 - t).clamp_min(0.05)
    _close(loss, ((v_hat - v) ** 2).mean())
    assert stats["n_decode_pos"] == 0 and stats["frac_selfcond"] == 0
    loss.backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    assert model.unembed_kernel.grad is None or model.unembed_kernel.grad.abs().sum() == 0


def test_guidance_vanishes_at_w_sc_one(model):
    # w_sc = a (b/a)^u - 1 = 1 for a = b = 2, so 1 - 1/w = 0: the target is plain v_target,
    # while the self-conditioning half is still x_u.
    cfg = ObjectiveConfig(decoder_prob=0.0, sc_prob=1.0, w_sc_a=2.0, w_sc_b=2.0)
    x, targets, loss_mask, _, _ = batch = _batch()
    loss, stats = _loss(model, batch, cfg, seed=4)
    assert stats["frac_selfcond"] == 1
    d = draw_noise(cfg, B, L, C, generator=make_generator(4, 0))
    assert torch.allclose(d.w_sc, torch.ones(B))
    t = d.t[:, None, None]
    z = t * x + (1 - t) * 2.0 * d.eps
    with torch.no_grad():
        x_u, _ = model(z, d.t, d.w_sc)
    x_hat, _ = model(z, d.t, d.w_sc, x_prev=x_u)
    den = (1 - t).clamp_min(0.05)
    _close(loss, (((x_hat - z) / den - (x - z) / den) ** 2).mean())
    # and the guidance does matter at other scales
    guided, _ = _loss(model, batch, dataclasses.replace(cfg, w_sc_a=4.0, w_sc_b=4.0), seed=4)
    assert not torch.allclose(guided, loss, rtol=1e-3)


def test_masks_are_honoured(model):
    x, targets, loss_mask, valid, cond_mask = batch = _batch(cond=True, pad=True)
    cfg = ObjectiveConfig(decoder_prob=0.5)
    base, stats = _loss(model, batch, cfg, seed=0)
    assert 0 < stats["frac_decode"] < 1
    # targets off the loss mask do not matter (x at padding does: the network sees every position)
    outside = ~loss_mask
    t2 = torch.where(outside, (targets + 7) % V, targets)
    pert, _ = _loss(model, (x, t2, loss_mask, valid, cond_mask), cfg, seed=0)
    _close(pert, base, rel=1e-5)
    t3 = torch.where(outside, torch.where(torch.rand(B, L) < 0.5, -100, V + 3), targets)  # e.g. ignore / pad ids
    pert, _ = _loss(model, (x, t3, loss_mask, valid, cond_mask), cfg, seed=0)
    _close(pert, base, rel=1e-5)
    # condition positions carry no loss even when the caller leaves them in loss_mask
    again, stats2 = _loss(model, (x, targets, loss_mask | cond_mask, valid, cond_mask), cfg, seed=0)
    assert torch.equal(again, base) and torch.equal(stats2["n_denoise_pos"], stats["n_denoise_pos"])
    # fewer loss positions: a different loss, normalised by the new count
    fewer = loss_mask.clone()
    fewer[:, -1] = False
    l_fewer, s_fewer = _loss(model, (x, targets, fewer, valid, cond_mask), cfg, seed=0)
    assert s_fewer["n_denoise_pos"] + s_fewer["n_decode_pos"] == fewer.sum()
    assert not torch.allclose(l_fewer, base)


@pytest.mark.parametrize("subbatch", [False, True])
def test_condition_position_rules(model, subbatch):
    """docs/method.md §4.1: denoise rows hold the clean condition in z and in every
    self-conditioning half (the no-grad forward's "zero" half, x_u, and the half of rows that do
    not self-condition); decode rows keep z_dec noised there and an all-zero half."""
    x, targets, loss_mask, _, cond_mask = batch = _batch(cond=True)
    cfg = ObjectiveConfig(decoder_prob=0.5, sc_subbatch=subbatch)
    seen = []  # (z, x_prev) of every network call
    hook = model.register_forward_pre_hook(lambda mod, args, kw: seen.append((args[0], kw.get("x_prev"))),
                                           with_kwargs=True)
    try:
        _, stats = _loss(model, batch, cfg, seed=0)
    finally:
        hook.remove()
    d = draw_noise(cfg, B, L, C, generator=make_generator(0, 0))
    sc, dec = d.use_sc & ~d.decode, d.decode
    assert len(seen) == 3 and sc.any() and dec.any() and (~sc & ~dec).any()  # every kind of row occurs
    rows = sc.nonzero().squeeze(1) if subbatch else torch.arange(B)
    (z_u, half_u), (z_c, half_c), (z_in, half_in) = seen
    cm_r = cond_mask[rows]
    # the no-grad forward: z and its "zero" half hold the condition, zeros elsewhere
    assert torch.equal(z_u[cm_r], x[rows][cm_r]) and torch.equal(half_u[cm_r], x[rows][cm_r])
    assert torch.equal(half_u[~cm_r], torch.zeros_like(half_u[~cm_r]))
    assert torch.equal(half_c[cm_r], x[rows][cm_r])  # x_u restored
    # the forward with grad
    den = ~dec
    assert torch.equal(z_in[den][cond_mask[den]], x[den][cond_mask[den]])
    assert not torch.equal(z_in[dec][cond_mask[dec]], x[dec][cond_mask[dec]])  # decode rows stay noised
    assert torch.equal(half_in[den][cond_mask[den]], x[den][cond_mask[den]])
    rest = ~sc & ~dec
    assert torch.equal(half_in[rest][~cond_mask[rest]], torch.zeros_like(half_in[rest][~cond_mask[rest]]))
    assert torch.equal(half_in[dec], torch.zeros_like(half_in[dec]))


def test_a_few_adamw_steps_lower_the_loss():
    model = _tiny(seed=1)
    batch = _batch(seed=2)
    cfg = ObjectiveConfig(decoder_prob=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(20):
        loss, _ = _loss(model, batch, cfg, seed=0)  # the same draws every step: a fixed objective
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument(model):
    x, targets, loss_mask, valid, cond_mask = _batch(cond=True, pad=True)
    g = make_generator(0, 0)
    ok = dict(cond_mask=cond_mask, generator=g)
    cases = [
        ("'x'", (x[0], targets, loss_mask), ok),
        ("'x'", (x[..., :-1], targets, loss_mask), ok),
        ("'targets'", (x, targets[:, :-1], loss_mask), ok),
        ("'targets'", (x, targets.float(), loss_mask), ok),
        ("'loss_mask'", (x, targets, loss_mask[:-1]), ok),
        ("'loss_mask'", (x, targets, loss_mask.float()), ok),
        ("'draws'", (x, targets, loss_mask), {**ok, "generator": None, "draws": (1, 2)}),
        ("'generator' or 'draws'", (x, targets, loss_mask),
         {**ok, "draws": draw_noise(ObjectiveConfig(), B, L, C, generator=make_generator(0, 1))}),
        ("'cond_mask'", (x, targets, loss_mask), {**ok, "cond_mask": cond_mask.T}),
        ("'cfg'", (x, targets, loss_mask), {**ok, "cfg": dict(decoder_prob=0.2)}),
    ]
    for name, args, kw in cases:
        with pytest.raises(ValueError, match=name):
            elf_loss(model, *args, **kw)
