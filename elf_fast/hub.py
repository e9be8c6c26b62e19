"""The published ELF models by name, and what the official port's checkpoints lack.

The official PyTorch port of ELF publishes six models on the Hugging Face hub
(:data:`PUBLISHED`; docs/published_models.md). Each hub repo holds the port's training
checkpoint, one ``torch.save`` file named ``checkpoint_<step>`` (``params``, EMA
``ema_params1``, optimiser state, ...) at the top of the repo: the port's loader downloads the
repo (``snapshot_download``) and takes the newest ``checkpoint_*`` in it. Such a file has the
weights only. What it lacks, the port takes from its training YAML config (``encoder_model_name``,
``latent_mean`` / ``latent_std``, ``max_length``, ``max_input_length``, ``pad_token``, ``model``,
``eval_data_path``, ``sampling_configs_path``): for the published models :data:`PUBLISHED`
records it; for any other port checkpoint :func:`port_info` reads it from the port's YAML.

* :func:`lookup` — a published model by repo id (``embedded-language-flows/ELF-B-de-en-torch``)
  or by its short name (``ELF-B-de-en-torch``), any case.
* :func:`resolve` — what ``Generator.from_pretrained(name_or_path)`` loads: a local file or folder,
  a published model, or any hub repo id, downloaded through ``huggingface_hub`` into the user's
  hub cache (progress shown). The cache is tried first, without the network; when the repo is not
  cached and ``HF_HUB_OFFLINE`` is set, or the hub cannot be reached within a few seconds, it
  fails at once with one line naming the repo and what to do.
* :func:`port_info` / :func:`port_header` — a port checkpoint's :class:`PortInfo` (from
  ``port_config``: a YAML path, a dict of the port's keys, the name of a published model or of
  its training YAML; else the published model whose hub-cache folder or downloaded copy it is, or
  the ``config.yml`` the port's training writes beside its checkpoints) and the :class:`~elf_fast.checkpoint.CheckpointHeader`
  built from it (:func:`header_for`, the one place that maps the port's lengths to the header).
  Without any of them: :class:`~elf_fast.checkpoint.CheckpointError` naming what is missing,
  never a silent default encoder.
* :func:`check_encoder_fit` — the checkpoint's vocabulary and latent width against its encoder
  (every load): a model trained on T5's 32k vocabulary decoded with another tokenizer gives
  wrong text without any error, so a mismatch raises, naming both numbers.

``huggingface_hub`` (a dependency of transformers) and ``yaml`` (for port YAML files) are imported
only when needed.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from elf_fast import protocol
from elf_fast.checkpoint import RECOMMENDABLE, CheckpointError, CheckpointHeader, DataInfo, EncoderInfo, check_task

ORG = "embedded-language-flows"

_PORT_FILE = re.compile(r"^checkpoint_(\d+)(\.pt|\.pth)?$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: file names of a port YAML config looked for beside a port checkpoint (first found wins)
CONFIG_NAMES = ("config.yml", "config.yaml", "port_config.yml", "port_config.yaml")


# --------------------------------------------------------------------------- what a port file lacks

@dataclass(frozen=True)
class PortInfo:
    """What a port ``checkpoint_<step>`` file lacks, as the port's YAML config says it (plain data).

    ``max_length`` is the whole sequence the network sees (for conditional tasks condition and
    target packed together, the condition taking at most ``max_input_length`` tokens), padded
    with ``pad_token`` (``pad`` or ``eos``). ``sampler`` is the recommended sampler (keys of
    :data:`elf_fast.checkpoint.RECOMMENDABLE`); ``source`` says where this came from.
    """

    task: str                              # unconditional, translation, summary, pairs
    preset: str | None = "ELF-B"           # the port's `model` (ELF-B/M/L); None: read off the shapes
    encoder: str = "t5-small"              # encoder_model_name (its tokenizer too)
    latent_mean: float = 0.0
    latent_std: float = 0.2
    max_length: int = 1024
    max_input_length: int | None = None    # conditional tasks: condition tokens at most
    pad_token: str = "pad"                 # "pad" or "eos"
    sampler: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "task", check_task(self.task))
        conditional = self.task != "unconditional"
        for name in ("max_length", "max_input_length"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if conditional and self.max_input_length is None:
            raise ValueError(f"task {self.task!r} is conditional: it needs max_input_length (condition tokens)")
        if conditional and self.max_input_length >= self.max_length:
            raise ValueError(f"max_input_length {self.max_input_length} leaves no target tokens within "
                             f"max_length {self.max_length}")
        if self.pad_token not in ("pad", "eos"):
            raise ValueError(f"pad_token must be 'pad' or 'eos', got {self.pad_token!r}")
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ValueError(f"encoder must be a non-empty name or path, got {self.encoder!r}")
        if not float(self.latent_std) > 0:
            raise ValueError(f"latent_std must be positive, got {self.latent_std!r}")
        if set(self.sampler) - set(RECOMMENDABLE):
            raise ValueError(f"sampler keys must come from {list(RECOMMENDABLE)}, got {sorted(self.sampler)}")

    @property
    def conditional(self) -> bool:
        return self.task != "unconditional"


def header_for(info: PortInfo) -> CheckpointHeader:
    """The :class:`~elf_fast.checkpoint.CheckpointHeader` of a port checkpoint described by ``info``:
    the one place that maps the port's settings to elf_fast's header. Conditional tasks keep the
    port's packed layout as it is (``max_input_length``, ``max_length``, ``pad_token``;
    docs/method.md §4.1); ``extra["port"]`` records where the description came from. The
    architecture (``model``) is filled in when the weights are loaded."""
    if info.conditional:
        data = DataInfo(task=info.task, max_input_length=info.max_input_length, max_length=info.max_length,
                        pad_token=info.pad_token)
    else:
        data = DataInfo(task=info.task, seq_len=info.max_length)
    port = {"max_length": info.max_length, "max_input_length": info.max_input_length,
            "pad_token": info.pad_token, "source": info.source}
    return CheckpointHeader(preset=info.preset, data=data, sampler=dict(info.sampler), extra={"port": port},
                            encoder=EncoderInfo(name_or_path=info.encoder, mu=float(info.latent_mean),
                                                sigma=float(info.latent_std)))


# --------------------------------------------------------------------------- the published models

@dataclass(frozen=True)
class PublishedModel:
    """One model the port publishes on the hub: its repo, what its checkpoint lacks (``info``), and
    the port's own numbers for it.

    ``port_config`` names the port's training YAML it was trained with; ``sampling_configs`` are the
    port's sampling configs for it (``info.sampler`` is the recommended one); ``reference`` the
    port's README figures (Gen. PPL under GPT-2 Large and unigram entropy, or BLEU / ROUGE);
    ``evaluation`` how the port scores it (:class:`elf_fast.protocol.EvalProtocol`: data, metric,
    sample counts), what ``python -m elf_fast.evaluate --checkpoint <name>`` runs.
    """

    repo_id: str
    info: PortInfo
    params: str
    port_config: str
    reference: dict
    sampling_configs: tuple = ()
    description: str = ""
    evaluation: protocol.EvalProtocol | None = None

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]


def _uncond(steps: int, gamma: float, w_sc: float) -> dict:
    return {"steps": steps, "sampler": "sde", "gamma": gamma, "w_sc": w_sc, "grid": "logit_normal"}


#: The port's sampling configs (src/configs/sampling_configs/*.yml; the few-step one from the port's
#: ``distillation`` branch) as plain data: one entry per config, as the port writes it.
PORT_SAMPLING_CONFIGS = {
    "uncond_sampling_configs.yml": (
        {"sampling_method": "sde", "num_sampling_steps": [32], "cfgs": [1], "sde_gamma": 1.5,
         "self_cond_cfg_scales": [3], "time_schedule": "logit_normal"},
        {"sampling_method": "sde", "num_sampling_steps": [64], "cfgs": [1], "sde_gamma": 1.0,
         "self_cond_cfg_scales": [3], "time_schedule": "logit_normal"},
    ),
    "cond_sampling_configs.yml": (
        {"sampling_method": "ode", "num_sampling_steps": [64], "cfgs": [2], "self_cond_cfg_scales": [1],
         "time_schedule": "logit_normal"},
    ),
    "uncond_fewstep_sampling_configs.yml": (
        {"sampling_method": "sde", "num_sampling_steps": [1, 2, 4, 8], "cfgs": [1], "sde_gamma": 1.5,
         "self_cond_cfg_scales": [2.5], "time_schedule": "logit_normal"},
        {"sampling_method": "sde", "num_sampling_steps": [16, 32], "cfgs": [1], "sde_gamma": 2.0,
         "self_cond_cfg_scales": [2.0], "time_schedule": "logit_normal"},
    ),
}

_COND_SAMPLER = {"steps": 64, "sampler": "ode", "w_sc": 1.0, "cfg": 2.0, "grid": "logit_normal"}

#: The six published models, by repo id. Values from the port (README.md, src/configs/): every one
#: uses the T5-small encoder with latents normalised by (0, 0.2).
PUBLISHED: dict[str, PublishedModel] = {m.repo_id: m for m in (
    PublishedModel(
        f"{ORG}/ELF-B-owt-torch",
        PortInfo("unconditional", "ELF-B", max_length=1024, sampler=_uncond(32, 1.5, 3.0),
                 source=f"{ORG}/ELF-B-owt-torch"),
        params="105M", port_config="train_owt_ELF-B.yml",
        reference={"sampling": "32-step SDE", "gen_ppl": 24.1, "entropy": 5.15},
        sampling_configs=PORT_SAMPLING_CONFIGS["uncond_sampling_configs.yml"],
        evaluation=protocol.unconditional(1000, 1024),
        description="ELF-B, unconditional OpenWebText"),
    PublishedModel(
        f"{ORG}/ELF-M-owt-torch",
        PortInfo("unconditional", "ELF-M", max_length=1024, sampler=_uncond(64, 1.0, 3.0),
                 source=f"{ORG}/ELF-M-owt-torch"),
        params="342M", port_config="train_owt_ELF-M.yml",
        reference={"sampling": "64-step SDE", "gen_ppl": 21.7, "entropy": 5.18},
        sampling_configs=PORT_SAMPLING_CONFIGS["uncond_sampling_configs.yml"],
        evaluation=protocol.unconditional(1000, 1024),
        description="ELF-M, unconditional OpenWebText"),
    PublishedModel(
        f"{ORG}/ELF-L-owt-torch",
        PortInfo("unconditional", "ELF-L", max_length=1024, sampler=_uncond(64, 1.0, 3.0),
                 source=f"{ORG}/ELF-L-owt-torch"),
        params="652M", port_config="train_owt_ELF-L.yml",
        reference={"sampling": "64-step SDE", "gen_ppl": 23.3, "entropy": 5.28},
        sampling_configs=PORT_SAMPLING_CONFIGS["uncond_sampling_configs.yml"],
        evaluation=protocol.unconditional(1000, 1024),
        description="ELF-L, unconditional OpenWebText"),
    PublishedModel(
        f"{ORG}/ELF-B-xsum-torch",
        PortInfo("summary", "ELF-B", max_length=1088, max_input_length=1024, pad_token="eos",
                 sampler=dict(_COND_SAMPLER), source=f"{ORG}/ELF-B-xsum-torch"),
        params="105M", port_config="train_xsum_ELF-B.yml",
        reference={"sampling": "64-step ODE, cfg 2, w_sc 1",
                   "paper_test": {"rouge1": 36.0, "rouge2": 12.2, "rougeL": 27.8},
                   "port_validation": {"rouge1": 36.3, "rouge2": 12.5, "rougeL": 28.1}},
        sampling_configs=PORT_SAMPLING_CONFIGS["cond_sampling_configs.yml"],
        evaluation=protocol.XSUM,
        description="ELF-B, XSum summarisation (document -> one-sentence summary)"),
    PublishedModel(
        f"{ORG}/ELF-B-de-en-torch",
        PortInfo("translation", "ELF-B", max_length=128, max_input_length=64, pad_token="eos",
                 sampler=dict(_COND_SAMPLER), source=f"{ORG}/ELF-B-de-en-torch"),
        params="105M", port_config="train_de-en_ELF-B.yml",
        reference={"sampling": "64-step ODE, cfg 2, w_sc 1", "paper_test": {"bleu": 26.4},
                   "port_validation": {"bleu": 26.7}},
        sampling_configs=PORT_SAMPLING_CONFIGS["cond_sampling_configs.yml"],
        evaluation=protocol.WMT14_DE_EN,
        description="ELF-B, WMT14 German -> English translation"),
    PublishedModel(
        f"{ORG}/ELF-B-PD-owt-torch",
        PortInfo("unconditional", "ELF-B", max_length=1024, sampler=_uncond(8, 1.5, 2.5),
                 source=f"{ORG}/ELF-B-PD-owt-torch"),
        params="105M", port_config="distill_curriculum_ELF-B.yml",
        reference={"sampling": "SDE; 1-8 steps gamma 1.5 w_sc 2.5, 16-32 steps gamma 2.0 w_sc 2.0",
                   "gen_ppl_by_steps": {1: 136.10, 2: 68.25, 4: 34.33, 8: 23.18, 16: 22.12, 32: 21.32},
                   "entropy_by_steps": {1: 5.26, 2: 5.24, 4: 5.16, 8: 5.07, 16: 5.06, 32: 5.04}},
        sampling_configs=PORT_SAMPLING_CONFIGS["uncond_fewstep_sampling_configs.yml"],
        evaluation=protocol.unconditional(500, 1024),
        description="ELF-B after five rounds of progressive distillation (few-step student), unconditional "
                    "OpenWebText"),
)}

_BY_CONFIG = {m.port_config: m for m in PUBLISHED.values()}


def lookup(name: str) -> PublishedModel | None:
    """The published model ``name`` names: its repo id or the part after ``embedded-language-flows/``,
    any case; else None."""
    if not isinstance(name, str):
        return None
    key = name.strip().strip("/").lower()
    for m in PUBLISHED.values():
        if key in (m.repo_id.lower(), m.name.lower()):
            return m
    return None


def published_names() -> str:
    return ", ".join(PUBLISHED)


# --------------------------------------------------------------------------- the port's YAML config

#: The port's defaults (src/configs/config.py) for the keys elf_fast reads: a YAML that leaves one
#: out means this value, exactly as it does for the port.
PORT_DEFAULTS = {"encoder_model_name": "t5-small", "tokenizer_name": None, "latent_mean": 0.0, "latent_std": 1.0,
                 "max_length": 128, "max_input_length": None, "pad_token": "pad", "model": "ELF-B",
                 "data_path": None, "eval_data_path": None, "sampling_configs_path": None}


def sampler_from_port(entry: dict, conditional: bool) -> dict:
    """The sampler (RECOMMENDABLE keys) of one entry of the port's sampling configs: its first
    step count, CFG scale and self-conditioning scale."""
    def first(key, default):
        v = entry.get(key, default)
        return v[0] if isinstance(v, (list, tuple)) else v

    method = entry.get("sampling_method", "ode")
    if method not in ("ode", "sde"):
        raise ValueError(f"sampling_method must be ode or sde, got {method!r}")
    out = {"steps": int(first("num_sampling_steps", 50)), "sampler": method,
           "w_sc": float(first("self_cond_cfg_scales", 1.0)), "grid": entry.get("time_schedule", "logit_normal")}
    if method == "sde":
        out["gamma"] = float(entry.get("sde_gamma", 0.0))
    if conditional:
        out["cfg"] = float(first("cfgs", 1.0))
    return out


def _load_yaml(path: Path):
    from elf_fast.extras import require

    yaml = require("yaml", f"reading the port's YAML config {str(path)!r}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"port config {str(path)!r} cannot be read: {e}") from e


def _find_relative(rel: str, base: Path | None) -> Path | None:
    """``rel`` as given (absolute or from the current folder), else relative to ``base`` or one of
    its parents (the port runs from its repository root, its configs live in src/configs/...)."""
    p = Path(os.path.expanduser(rel))
    if p.is_absolute() or p.exists():
        return p if p.exists() else None
    if base is not None:
        for parent in (base, *base.parents):
            if (parent / p).exists():
                return parent / p
    return None


def _infer_task(cfg: dict) -> str:
    """The port's rule: a config with ``eval_data_path`` trains a conditional model (its eval script
    then samples conditionally). Which one, from the dataset names."""
    if cfg.get("eval_data_path") is None:
        return "unconditional"
    names = f"{cfg.get('data_path') or ''} {cfg.get('eval_data_path') or ''}".lower()
    if any(k in names for k in ("wmt", "de-en", "de_en", "translat")):
        return "translation"
    if any(k in names for k in ("xsum", "summ", "cnn")):
        return "summary"
    return "pairs"


def port_info_from_config(config: dict | str | os.PathLike, *, task: str | None = None) -> PortInfo:
    """:class:`PortInfo` from the port's training config: a YAML file or a dict of its keys
    (``encoder_model_name``, ``tokenizer_name``, ``latent_mean``, ``latent_std``, ``max_length``,
    ``max_input_length``, ``pad_token``, ``model``, ``data_path``, ``eval_data_path``,
    ``sampling_configs`` (inline, as in the ``config.yml`` the port's training writes into its output
    folder), ``sampling_configs_path``; others are ignored, as the port ignores keys it does not know).
    Keys left out take the port's defaults (:data:`PORT_DEFAULTS`, as in the port). ``task``
    overrides the task inferred from ``eval_data_path`` and the dataset names.

    A relative ``encoder_model_name`` that names a folder next to the YAML is taken from there; the
    sampler is the published model's when the config is one of theirs, else the first entry of
    ``sampling_configs``, else of ``sampling_configs_path`` (found as given, or relative to the YAML's
    folder or its parents, or one of the port's own files by name), else none (the method's
    defaults apply).
    """
    base = None
    if isinstance(config, (str, os.PathLike)):
        path = Path(os.path.expanduser(os.fspath(config)))
        if not path.is_file():
            raise FileNotFoundError(f"port config {str(path)!r} does not exist")
        raw = _load_yaml(path)
        base, source = path.resolve().parent, str(path)
    else:
        raw, source = config, "port config options"
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a port config is a mapping of keys to values, got {type(raw).__name__}")
    cfg = {**PORT_DEFAULTS, **{k: v for k, v in raw.items() if k in PORT_DEFAULTS}}

    encoder, tokenizer = cfg["encoder_model_name"], cfg["tokenizer_name"]
    if not isinstance(encoder, str) or not encoder:
        raise ValueError(f"{source}: encoder_model_name must be a name or path, got {encoder!r}")
    if tokenizer is not None and tokenizer != encoder:
        raise ValueError(f"{source}: tokenizer_name {tokenizer!r} differs from encoder_model_name {encoder!r}; "
                         "elf_fast takes the tokenizer from the encoder")
    if base is not None and not os.path.isabs(os.path.expanduser(encoder)) and (base / encoder).is_dir():
        encoder = str(base / encoder)
    preset = cfg["model"]
    from elf_fast.model import PRESETS

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"{source}: model {preset!r} is not a preset ({', '.join(sorted(PRESETS))})")
    task = check_task(task) if task is not None else _infer_task(cfg)
    conditional = task != "unconditional"

    def number(key, kind):
        v = cfg[key]
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise ValueError(f"{key} must be {'an int' if kind is int else 'a number'}, got {v!r}")
        return kind(v)

    try:
        lengths = {"max_length": number("max_length", int),
                   "max_input_length": None if cfg["max_input_length"] is None else number("max_input_length", int)}
        latents = {"latent_mean": number("latent_mean", float), "latent_std": number("latent_std", float)}
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    published = _BY_CONFIG.get(Path(source).name) if base is not None else None
    if published is not None and (published.info.preset, published.info.max_length) != (preset, lengths["max_length"]):
        published = None  # the file has a port name but other contents
    sampler = dict(published.info.sampler) if published is not None else {}
    inline = raw.get("sampling_configs")  # the config.yml the port's training writes has them inline
    if not sampler and inline:
        if not isinstance(inline, (list, tuple)) or not isinstance(inline[0], dict):
            raise ValueError(f"{source}: sampling_configs must be a list of mappings")
        sampler = sampler_from_port(inline[0], conditional)
    if not sampler and cfg["sampling_configs_path"]:
        rel = str(cfg["sampling_configs_path"])
        found = _find_relative(rel, base)
        entries = _load_yaml(found) if found is not None else PORT_SAMPLING_CONFIGS.get(Path(rel).name)
        if entries:
            if not isinstance(entries, (list, tuple)) or not isinstance(entries[0], dict):
                raise ValueError(f"{source}: sampling configs {rel!r} are not a list of mappings")
            sampler = sampler_from_port(entries[0], conditional)
    try:
        return PortInfo(task=task, preset=preset, encoder=encoder, pad_token=cfg["pad_token"], sampler=sampler,
                        source=source, **lengths, **latents)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def port_info(port_config=None, *, checkpoint: str | os.PathLike | None = None, task: str | None = None) -> PortInfo:
    """What a port checkpoint lacks, from ``port_config``: a :class:`PortInfo` or
    :class:`PublishedModel`; a dict of the port's config keys; a path to the port's YAML; the name of
    a published model or of its training YAML (``train_de-en_ELF-B.yml``: what that file says, no
    file needed). Without it, from ``checkpoint``'s surroundings: the published model whose hub-cache
    folder or downloaded copy (a folder named after it) holds it, else a port YAML beside it
    (:data:`CONFIG_NAMES`; the port's training writes its config as ``config.yml`` next to its
    checkpoints). None of them: CheckpointError naming what is missing."""
    if isinstance(port_config, PortInfo):
        return port_config if task is None else replace(port_config, task=task)
    if isinstance(port_config, PublishedModel):
        return port_info(port_config.info, task=task)
    if isinstance(port_config, dict):
        return port_info_from_config(port_config, task=task)
    if port_config is not None:
        name = os.fspath(port_config)
        if os.path.isfile(os.path.expanduser(name)):
            return port_info_from_config(name, task=task)
        published = lookup(name) or _BY_CONFIG.get(Path(name).name)
        if published is not None:
            return port_info(published.info, task=task)
        raise FileNotFoundError(f"port config {name!r} is neither a file nor the name of a published model "
                                f"({published_names()}) or of its training config ({', '.join(_BY_CONFIG)})")
    if checkpoint is not None:
        folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        published = published_for_folder(folder)
        if published is not None:
            return port_info(published.info, task=task)
        for name in CONFIG_NAMES:
            if (folder / name).is_file():
                return port_info_from_config(folder / name, task=task)
    where = f" {str(checkpoint)!r}" if checkpoint is not None else ""
    raise CheckpointError(
        f"port checkpoint{where} carries no encoder, latent mean/std, task or lengths (max_length, max_input_length, "
        "pad_token): pass the port's training YAML (--port-config train_de-en_ELF-B.yml, Python port_config=), put it "
        f"beside the checkpoint as config.yml, or load a published model by name ({published_names()})")


def published_for_folder(folder: Path) -> PublishedModel | None:
    """The published model a folder is a copy of: a hub-cache snapshot
    (``.../models--embedded-language-flows--ELF-B-owt-torch/snapshots/<rev>``) or a folder named after
    it (``hf download <repo> --local-dir ELF-B-owt-torch``)."""
    folder = Path(os.path.abspath(folder))
    for part in (folder.name, *(p.name for p in folder.parents)):
        if part.startswith("models--"):
            return lookup(part[len("models--"):].replace("--", "/"))
    return lookup(folder.name)


def port_header(checkpoint_file: str | os.PathLike, port_config=None, *, task: str | None = None) -> CheckpointHeader | None:
    """The header of ``checkpoint_file`` when it is a port file (:func:`port_info` then
    :func:`header_for`); None for elf_fast's own ``.safetensors`` files, which describe themselves
    (ValueError when ``port_config`` or ``task`` is given for one)."""
    if Path(checkpoint_file).suffix == ".safetensors":
        if port_config is not None or task is not None:
            raise ValueError(f"{str(checkpoint_file)!r} is an elf_fast checkpoint, which describes itself: "
                             "port_config / task apply to the port's checkpoint_<step> files only")
        return None
    return header_for(port_info(port_config, checkpoint=checkpoint_file, task=task))


# --------------------------------------------------------------------------- the encoder must fit

def check_encoder_fit(config, encoder: str | None, tokenizer=None) -> None:
    """CheckpointError unless a network's latent width and vocabulary fit its encoder: ``latent_dim``
    must equal the encoder's hidden size, and ``vocab_size`` lie between the tokenizer's size (its
    base vocabulary or all of it) and the encoder's embedding rows (t5-small: 32,100 tokens, 32,128
    rows; the port sizes the head by its tokenizer, elf_fast's training by the embedding). Reads the
    encoder's config.json and uses ``tokenizer`` (loaded when None)."""
    import transformers

    from elf_fast.encoder import hf_source, load_tokenizer

    src, kw = hf_source(encoder)
    try:
        conf = transformers.AutoConfig.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        raise OSError(f"could not read the configuration of encoder {src!r}: {e}") from e
    name = "the default encoder (all-MiniLM-L6-v2)" if encoder is None else f"encoder {encoder!r}"
    width = getattr(conf, "d_model", None) if getattr(conf, "model_type", "") in ("t5", "mt5", "umt5") else None
    width = width if width is not None else getattr(conf, "hidden_size", None)
    if width is not None and int(width) != config.latent_dim:
        raise CheckpointError(f"the checkpoint's latent width is {config.latent_dim} but {name} has hidden size "
                              f"{width}: it was trained with another encoder (pass the right one: --encoder, "
                              "--port-config)")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(encoder)
    n_tok, rows, V = len(tokenizer), getattr(conf, "vocab_size", None), config.vocab_size
    rows = n_tok if rows is None else int(rows)
    base = getattr(tokenizer, "vocab_size", None) or n_tok  # the tokenizer's vocabulary without added tokens
    if not min(base, n_tok) <= V <= max(rows, n_tok):
        raise CheckpointError(f"the checkpoint's vocabulary has {V} ids but {name} has {n_tok} tokens "
                              f"({rows} embedding rows): decoding would give wrong text; it was trained with another "
                              "encoder (pass the right one: --encoder, --port-config)")


