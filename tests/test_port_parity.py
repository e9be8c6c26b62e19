"""Conditional ELF against the reference port's own outputs (tests/fixtures/port/conditional.pt,
made by tests/fixtures/port/make_port_fixtures.py from the port's functions with every random
draw pinned): the packed layout and its masks, the encoder's block mask, sampling (ODE and SDE,
cfg 1 and 2: latents and ids) and the training objective (loss and every gradient, pad_token
pad and eos), on the kernel and the reference back-ends."""

import os

import pytest
import torch

from elf_fast.data import pack_pairs, pad_packed, pair_loss_mask, pair_masks
from elf_fast.encoder import FrozenEncoder
from elf_fast.model import ELF, config_from_state_dict
from elf_fast.objective import NoiseDraws, ObjectiveConfig, elf_loss
from elf_fast.sampling import SamplerConfig, decode, sample_latents, truncate_at_eos
from conftest import requires_kernels

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "port", "conditional.pt")
BACKENDS = [pytest.param("kernel", marks=requires_kernels), "reference"]


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


def _dims(fx):
    C, H, depth, heads, R, V, L, Lin, eos, pad = fx["dims"].tolist()
    return dict(C=C, V=V, L=L, Lin=Lin, eos=eos, pad=pad)


def _model(fx, backend):
    d = _dims(fx)
    model = ELF(config_from_state_dict(fx["state"], max_length=d["L"]))
    model.load_state_dict(fx["state"])
    return model


@pytest.fixture(autouse=True)
def _backend(monkeypatch, request):
    backend = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
    if backend is not None:
        monkeypatch.setenv("ELF_FAST_BACKEND", backend)


@pytest.mark.parametrize("pad_token", ["pad", "eos"])
def test_collate_layout_matches_the_port(fx, pad_token):
    d = _dims(fx)
    want = fx["collate"][pad_token]
    pad_id = d["eos"] if pad_token == "eos" else d["pad"]
    ids, cond_len, valid_len = pack_pairs([c.tolist() for c in fx["pairs_cond"]], [t.tolist() for t in fx["pairs_tgt"]],
                                          d["L"], d["Lin"], pad_id=123)
    ids = pad_packed(ids, valid_len, pad_id)  # training re-pads with the pad_token's id
    cond_mask, valid = pair_masks(cond_len, valid_len, d["L"])
    assert torch.equal(ids, want["input_ids"].long())
    assert torch.equal(cond_mask, want["cond_seq_mask"].bool())
    assert torch.equal(valid, want["attention_mask"].bool())
    assert torch.equal(FrozenEncoder.block_mask(cond_mask, valid), want["encoder_attention_mask"].bool())
    # the ragged cases the fixture holds: a condition cut to max_input_length, a pair cut to
    # max_length, an empty target, an empty condition
    assert cond_len.tolist() == [3, 5, 2, 5, 0, 4] and valid_len.tolist() == [7, 8, 12, 5, 6, 11]


@pytest.mark.parametrize("pad_token", ["pad", "eos"])
def test_encoder_block_mask_with_label_drop_matches_the_port(fx, pad_token):
    col, case = fx["collate"][pad_token], fx["loss"][pad_token]
    allowed = FrozenEncoder.block_mask(col["cond_seq_mask"].bool(), col["attention_mask"].bool(),
                                       case["label_drop_mask"])
    assert torch.equal(allowed, case["encoder_mask"].bool())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["ode_cfg1", "ode_cfg2", "sde_cfg1", "sde_cfg2"])
