import pytest
import torch

import json

from elf_fast.checkpoint import (HEADER_VERSION, CheckpointError, CheckpointHeader, DataInfo, check_task,
                                 load_checkpoint, read_state, save_checkpoint, umask_mode)
from elf_fast.model import create_model


def _model(seed=0):
    torch.manual_seed(seed)
    m = create_model("ELF-T", latent_dim=16, vocab_size=41, max_length=12)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_own_format_round_trip_is_self_describing(tmp_path):
    m = _model()
    meta = {"encoder": {"name_or_path": "minilm", "mu": 0.0, "sigma": 0.2}, "tokenizer": "minilm"}
    path = save_checkpoint(tmp_path / "tiny.safetensors", m, meta, preset="ELF-T")
    loaded, header = load_checkpoint(path)
    assert _same(m, loaded)
    assert loaded.config == m.config
    assert header.encoder.sigma == 0.2 and header.preset == "ELF-T" and header.extra == {"tokenizer": "minilm"}
    assert header.model == m.config and header.version == HEADER_VERSION and header.data.task == "unconditional"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == umask_mode(0o666)  # not mkstemp's private 0600
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        t = torch.tensor([0.3])
        assert torch.equal(m(x, t, torch.ones(1))[0], loaded(x, t, torch.ones(1))[0])


def test_port_checkpoint_prefers_ema_and_directory_takes_the_latest(tmp_path):
    raw, ema = _model(0), _model(1)
    blob = {"params": raw.state_dict(), "ema_params1": ema.state_dict(), "opt_state": {}, "step": 7}
    torch.save(blob, tmp_path / "checkpoint_7")
    older = {"params": raw.state_dict(), "ema_params1": raw.state_dict(), "step": 3}
    torch.save(older, tmp_path / "checkpoint_3")
    loaded, header = load_checkpoint(tmp_path, max_length=12)
    assert _same(loaded, ema) and header.extra["weights"] == "ema_params1" and header.extra["step"] == 7
    loaded, _ = load_checkpoint(tmp_path / "checkpoint_7", prefer_ema=False, max_length=12)
    assert _same(loaded, raw)


def test_ddp_and_compile_prefixes_are_stripped(tmp_path):
    m = _model()
    torch.save({"ema_params1": {"module._orig_mod." + k: v for k, v in m.state_dict().items()}},
               tmp_path / "checkpoint_1")
    loaded, _ = load_checkpoint(tmp_path / "checkpoint_1", max_length=12)
    assert _same(loaded, m)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="checkpoint_<step>"):
        load_checkpoint(tmp_path)
    m = _model()
    path = save_checkpoint(tmp_path / "a.safetensors", m)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    torch.save({"ema_params1": m.state_dict()}, tmp_path / "checkpoint_5")
    port = (tmp_path / "checkpoint_5").read_bytes()
    (tmp_path / "checkpoint_5").write_bytes(port[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "checkpoint_5")
    state = dict(m.state_dict())
    del state["mode_tokens"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"params": state}, tmp_path / "checkpoint_6")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['mode_tokens'\].*unexpected keys \(1\)"):
        load_checkpoint(tmp_path / "checkpoint_6", max_length=12)
    with pytest.raises(CheckpointError, match="does not match preset 'ELF-B'"):
        load_checkpoint(path, preset="ELF-B")
    torch.save({"something": 1}, tmp_path / "checkpoint_9")
    with pytest.raises(CheckpointError, match="neither"):
        read_state(tmp_path / "checkpoint_9")
    with pytest.raises(ValueError, match=".safetensors"):
        save_checkpoint(tmp_path / "model.pt", m)


def test_bf16_storage_loads_into_float32(tmp_path):
    m = _model()
    path = save_checkpoint(tmp_path / "half.safetensors", m, dtype=torch.bfloat16)
    assert path.stat().st_size < 0.6 * save_checkpoint(tmp_path / "full.safetensors", m).stat().st_size
    loaded, _ = load_checkpoint(path)
    assert loaded.proj_kernel.dtype == torch.float32
    assert torch.equal(loaded.proj_kernel, m.proj_kernel.bfloat16().float())