# --------------------------------------------------------------------------- local or hub

@dataclass(frozen=True)
class Resolved:
    """Where ``name_or_path`` was found: ``path`` a local file or folder; ``repo_id`` the hub repo it
    came from (None: a local path); ``published`` its registry entry, if any."""

    path: Path
    repo_id: str | None = None
    published: PublishedModel | None = None


def _looks_like_path(name: str) -> bool:
    if os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(("/", os.sep)):
        return True
    if Path(name).suffix in (".safetensors", ".pt", ".pth", ".bin") or _PORT_FILE.match(Path(name).name):
        return True
    return "/" in name and os.path.isdir(name.split("/")[0])


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(_PORT_FILE.match(p.name) or p.suffix == ".safetensors" for p in folder.iterdir())


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _unreachable() -> str | None:
    """None when the hub's endpoint accepts a connection within 3 s, else why not."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError as e:
        return f"{constants.ENDPOINT} cannot be reached ({e})"
    return None


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir is not None else str(constants.HF_HUB_CACHE)


def download(repo_id: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> Path:
    """The local folder of hub repo ``repo_id`` holding its checkpoint: the hub cache's copy when there
    is one (no network), else downloaded into the cache (the newest ``checkpoint_<step>`` or
    ``.safetensors`` file and the repo's small files; progress bars on stderr). FileNotFoundError
    with one line, within seconds, when it is not cached and the hub is offline or out of reach."""
    try:
        import huggingface_hub as hf
    except ImportError as e:  # pragma: no cover - a transformers dependency
        raise ImportError(f"loading {repo_id!r} from the Hugging Face hub needs the package huggingface_hub "
                          "(pip install huggingface_hub)") from e

    cache = hub_cache_dir(cache_dir)
    try:
        snap = Path(hf.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
        if _has_checkpoint(snap):
            return snap
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and friends): go on
        pass
    todo = (f"download it where the hub is reachable (hf download {repo_id}) and copy the hub cache, "
            f"or a folder of it, here (a folder is loaded by its path)")
    if _offline():
        raise FileNotFoundError(f"{repo_id!r} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set: {todo}")
    why = _unreachable()
    if why is not None:
        raise FileNotFoundError(f"{repo_id!r} is not in the Hugging Face cache {cache} and {why}: {todo}")
    try:
        files = hf.list_repo_files(repo_id, revision=revision)
    except Exception as e:  # noqa: BLE001 - RepositoryNotFoundError, GatedRepoError, HTTP errors ...
        raise FileNotFoundError(f"hub repo {repo_id!r} cannot be listed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from e
    port = sorted((int(m.group(1)), f) for f in files if "/" not in f and (m := _PORT_FILE.match(f)))
    own = sorted(f for f in files if "/" not in f and f.endswith(".safetensors"))
    if not port and not own:
        raise FileNotFoundError(f"hub repo {repo_id!r} holds no checkpoint (no checkpoint_<step> or .safetensors file "
                                f"at its top; files: {files[:10]})")
    patterns = [port[-1][1] if port else own[-1], *CONFIG_NAMES, "README.md"]  # not the run's sample dumps
    try:
        return Path(hf.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001
        raise OSError(f"downloading {repo_id!r} failed: {type(e).__name__}: {e}") from e


def resolve(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
            revision: str | None = None) -> Resolved:
    """What ``name_or_path`` names: an existing local file or folder; a published model (repo id or
    short name); any other hub repo id ``owner/name``. Hub repos are downloaded (:func:`download`).
    A name that looks like a path (``./``, ``/``, ``~``, a checkpoint file name, a first folder that
    exists) but does not exist: FileNotFoundError."""
    name = os.fspath(name_or_path)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name_or_path must be a non-empty path or name, got {name_or_path!r}")
    local = Path(os.path.expanduser(name))
    if local.exists():
        return Resolved(local, None, published_for_folder(local if local.is_dir() else local.parent))
    published = lookup(name)
    if published is None and (_looks_like_path(name) or not _REPO_ID.match(name)):
        raise FileNotFoundError(f"no checkpoint at {name!r} (not a local file or folder, not a published model: "
                                f"{published_names()}, not a hub repo id owner/name)")
    repo_id = published.repo_id if published is not None else name
    return Resolved(download(repo_id, cache_dir=cache_dir, revision=revision), repo_id, published)
