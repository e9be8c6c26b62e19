"""The training configuration: the sections of a ``training/train.py`` YAML file (model, encoder,
data, objective, optim, train) as dataclasses, and :func:`load_config`, which reads a file, applies
``--override section.key=value`` items and checks every key and value before a run starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from elf_fast import validate
from elf_fast.checkpoint import check_task
from elf_fast.extras import require
from elf_fast.objective import ObjectiveConfig
from elf_fast.sampling import COMPILE_MODES


@dataclass
class ModelCfg:
    preset: str = "ELF-T"


@dataclass
class EncoderCfg:
    name_or_path: str | None = None   # None: the bundled all-MiniLM-L6-v2
    mu: float = 0.0
    sigma: float | None = None        # None: the encoder's default (0.2 for T5)


@dataclass
class DataCfg:
    task: str = "unconditional"       # or a conditional task: translation, summary, pairs (checkpoint.TASK_METRICS)
    train: str = ""                   # saved dataset folder, json/jsonl/txt/parquet file(s) or hub name
    train_split: str | None = "train"
    validation: str | None = None     # like train (may be the same saved dataset folder); None: no val loss
    validation_split: str | None = "validation"
    seq_len: int = 128                # unconditional: the length of one example
    pack: bool = True                 # unconditional: True, documents joined (EOS after each) and cut into
                                      # seq_len blocks (the paper's OpenWebText layout); False, one document
                                      # per example, EOS-padded to seq_len (longer ones dropped): short texts
    first_line: bool = False          # unconditional: each document's first line only (Debian's synopsis)
    max_input_length: int = 64        # pairs: condition tokens at most (docs/method.md §4.1, packed layout)
    max_length: int = 128             # pairs: condition + target tokens in one sequence
    pad_token: str = "eos"            # pairs: pad with EOS (padding carries loss) or pad (it does not)
    text_column: str = "text"
    condition_column: str = "condition"
    target_column: str = "target"
    label_drop_prob: float = 0.1      # pairs: condition dropped (the CFG unconditional branch)

    @property
    def length(self) -> int:
        """Positions of one example: seq_len, or max_length for a conditional task."""
        return self.seq_len if self.task == "unconditional" else self.max_length


@dataclass
class OptimCfg:
    name: str = "muon"                # "muon" (2-D block weights) + AdamW for the rest, or "adamw"
    blr: float = 1e-3                 # lr = blr * global_batch / 256
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    decay_steps: int = 0              # the run's last decay_steps steps take the lr linearly to 0
                                      # (warm-up, constant, decay); 0: constant after warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    muon_ns_dtype: str = "auto"       # Muon's Newton-Schulz: "auto" (bf16 on GPU / CPUs with AVX512-BF16
                                      # or AMX, float32 on others, where bf16 is emulated), "bfloat16"
                                      # (torch.optim.Muon's), "float32" (elf_fast/muon.py)
    adamw: str = "auto"               # AdamW's implementation: "auto" (fused, one pass per tensor, for
                                      # CPU parameters, where PyTorch's default is a loop of six ops
                                      # per tensor, ~5x slower; PyTorch's default elsewhere), "fused",
                                      # "default" (PyTorch's choice: foreach on CUDA, loop on CPU)


@dataclass
class TrainCfg:
    out_dir: str = "runs/elf"
    global_batch: int = 32
    micro_batch: int = 0              # per process and accumulation step; 0: global_batch / world
    epochs: int = 1
    max_steps: int = 0                # 0: epochs decide
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500             # 0: only the final checkpoint
    keep_last: int = 3
    eval_every: int = 0               # 0: never; else validation loss + a few samples
    eval_batches: int = 4
    num_samples: int = 4
    sample_steps: int = 16
    bf16: bool = True                 # bf16 autocast for the blocks on GPU
    cpu_bf16: bool = False            # bf16 autocast on CPU too (blocks and the frozen encoder;
                                      # where bf16 is native, the decode head's GEMMs too: ELF.decode_loss;
                                      # attention under grad in float32, ATen's bf16 backward being slower):
                                      # ~2x on CPUs with AVX512-BF16 / AMX, slower on others
    cpu_malloc_reuse: bool = True     # on CPU: large blocks from the heap, kept between steps
                                      # (glibc mallopt; elf_fast/cpu_alloc.py): 5-13 % of a step
    grad_checkpointing: bool = False
    latent_cache: str = ""            # unconditional data: "" (off: encode every batch), "auto"
                                      # (<out_dir>/latent_cache) or a folder: the frozen encoder's
                                      # latents of the corpus computed once, memory-mapped
                                      # (elf_fast/latent_cache.py); conditional tasks ignore it
    latent_cache_dtype: str = "float32"  # or "float16": half the file, values rounded once
    init_from: str = ""               # a checkpoint file (or ckpt_<step>/ folder: its EMA weights) whose
                                      # weights start a new run (model and EMA; fresh optimiser, step 0);
                                      # ignored when the run resumes. Same architecture and encoder
    compile: str = ""                 # "" (off) or a torch.compile mode for the network ("default",
                                      # "max-autotune-no-cudagraphs", ...); the first steps compile


@dataclass
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    encoder: EncoderCfg = field(default_factory=EncoderCfg)
    data: DataCfg = field(default_factory=DataCfg)
    objective: dict = field(default_factory=dict)   # ObjectiveConfig fields
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"config section {where!r} must be a mapping of keys to values, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) in {where}: {unknown}; known: {sorted(known)}")
    return cls(**{k: _coerce(f"{where}.{k}", str(known[k].type), v) for k, v in values.items()})


def _coerce(key: str, type_name: str, value):
    """Check a config value against its field's annotation; YAML reads ``2e-3`` as a string
    (it needs ``2.0e-3``), so numeric strings become numbers here instead of failing later. Numbers
    must be finite, integers fit 64 bits (elf_fast.validate)."""
    if value is None and "None" in type_name:
        return None
    base = type_name.split("|")[0].strip()
    if base.startswith("tuple["):
        n = base.count(",") + 1
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f"{key} must be a list of {n} numbers, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", "float", v) for i, v in enumerate(value))
    if base == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {value!r}") from None
        return validate.number(key, value)
    if base == "int":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return validate.integer(key, value)
    if base == "bool" and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if base == "str" and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


_SECTIONS = {"model": ModelCfg, "encoder": EncoderCfg, "data": DataCfg, "optim": OptimCfg, "train": TrainCfg}


def load_config(path: str | None, overrides: list[str]) -> Config:
    """The config of ``path`` (a YAML file of sections; None: no file) with ``overrides``
    (``section.key=value``, the value read as YAML) applied; ValueError names a bad key or value."""
    yaml = require("yaml", "reading a training config")
    raw: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {path!r} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config {path!r} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config {path!r} must be a mapping of sections")
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--override takes section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        try:
            raw.setdefault(section, {})[name] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--override {item!r}: the value is not valid YAML: {' '.join(str(e).split())}") from None
    unknown = sorted(set(raw) - set(_SECTIONS) - {"objective"})
    if unknown:
        raise ValueError(f"unknown config section(s): {unknown}; sections: {sorted(_SECTIONS) + ['objective']}")
    objective = raw.get("objective", {}) or {}
    if not isinstance(objective, dict):
        raise ValueError(f"config section 'objective' must be a mapping of keys to values, got {objective!r}")
    objective = {k: _coerce(f"objective.{k}", "float", v) if isinstance(v, (str, float)) else v
                 for k, v in objective.items()}
    cfg = Config(**{k: _build(cls, raw.get(k, {}) or {}, k) for k, cls in _SECTIONS.items()},
                 objective=objective)
    try:
        ObjectiveConfig(**cfg.objective)  # validates the objective's keys and values early
    except (TypeError, ValueError) as e:
        raise ValueError(f"objective section: {e}") from None
    if not isinstance(cfg.model.preset, str):
        raise ValueError(f"model.preset must be a preset name, got {cfg.model.preset!r}")
    if not isinstance(cfg.data.task, str):
        raise ValueError(f"data.task must be a string, got {cfg.data.task!r}")
    cfg.data.task = check_task(cfg.data.task)
    if not isinstance(cfg.data.train, str):
        raise ValueError(f"data.train must be a string, got {cfg.data.train!r}")
    if not cfg.data.train:
        raise ValueError("data.train is required (a dataset folder, data file or hub name)")
    d = cfg.data
    if d.task != "unconditional":
        if not 0 < d.max_input_length < d.max_length:
            raise ValueError(f"data.max_input_length and data.max_length must satisfy 0 < max_input_length < max_length, "
                             f"got {d.max_input_length} and {d.max_length}")
        if d.pad_token not in ("pad", "eos"):
            raise ValueError(f"data.pad_token must be 'pad' or 'eos', got {d.pad_token!r}")
        if not 0.0 <= d.label_drop_prob <= 1.0:
            raise ValueError(f"data.label_drop_prob must be in [0, 1], got {d.label_drop_prob}")
    if cfg.optim.name not in ("muon", "adamw"):
        raise ValueError(f"optim.name must be 'muon' or 'adamw', got {cfg.optim.name!r}")
    o = cfg.optim  # checked as written: the error quotes the config's value, not the scaled learning rate
    if not o.blr > 0:
        raise ValueError(f"optim.blr must be > 0, got {o.blr}")
    if not (o.weight_decay >= 0 and o.warmup_steps >= 0 and o.decay_steps >= 0 and o.grad_clip > 0
            and 0 <= o.ema_decay < 1):
        raise ValueError(f"optim.weight_decay, warmup_steps and decay_steps must be >= 0, grad_clip > 0 and ema_decay in "
                         f"[0, 1); got {o.weight_decay}, {o.warmup_steps}, {o.decay_steps}, {o.grad_clip}, {o.ema_decay}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if not isinstance(cfg.train.out_dir, str) or not cfg.train.out_dir.strip():
        raise ValueError(f"train.out_dir must name a folder, got {cfg.train.out_dir!r}")
    for name in ("seq_len", "max_input_length", "max_length"):
        validate.integer(f"data.{name}", getattr(cfg.data, name), 1, 1 << 20)
    if cfg.train.global_batch < 1:
        raise ValueError("train.global_batch must be >= 1")
    if cfg.train.log_every < 1 or min(cfg.train.ckpt_every, cfg.train.eval_every, cfg.train.max_steps) < 0:
        raise ValueError("train.log_every must be >= 1 and train.ckpt_every / eval_every / max_steps >= 0")
    if cfg.optim.adamw not in ("auto", "fused", "default"):
        raise ValueError(f"optim.adamw must be 'auto', 'fused' or 'default', got {cfg.optim.adamw!r}")
    if cfg.optim.muon_ns_dtype not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"optim.muon_ns_dtype must be 'auto', 'bfloat16' or 'float32', got {cfg.optim.muon_ns_dtype!r}")
    if cfg.train.latent_cache_dtype not in ("float32", "float16"):
        raise ValueError(f"train.latent_cache_dtype must be 'float32' or 'float16', got "
                         f"{cfg.train.latent_cache_dtype!r}")
    if cfg.train.compile and cfg.train.compile not in COMPILE_MODES:
        raise ValueError(f"train.compile must be '' (off) or one of {COMPILE_MODES}, got {cfg.train.compile!r}")
    return cfg
