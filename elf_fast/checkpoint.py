"""Loading and saving ELF weights.

Two formats:

* **elf_fast's own**: one ``.safetensors`` file whose header metadata carries a JSON
  description (``elf_fast`` key), typed as :class:`CheckpointHeader` (version
  :data:`HEADER_VERSION`): the architecture (:class:`~elf_fast.model.ELFConfig`), the preset
  name, the encoder and its latent statistics (mu, sigma), the task and its lengths, the
  recommended sampler settings, and whatever else the writer records (training config,
  provenance). Written to a temporary file and renamed, so a crash never leaves a
  half-written checkpoint under the final name.
* **the official PyTorch port's** ``checkpoint_<step>`` files: ``torch.save`` dicts with
  ``params`` and ``ema_params1`` (EMA preferred), read with ``weights_only=True``. The
  architecture is read off the tensor shapes.

:func:`load_checkpoint` takes either file, a training checkpoint folder ``ckpt_<step>/`` (its
EMA weights), a training run folder (its newest complete checkpoint), or a folder of port
``checkpoint_<step>`` files or ``.safetensors`` files (the newest).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from elf_fast import validate
from elf_fast.model import ELF, ELFConfig, config_from_state_dict, preset_config, rope_table

FORMAT = "elf_fast/1"
#: The version of the header layout (:class:`CheckpointHeader`). Headers written before it existed
#: (no ``version`` key) are version 1 and load the same way.
HEADER_VERSION = 3

#: The task vocabulary of a checkpoint header's ``data.task``: what training writes and every reader
#: parses. The value is the reference metric a conditional task is scored with (docs/method.md §6).
#: ``pairs`` is a conditional task of unnamed kind (scored with both metrics).
TASK_METRICS = {"unconditional": None, "translation": "bleu", "summary": "rouge", "pairs": "both"}
_TASK_ALIASES = {"summarization": "summary", "summarisation": "summary"}

#: The sampler settings a header may recommend (its ``sampler`` entry): the fields of
#: :class:`elf_fast.sampling.SamplerConfig` that are a matter of taste rather than of the model.
RECOMMENDABLE = ("steps", "sampler", "gamma", "w_sc", "cfg", "grid")

_PORT_NAME = re.compile(r"^checkpoint_(\d+)(\.pt|\.pth)?$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def check_task(task: str) -> str:
    """``task`` in the vocabulary of :data:`TASK_METRICS` (aliases mapped), else ValueError."""
    task = _TASK_ALIASES.get(task, task)
    if task not in TASK_METRICS:
        raise ValueError(f"data.task must be one of {', '.join(TASK_METRICS)}, got {task!r}")
    return task


@dataclass(frozen=True)
class EncoderInfo:
    """The frozen encoder a checkpoint was trained on: ``x = (enc(s) - mu) / sigma``."""

    name_or_path: str | None = None   # None: the bundled default encoder (all-MiniLM-L6-v2)
    mu: float = 0.0
    sigma: float | None = None        # None: the encoder's known default (elf_fast.encoder)

    def __post_init__(self):
        if self.name_or_path is not None and (not isinstance(self.name_or_path, str) or not self.name_or_path):
            raise ValueError(f"encoder.name_or_path must be a non-empty string or null, got {self.name_or_path!r}")
        object.__setattr__(self, "mu", validate.number("encoder.mu", self.mu))
        if self.sigma is not None:
            object.__setattr__(self, "sigma", validate.number("encoder.sigma", self.sigma, 0.0, low_open=True))


@dataclass(frozen=True)
class DataInfo:
    """What a checkpoint was trained to generate: the task and its lengths (tokens).

    Conditional tasks use the packed layout (docs/method.md §4.1): at most ``max_input_length``
    condition tokens and the target in one sequence of ``max_length``, padded at the end with
    the tokenizer's padding id or its EOS id (``pad_token`` pad | eos). A sample's target is
    the ``max_length - max_input_length`` tokens after its condition.
    """

    task: str = "unconditional"
    seq_len: int = 0           # unconditional: the training length
    max_input_length: int = 0  # conditional: condition tokens at most
    max_length: int = 0        # conditional: condition + target tokens
    pad_token: str = "pad"     # conditional: pad | eos

    def __post_init__(self):
        object.__setattr__(self, "task", check_task(self.task))
        for name in ("seq_len", "max_input_length", "max_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"data.{name} must be an int >= 0, got {v!r}")
        if self.pad_token not in ("pad", "eos"):
            raise ValueError(f"data.pad_token must be 'pad' or 'eos', got {self.pad_token!r}")
        if self.task == "unconditional":
            if self.max_input_length or self.max_length:
                raise ValueError("an unconditional task has no max_input_length / max_length (use seq_len)")
        elif not 0 < self.max_input_length < self.max_length:
            raise ValueError(f"data.task {self.task!r} needs 0 < max_input_length < max_length, got "
                             f"{self.max_input_length} and {self.max_length}")

    @property
    def conditional(self) -> bool:
        return self.task != "unconditional"

    @property
    def target_length(self) -> int:
        """Target tokens a conditional sample has: ``max_length - max_input_length``."""
        return self.max_length - self.max_input_length

    @property
    def metric(self) -> str | None:
        """The reference metric of the task: bleu, rouge, both (pairs); None when unconditional."""
        return TASK_METRICS[self.task]

    def to_dict(self) -> dict:
        if self.conditional:
            return {"task": self.task, "max_input_length": self.max_input_length, "max_length": self.max_length,
                    "pad_token": self.pad_token}
        return {"task": self.task, **({"seq_len": self.seq_len} if self.seq_len else {})}


@dataclass(frozen=True)
class CheckpointHeader:
    """The description every elf_fast checkpoint carries beside its weights; what training writes
    and every reader (sampling, evaluation, export) parses.

    ``model`` is the architecture (None until written: :func:`save_checkpoint` fills it in from
    the model), ``sampler`` the recommended sampler settings (keys of :data:`RECOMMENDABLE`),
    ``extra`` everything else a writer recorded (training config, objective, provenance) kept as
    plain JSON. :meth:`from_dict` reads every header version; unknown top-level keys go to
    ``extra``.
    """

    model: ELFConfig | None = None
    preset: str | None = None
    encoder: EncoderInfo = field(default_factory=EncoderInfo)
    data: DataInfo = field(default_factory=DataInfo)
    sampler: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    version: int = HEADER_VERSION

    def __post_init__(self):
        if not isinstance(self.sampler, dict) or set(self.sampler) - set(RECOMMENDABLE):
            raise ValueError(f"the header's 'sampler' entry must be a dict with keys from {list(RECOMMENDABLE)}, "
                             f"got {self.sampler!r}")
        if "cfg" in self.sampler and not self.conditional:
            raise ValueError("the header's 'sampler' entry recommends cfg, which applies to conditional checkpoints only")
        for k, v in self.sampler.items():  # the same limits as the sampler's own (elf_fast.validate.LIMITS)
            if k in validate.LIMITS:
                validate.setting(k, v, f"the header's recommended {k}")
            elif (k, v) not in (("sampler", "sde"), ("sampler", "ode"), ("grid", "logit_normal"), ("grid", "uniform")):
                raise ValueError(f"the header's recommended {k} {v!r} is not a choice of the sampler")

    @property
    def conditional(self) -> bool:
        return self.data.conditional

    def default_sample_length(self, max_length: int | None = None) -> int:
        """Tokens a sample has unless told otherwise: the target length
        ``max_length - max_input_length`` (conditional) or the training length (unconditional),
        else 64; never more positions than the model has (``max_length``: the model's, by
        default the header's architecture)."""
        if max_length is None:
            max_length = self.model.max_length if self.model is not None else 1024
        if self.conditional:
            return self.data.target_length
        return min(self.data.seq_len or 64, max_length)

    @classmethod
    def from_dict(cls, d: dict) -> "CheckpointHeader":
        """Parse a header (any version); ValueError naming the entry that is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"a checkpoint header is a JSON object, got {type(d).__name__}")
        version = d.get("version", 1)
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"header version must be a positive int, got {version!r}")
        if version > HEADER_VERSION:
            raise ValueError(f"header version {version} is newer than this elf_fast reads ({HEADER_VERSION}); "
                             "upgrade elf_fast")
        model = None
        if d.get("model") is not None:
            known = {f.name for f in fields(ELFConfig)}
            model = ELFConfig(**{k: v for k, v in _entry(d, "model").items() if k in known})
        enc = _entry(d, "encoder")
        encoder = EncoderInfo(name_or_path=enc.get("name_or_path"), mu=enc.get("mu", 0.0) or 0.0,
                              sigma=enc.get("sigma"))
        data = dict(_entry(d, "data"))
        if "cond_len" in data:  # versions 1-2: a fixed condition block of cond_len and tgt_len target slots
            cond, tgt = data.pop("cond_len") or 0, data.pop("tgt_len", 0) or 0
            if cond:
                data.update(max_input_length=cond, max_length=cond + tgt)
            data.setdefault("task", "pairs" if cond else "unconditional")  # version 1: task not always written
        keys = ("task", "seq_len", "max_input_length", "max_length", "pad_token")
        data = {k: data[k] for k in keys if data.get(k) is not None}
        extra = {k: v for k, v in d.items()
                 if k not in ("format", "version", "model", "preset", "encoder", "data", "sampler")}
        return cls(model=model, preset=d.get("preset"), encoder=encoder, data=DataInfo(**data),
                   sampler=dict(_entry(d, "sampler")), extra=extra, version=version)

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "version": HEADER_VERSION, "model": None if self.model is None else self.model.to_dict(),
               "preset": self.preset, "encoder": asdict(self.encoder), "data": self.data.to_dict()}
        if self.sampler:
            out["sampler"] = dict(self.sampler)
        return {**out, **self.extra}


def _entry(d: dict, key: str) -> dict:
    v = d.get(key) or {}
    if not isinstance(v, dict):
        raise ValueError(f"header entry {key!r} must be a JSON object, got {v!r}")
    return v


def as_header(header: dict | CheckpointHeader | None) -> CheckpointHeader:
    """A :class:`CheckpointHeader` from a header, a header dict or None (an empty header)."""
    if isinstance(header, CheckpointHeader):
        return header
    return CheckpointHeader.from_dict(header or {})


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open()``/``mkdir()`` would give. tempfile's
    mkstemp/mkdtemp create 0600/0700 entries; checkpoints written through them get this mode
    instead, so that they are as readable as any other file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used (corrupt, truncated, foreign or mismatched)."""


def save_checkpoint(path: str | os.PathLike, model: ELF, header: CheckpointHeader | dict | None = None, *,
                    preset: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s weights and its :class:`CheckpointHeader` to ``path`` (.safetensors), atomically.

    ``header`` (a CheckpointHeader, or a header dict, parsed) describes the encoder, task and
    the rest; its architecture is taken from ``model`` and ``preset`` (when given) replaces its
    preset. ``dtype`` (e.g. ``torch.bfloat16``) stores floating-point tensors in that type to
    halve the file; :func:`load_checkpoint` copies them into the model's float32 parameters.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"elf_fast checkpoints end in .safetensors, got {path.name!r}")
    header = as_header(header)
    header = replace(header, model=model.config, preset=preset if preset is not None else header.preset).to_dict()
    tensors = {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous().cpu()
               for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"elf_fast": json.dumps(header)})
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _strip_wrappers(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for p in _WRAPPER_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def _resolve(path: Path, prefer_ema: bool = True) -> Path:
    """The checkpoint file ``path`` names: a file; a training checkpoint folder ``ckpt_<step>/``
    (its EMA weights, or the raw ones with ``prefer_ema=False``); a training run folder (its newest
    complete ``ckpt_<step>/``); a folder of port ``checkpoint_<step>`` files (the newest step); or a
    folder of ``.safetensors`` files (the newest)."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is neither a checkpoint file nor a folder")
    names = ("ema.safetensors", "model.safetensors") if prefer_ema else ("model.safetensors", "ema.safetensors")
    for name in names:
        if (path / name).is_file():
            return path / name
    steps = sorted(p for p in path.glob("ckpt_*") if p.is_dir() and any((p / n).is_file() for n in names))
    if steps:  # only complete checkpoints have the name ckpt_<step> (they are written under a temporary one)
        return _resolve(steps[-1], prefer_ema)
    port = [(int(m.group(1)), p) for p in path.iterdir() if (m := _PORT_NAME.match(p.name)) and p.is_file()]
    if port:
        return max(port)[1]
    own = sorted(path.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    if own:
        return own[-1]
    raise FileNotFoundError(
        f"no checkpoint in directory {str(path)!r}: looked for ema.safetensors / model.safetensors (a training "
        "checkpoint folder), ckpt_<step>/ folders holding them (a training run), checkpoint_<step> files (the "
        "official port) and *.safetensors files")


def read_state(path: str | os.PathLike, *, prefer_ema: bool = True, tensors: bool = True) -> tuple[dict, dict]:
    """(state_dict, raw header dict) of a checkpoint file or directory; for port files the header
    says where the weights came from (``source``, ``weights``, ``step``). :func:`read_header`
    parses it. ``tensors=False`` leaves an elf_fast file's weights unread (an empty state dict:
    the header alone, from the file's metadata)."""
    file = _resolve(Path(path), prefer_ema)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{str(file)!r} is corrupt or truncated: {e}") from e
        if "elf_fast" not in meta:
            raise CheckpointError(f"{str(file)!r} is a safetensors file without an elf_fast header")
        try:
            header = json.loads(meta["elf_fast"])
        except ValueError as e:
            raise CheckpointError(f"{str(file)!r} has an elf_fast header that is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{str(file)!r} has an elf_fast header that is not a JSON object "
                                  f"(a {type(header).__name__})")
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{str(file)!r} has format {header.get('format')!r}, expected {FORMAT!r}")
        return state, header
    try:  # memory-mapped: a port training checkpoint also holds the raw weights and the optimiser state,
        # several times the size of the EMA weights read from it (ELF-L: ~10 GB in all)
        blob = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) torch file cannot be mapped: read it whole
        try:
            blob = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, pickle refused by weights_only, not a torch file ...
            raise CheckpointError(f"{str(file)!r} is corrupt, truncated or not a torch checkpoint: {e}") from e
    if not isinstance(blob, dict):
        raise CheckpointError(f"{str(file)!r} holds a {type(blob).__name__}, not a checkpoint dict")
    keys = ("ema_params1", "params") if prefer_ema else ("params", "ema_params1")
    for key in keys:
        if isinstance(blob.get(key), dict):
            return _strip_wrappers(blob[key]), {"source": str(file), "weights": key, "step": blob.get("step")}
    if "t_emb_tokens" in blob or any(k.startswith(_WRAPPER_PREFIXES) for k in blob):
        return _strip_wrappers(blob), {"source": str(file), "weights": "state_dict"}
    raise CheckpointError(f"{str(file)!r} has neither 'ema_params1' nor 'params' (keys: {sorted(blob)[:10]})")


def read_header(path: str | os.PathLike, raw: dict | None = None) -> CheckpointHeader:
    """The parsed header of a checkpoint (``raw``: the dict :func:`read_state` returned for it;
    without it an elf_fast file's metadata is read, not its weights)."""
    if raw is None:
        raw = read_state(path, tensors=False)[1]
    try:
        return CheckpointHeader.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unusable header: {e}") from e


def _config(state: dict, header: CheckpointHeader, preset: str | None, max_length: int | None) -> ELFConfig:
    if header.model is not None:
        cfg = header.model
        if max_length:
            cfg = replace(cfg, max_length=max_length)
    else:
        cfg = config_from_state_dict(state, max_length=max_length)
    if preset is not None:
        want = preset_config(preset, latent_dim=cfg.latent_dim, vocab_size=cfg.vocab_size, max_length=cfg.max_length)
        diff = [f"{k}: preset {getattr(want, k)} vs checkpoint {getattr(cfg, k)}"
                for k in ("depth", "hidden_size", "num_heads") if getattr(want, k) != getattr(cfg, k)]
        if diff:
            raise CheckpointError(f"checkpoint does not match preset {preset!r}: " + "; ".join(diff))
    return cfg


def resolve_checkpoint(path: str | os.PathLike, *, prefer_ema: bool = True) -> Path:
    """The checkpoint file ``path`` names (a file, or the one a folder holds: see :func:`load_checkpoint`)."""
    return _resolve(Path(path), prefer_ema)


def load_checkpoint(path: str | os.PathLike, *, preset: str | None = None, max_length: int | None = None,
                    device: str | torch.device = "cpu", prefer_ema: bool = True,
                    header: CheckpointHeader | dict | None = None) -> tuple[ELF, CheckpointHeader]:
    """Build the model a checkpoint describes and load it (strict). Returns ``(model, header)``;
    ``header.model`` is the architecture built (for port files: read off the tensor shapes).

    ``preset`` checks the architecture against a preset name; ``max_length`` overrides the
    RoPE table length (port files do not record it; default 1024). ``header`` describes a port
    file, which carries none of its own (encoder, task, lengths: :func:`elf_fast.hub.port_header`);
    ValueError for an elf_fast file, which describes itself.
    """
    state, raw = read_state(path, prefer_ema=prefer_ema)
    if header is None:
        header = read_header(path, raw)
    elif raw.get("format") == FORMAT:
        raise ValueError(f"{str(path)!r} is an elf_fast checkpoint with its own header; header= is for port files")
    else:
        header = as_header(header)
        header = replace(header, extra={**raw, **header.extra})
    cfg = _config(state, header, preset, max_length)
    with torch.device("meta"):
        model = ELF(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(k for k in expected & set(state) if tuple(state[k].shape) != tuple(model.state_dict()[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{name} keys ({len(keys)}): {keys[:10]}{' ...' if len(keys) > 10 else ''}")
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit ELF({cfg}): " + "; ".join(parts))
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    # non-persistent buffers are not in the state dict: rebuild them on the device
    model.rope_cos, model.rope_sin = (t.to(device) for t in rope_table(cfg))
    return model.eval(), replace(header, model=cfg)