def test_one_task_vocabulary():
    assert check_task("translation") == "translation" and check_task("summarisation") == "summary"
    with pytest.raises(ValueError, match="data.task must be one of unconditional, translation, summary, pairs"):
        check_task("translate")

    def metric(data):
        return CheckpointHeader.from_dict({"data": data}).data.metric

    # the metric evaluate picks: by the task training wrote; old 'pairs' headers get both
    lengths = {"max_input_length": 8, "max_length": 16}
    assert metric({"task": "translation", **lengths}) == "bleu"
    assert metric({"task": "summarization", **lengths}) == "rouge"
    assert metric({"task": "pairs", **lengths}) == "both" and metric({"cond_len": 8, "tgt_len": 8}) == "both"  # version 1
    assert metric({"task": "unconditional"}) is None and metric({}) is None
    with pytest.raises(ValueError, match="needs 0 < max_input_length < max_length"):
        DataInfo(task="translation")
    with pytest.raises(ValueError, match="pad_token"):
        DataInfo(task="translation", pad_token="none", **lengths)
    with pytest.raises(ValueError, match="unconditional task has no max_input_length"):
        DataInfo(max_length=8)


def test_one_default_sample_length():
    def length(data, max_length):
        return CheckpointHeader.from_dict({"data": data}).default_sample_length(max_length)

    # an ELF-B trained at 1,024 tokens samples 1,024 (sample.py used to say 64, evaluate 1,024)
    assert length({"task": "unconditional", "seq_len": 1024}, 1024) == 1024
    assert length({"task": "translation", "max_input_length": 64, "max_length": 128}, 128) == 64
    assert length({"task": "summary", "max_input_length": 1024, "max_length": 1088}, 1088) == 64
    assert length({}, 48) == 48 and length({}, 4096) == 64


def test_header_versions_and_bad_headers(tmp_path):
    m = _model()
    # a version-1 header (before the version field; 'pairs' task without a name) still loads
    v1 = {"format": "elf_fast/1", "model": m.config.to_dict(), "preset": "ELF-T",
          "encoder": {"name_or_path": None, "mu": 0.0, "sigma": 0.36}, "data": {"task": "pairs", "cond_len": 4,
                                                                               "tgt_len": 8}, "train_config": {}}
    path = save_checkpoint(tmp_path / "v2.safetensors", m, v1)
    raw = read_state(path)[1]
    # the old fixed condition block reads as the packed layout's lengths: 4 condition tokens at
    # most, 12 positions in all
    assert raw["version"] == HEADER_VERSION and raw["data"] == {"task": "pairs", "max_input_length": 4,
                                                                 "max_length": 12, "pad_token": "pad"}
    old = CheckpointHeader.from_dict(v1)
    assert old.version == 1 and old.conditional and old.data.metric == "both" and old.extra == {"train_config": {}}
    assert CheckpointHeader.from_dict(old.to_dict()) == CheckpointHeader.from_dict(raw)

    from safetensors.torch import save_file

    def write(header):
        p = tmp_path / "bad.safetensors"
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p),
                  metadata={"elf_fast": json.dumps(header)})
        return p

    for bad, msg in (({"version": 99}, "newer than this elf_fast"), ({"data": {"task": "lm"}}, "data.task"),
                     ({"sampler": {"temperature": 1}}, "'sampler' entry"), ({"encoder": "minilm"}, "'encoder'"),
                     ({"data": {"seq_len": -1}}, "seq_len")):
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(write({"format": "elf_fast/1", "model": m.config.to_dict(), **bad}))


def test_training_folders_resolve_to_their_newest_complete_ema(tmp_path):
    # the layout training writes: run/ckpt_<step>/{model,ema}.safetensors, a temporary .ckpt_* while writing
    raw, ema_old, ema_new = _model(0), _model(1), _model(2)
    for step, ema in ((2, ema_old), (4, ema_new)):
        save_checkpoint(tmp_path / f"ckpt_{step:08d}" / "model.safetensors", raw)
        save_checkpoint(tmp_path / f"ckpt_{step:08d}" / "ema.safetensors", ema)
    save_checkpoint(tmp_path / ".ckpt_00000006.tmp" / "ema.safetensors", raw)  # an interrupted write
    assert _same(load_checkpoint(tmp_path)[0], ema_new)  # the run folder
    assert _same(load_checkpoint(tmp_path / "ckpt_00000002")[0], ema_old)  # one checkpoint folder
    assert _same(load_checkpoint(tmp_path / "ckpt_00000002", prefer_ema=False)[0], raw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="looked for ema.safetensors .* ckpt_<step>/ .* checkpoint_<step>"):
        load_checkpoint(tmp_path / "empty")
