"""Loading and saving ELF weights.

Two formats:

* **elf_fast's own**: one ``.safetensors`` file whose header metadata carries a JSON
  description (``elf_fast`` key): the architecture (:class:`~elf_fast.model.ELFConfig`), the
  preset name, the encoder and tokenizer, the latent statistics (mu, sigma) and anything else
  the writer adds. Written to a temporary file and renamed, so a crash never leaves a
  half-written checkpoint under the final name.
* **the official PyTorch port's** ``checkpoint_<step>`` files: ``torch.save`` dicts with
  ``params`` and ``ema_params1`` (EMA preferred), read with ``weights_only=True``. The
  architecture is read off the tensor shapes.

:func:`load_checkpoint` takes either file, or a directory (the newest ``checkpoint_<step>``
or the newest ``.safetensors`` in it).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import fields
from pathlib import Path

import torch

from elf_fast.model import ELF, ELFConfig, config_from_state_dict, preset_config, rope_table

FORMAT = "elf_fast/1"

#: The task vocabulary of a checkpoint header's ``data.task``: what training writes and every reader
#: parses. The value is the reference metric a conditional task is scored with (docs/method.md §6).
#: ``pairs`` is a conditional task of unnamed kind (scored with both metrics).
TASK_METRICS = {"unconditional": None, "translation": "bleu", "summary": "rouge", "pairs": "both"}
_TASK_ALIASES = {"summarization": "summary", "summarisation": "summary"}

_PORT_NAME = re.compile(r"^checkpoint_(\d+)(\.pt|\.pth)?$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def check_task(task: str) -> str:
    """``task`` in the vocabulary of :data:`TASK_METRICS` (aliases mapped), else ValueError."""
    task = _TASK_ALIASES.get(task, task)
    if task not in TASK_METRICS:
        raise ValueError(f"data.task must be one of {', '.join(TASK_METRICS)}, got {task!r}")
    return task


def task_metric(header: dict) -> str | None:
    """The reference metric for the checkpoint's task (bleu, rouge, both; None: unconditional).
    Headers without a known task get both."""
    task = (header.get("data") or {}).get("task")
    return TASK_METRICS.get(_TASK_ALIASES.get(task, task), "both")


def default_sample_length(header: dict, max_length: int) -> int:
    """Tokens a sample has unless told otherwise: the checkpoint's target length (conditional) or its
    training length (unconditional), else 64; never more positions than the model has after the
    condition."""
    data = header.get("data") or {}
    room = max_length - int(data.get("cond_len", 0) or 0)
    return min(int(data.get("tgt_len", 0) or data.get("seq_len", 0) or 64), room)


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open()``/``mkdir()`` would give. tempfile's
    mkstemp/mkdtemp create 0600/0700 entries; checkpoints written through them get this mode
    instead, so that they are as readable as any other file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used (corrupt, truncated, foreign or mismatched)."""


def save_checkpoint(path: str | os.PathLike, model: ELF, meta: dict | None = None, *, preset: str | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s weights and a self-describing header to ``path`` (.safetensors), atomically.

    ``dtype`` (e.g. ``torch.bfloat16``) stores floating-point tensors in that type to halve the
    file; :func:`load_checkpoint` copies them into the model's float32 parameters.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"elf_fast checkpoints end in .safetensors, got {path.name!r}")
    header = {"format": FORMAT, "model": model.config.to_dict(), "preset": preset, **(meta or {})}
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


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    if path.is_file():
        return path
    port = [(int(m.group(1)), p) for p in path.iterdir() if (m := _PORT_NAME.match(p.name)) and p.is_file()]
    if port:
        return max(port)[1]
    own = sorted(path.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    if own:
        return own[-1]
    raise FileNotFoundError(f"no checkpoint_<step> or .safetensors file in directory {str(path)!r}")


def read_state(path: str | os.PathLike, *, prefer_ema: bool = True) -> tuple[dict, dict]:
    """(state_dict, header) of a checkpoint file or directory; the header is {} for port files."""
    file = _resolve(Path(path))
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{str(file)!r} is corrupt or truncated: {e}") from e
        if "elf_fast" not in meta:
            raise CheckpointError(f"{str(file)!r} is a safetensors file without an elf_fast header")
        header = json.loads(meta["elf_fast"])
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{str(file)!r} has format {header.get('format')!r}, expected {FORMAT!r}")
        return state, header
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


def _config(state: dict, header: dict, preset: str | None, max_length: int | None) -> ELFConfig:
    if "model" in header:
        known = {f.name for f in fields(ELFConfig)}
        cfg = ELFConfig(**{k: v for k, v in header["model"].items() if k in known})
        if max_length:
            cfg = ELFConfig(**{**cfg.to_dict(), "max_length": max_length})
    else:
        cfg = config_from_state_dict(state, max_length=max_length)
    if preset is not None:
        want = preset_config(preset, latent_dim=cfg.latent_dim, vocab_size=cfg.vocab_size, max_length=cfg.max_length)
        diff = [f"{k}: preset {getattr(want, k)} vs checkpoint {getattr(cfg, k)}"
                for k in ("depth", "hidden_size", "num_heads") if getattr(want, k) != getattr(cfg, k)]
        if diff:
            raise CheckpointError(f"checkpoint does not match preset {preset!r}: " + "; ".join(diff))
    return cfg


def load_checkpoint(path: str | os.PathLike, *, preset: str | None = None, max_length: int | None = None,
                    device: str | torch.device = "cpu", prefer_ema: bool = True) -> tuple[ELF, dict]:
    """Build the model a checkpoint describes and load it (strict). Returns ``(model, header)``.

    ``preset`` checks the architecture against a preset name; ``max_length`` overrides the
    RoPE table length (port files do not record it; default 1024).
    """
    state, header = read_state(path, prefer_ema=prefer_ema)
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
    return model.eval(), header