def test_conditional_sampling_matches_the_port(fx, case, backend):
    d = _dims(fx)
    want = fx["sample"][case]
    model = _model(fx, backend).eval()
    cond_mask = fx["collate"]["eos"]["cond_seq_mask"].bool()
    B = cond_mask.shape[0]
    grid = want["grid"].tolist()
    sde = bool(want["sde"])
    cfg = SamplerConfig(steps=len(grid) - 1, sampler="sde" if sde else "ode", gamma=float(want["gamma"]),
                        w_sc=float(want["w_sc"]), cfg=float(want["cfg"]))
    z = sample_latents(model, B, d["L"], cfg, seed=int(want["seed"]), grid=grid, x_cond=fx["cond_seq"],
                       cond_mask=cond_mask, backend=backend)
    rel = ((z - want["z"]).norm() / want["z"].norm()).item()
    assert rel <= 1e-5, rel
    ids = decode(model, z, cfg.w_sc, backend=backend)
    assert torch.equal(ids, want["ids"])
    # the port's read-out: the target starts right after each row's own condition
    cond_len = cond_mask.sum(1)
    n = d["L"] - d["Lin"]
    out = truncate_at_eos(ids.gather(1, cond_len[:, None] + torch.arange(n)), d["eos"], d["pad"])
    assert torch.equal(out, want["out_ids"])


def _objective_inputs(fx, pad_token):
    d = _dims(fx)
    col, case = fx["collate"][pad_token], fx["loss"][pad_token]
    ids = col["input_ids"].long()
    cond_mask, valid = col["cond_seq_mask"].bool(), col["attention_mask"].bool()
    drop = case["label_drop_mask"]
    x = case["raw"] / 0.2  # the stand-in encoder's latents, normalised (mu 0, sigma 0.2)
    x = torch.where((cond_mask & drop[:, None])[..., None], 0.0, x)  # encode_packed zeroes dropped conditions
    draws = NoiseDraws(**case["draws"])
    return x, ids, pair_loss_mask(valid, cond_mask, pad_token), cond_mask, draws


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sc_subbatch", [True, False])
@pytest.mark.parametrize("pad_token", ["pad", "eos"])
def test_conditional_objective_matches_the_port(fx, pad_token, sc_subbatch, backend):
    case = fx["loss"][pad_token]
    model = _model(fx, backend).train()
    x, ids, loss_mask, cond_mask, draws = _objective_inputs(fx, pad_token)
    cfg = ObjectiveConfig(dec_noise_scale=1.0, sc_subbatch=sc_subbatch)
    loss, stats = elf_loss(model, x, ids, loss_mask, cond_mask=cond_mask, cfg=cfg, draws=draws)
    loss.backward()
    assert abs(loss.item() - case["loss"].item()) <= 1e-6 * abs(case["loss"].item())
    assert abs(stats["mse"].item() - case["l2"].item()) <= 1e-5 * abs(case["l2"].item())
    assert abs(stats["ce"].item() - case["ce"].item()) <= 1e-5 * abs(case["ce"].item())
    grads = dict(model.named_parameters())
    assert set(case["grads"]) == {n for n, p in grads.items() if p.grad is not None}
    for name, g in case["grads"].items():
        got = grads[name].grad
        err = ((got - g).norm() / g.norm().clamp_min(1e-12)).item()
        assert err <= 1e-5, (name, err)


def test_each_condition_rule_is_needed(fx):
    """The fixture discriminates: with "no prediction yet" as all zeros instead of the clean
    condition (elf_fast's rule before, in the no-grad forward and on the rows that do not
    self-condition) the loss moves far beyond the tolerance."""
    import elf_fast.objective as objective

    case = fx["loss"]["eos"]
    x, ids, loss_mask, cond_mask, draws = _objective_inputs(fx, "eos")
    cfg = ObjectiveConfig(dec_noise_scale=1.0)

    def loss_with(**patch):
        model = _model(fx, "reference").train()
        saved = {k: getattr(objective, k) for k in patch}
        try:
            for k, v in patch.items():
                setattr(objective, k, v)
            return elf_loss(model, x, ids, loss_mask, cond_mask=cond_mask, cfg=cfg, draws=draws)[0].item()
        finally:
            for k, v in saved.items():
                setattr(objective, k, v)

    ref = case["loss"].item()
    assert abs(loss_with() - ref) <= 1e-6 * abs(ref)
    assert abs(loss_with(_zero_half=lambda x, cm: None if cm is None else torch.zeros_like(x)) - ref) > 1e-5 * abs(ref)
