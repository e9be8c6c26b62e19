"""Train ELF with the full objective of docs/method.md §4.

One process (CPU or one GPU)::

    python training/train.py --config training/configs/debian_en_tiny.yaml

Several processes / GPUs on one machine (DDP: NCCL on GPU, gloo on CPU)::

    torchrun --nproc_per_node=2 training/train.py --config training/configs/debian_en_tiny.yaml

Several machines (run on each, node_rank 0..N-1)::

    torchrun --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \\
        --nproc_per_node=8 training/train.py --config training/configs/elf_b_owt.yaml

Any config value can be overridden: ``--override optim.blr=5e-4 --override train.max_steps=2000``
(the sections, their keys and defaults: ``elf_fast/train_config.py``).
Runs resume automatically from the newest checkpoint in ``train.out_dir`` (``--resume PATH``
picks one, ``--no-resume`` starts over). A resumed run continues with exactly the losses an
uninterrupted one would have had: data order, noise draws and the optimiser state all follow
from (seed, step) and the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from elf_fast.checkpoint import CheckpointError, CheckpointHeader, DataInfo, EncoderInfo, save_checkpoint, umask_mode
from elf_fast.encoder import FrozenEncoder
from elf_fast.model import ELF, preset_config
from elf_fast.muon import Muon, cpu_has_native_bf16
from elf_fast.objective import ObjectiveConfig, elf_loss, make_generator
from elf_fast.sampling import compile_model
from elf_fast.cli import ArgumentParser
from elf_fast.train_config import Config, TrainCfg, load_config


# ------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, device)


# ------------------------------------------------------------------------- data
def load_tensors(cfg: Config, encoder: FrozenEncoder, source: str, split: str | None) -> dict[str, torch.Tensor]:
    """Tokenised examples as in-memory tensors (fine for corpora of up to a few GB of ids)."""
    from elf_fast.data import load_text_dataset, pack_unconditional, pad_documents, tokenize_pairs

    ds = load_text_dataset(source, split=split)
    d = cfg.data
    if d.task == "unconditional":
        layout = pack_unconditional if d.pack else pad_documents
        packed = layout(ds, encoder, d.seq_len, encoder.eos_id, text_column=d.text_column, first_line=d.first_line)
        ids = torch.tensor(packed["input_ids"], dtype=torch.long)
        if len(ids) == 0:
            raise ValueError(f"{source!r} ({split}) gives no complete block of {d.seq_len} tokens")
        return {"ids": ids}
    pairs = tokenize_pairs(ds, encoder, d.max_input_length, d.max_length, d.condition_column, d.target_column)
    out = {k: torch.tensor(pairs[k], dtype=torch.long) for k in ("input_ids", "cond_len", "valid_len")}
    if len(out["input_ids"]) == 0:
        raise ValueError(f"{source!r} ({split}) holds no condition/target pairs")
    return out


def cached_latents(cfg: Config, encoder: FrozenEncoder, ids: torch.Tensor, d: Dist, out: Path) -> torch.Tensor:
    """``train.latent_cache``: the corpus's latents, memory-mapped (elf_fast/latent_cache.py); the main
    process encodes them on the first run (under the step's CPU autocast, as make_batch would)."""
    from elf_fast.latent_cache import load_or_build

    tc = cfg.train
    folder = out / "latent_cache" if tc.latent_cache == "auto" else Path(tc.latent_cache)
    enc_amp = _autocast(d.device, tc) if d.device.type == "cpu" else contextlib.nullcontext()
    # the rows encoded in chunks of make_batch's (a micro-batch, by encode's chunks of <= 64): with
    # the same row count the GEMMs block the same way, so float32 latents equal the on-the-fly ones
    chunk = min(64, tc.micro_batch or max(1, tc.global_batch // d.world))
    kw = dict(dtype=tc.latent_cache_dtype, encode_batch=chunk)
    lat = None
    if d.main:
        with enc_amp:
            lat = load_or_build(encoder, ids, folder, **kw)
        print(f"latent cache: {folder} ({tc.latent_cache_dtype}, {lat.numel() * lat.element_size() / 2**30:.2f} GiB)",
              file=sys.stderr)
    d.barrier()
    if lat is None:
        with enc_amp:
            lat = load_or_build(encoder, ids, folder, build=False, **kw)
    return lat


def epoch_batches(n: int, micro: int, d: Dist, seed: int, epoch: int) -> list[torch.Tensor]:
    """This rank's micro-batches of example indices for one epoch (DistributedSampler's rule:
    one permutation per (seed, epoch), strided over ranks, remainder dropped)."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    idx = torch.tensor(list(sampler), dtype=torch.long)
    nb = len(idx) // micro
    return [idx[i * micro:(i + 1) * micro] for i in range(nb)]


def _autocast(device: torch.device, tc: TrainCfg):
    """bf16 autocast for the step: on GPU when ``train.bf16``, on CPU only when ``train.cpu_bf16``."""
    if device.type == "cuda" and tc.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and tc.cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_batch(cfg: Config, data: dict, idx: torch.Tensor, encoder: FrozenEncoder, d: Dist, drop_gen: torch.Generator):
    """Encode one micro-batch: x, targets, loss_mask, cond_mask (all on device). Conditional
    batches use the packed layout (docs/method.md §4.1): padded with the ``pad_token`` id,
    encoded under the block mask, label-dropped rows drawn from ``drop_gen``."""
    from elf_fast.data import pad_packed, pair_loss_mask, pair_masks

    dev = d.device
    if cfg.data.task == "unconditional":
        ids = data["ids"][idx].to(dev)
        mask = torch.ones_like(ids, dtype=torch.bool)
        if "latents" in data:  # train.latent_cache: the encoder's output, computed once
            from elf_fast.latent_cache import rows

            x = rows(data["latents"], idx, dev)
        else:
            x = encoder.encode(ids, mask)
        return dict(x=x, targets=ids, loss_mask=mask, cond_mask=None)
    pad_id = encoder.eos_id if cfg.data.pad_token == "eos" else encoder.pad_id
    cond_len, valid_len = data["cond_len"][idx].to(dev), data["valid_len"][idx].to(dev)
    ids = pad_packed(data["input_ids"][idx].to(dev), valid_len, pad_id)
    cond_mask, valid = pair_masks(cond_len, valid_len, ids.shape[1])
    drop = torch.rand(len(idx), generator=drop_gen, device=drop_gen.device).to(dev) < cfg.data.label_drop_prob
    x = encoder.encode_packed(ids, cond_mask, valid, drop=drop)
    return dict(x=x, targets=ids, loss_mask=pair_loss_mask(valid, cond_mask, cfg.data.pad_token), cond_mask=cond_mask)


class _DDPView:
    """The model as elf_loss sees it under DDP: forwards go through DDP (so its gradient hooks
    and no_sync work), attributes (config, decode_loss) come from the ELF module."""

    def __init__(self, ddp, module: ELF):
        self.ddp, self.module = ddp, module

    def __call__(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


@torch.no_grad()
def evaluate(cfg: Config, ema: ELF, encoder: FrozenEncoder, val: dict | None, d: Dist, loss_fn, step: int,
             tokenizer) -> dict:
    """Rank 0: validation loss of the EMA weights on fixed draws, and a few samples from them."""
    tc = cfg.train
    out: dict = {"step": step}
    if val is not None:
        n = len(next(iter(val.values())))
        micro = min(n, tc.micro_batch or tc.global_batch)
        total = {}
        for b in range(min(tc.eval_batches, max(1, n // micro))):
            idx = torch.arange(b * micro, (b + 1) * micro)
            gen = make_generator(tc.seed + 1, b, 0, d.device)  # the same draws at every evaluation
            batch = make_batch(cfg, val, idx, encoder, d, gen)
            _, stats = loss_fn(ema, batch, gen)
            for k in ("loss", "mse", "ce"):
                total[k] = total.get(k, 0.0) + stats[k].item()
        out.update({f"val_{k}": v / (b + 1) for k, v in total.items()})
    if cfg.data.task == "unconditional" and tc.num_samples > 0:
        from elf_fast.sampling import SamplerConfig, decode, sample_latents, truncate_at_eos

        sc = SamplerConfig(steps=tc.sample_steps)
        z = sample_latents(ema, tc.num_samples, cfg.data.seq_len, sc, seed=step, device=d.device)
        ids = truncate_at_eos(decode(ema, z, sc.w_sc), encoder.eos_id, encoder.pad_id).cpu()
        out["samples"] = [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in ids]
    return out


# ------------------------------------------------------------------- optimiser
def adamw(params, cfg: OptimCfg, lr: float) -> torch.optim.AdamW:
    """AdamW as optim.adamw says: "auto" is the fused implementation for CPU parameters (one pass
    per tensor; PyTorch's CPU default runs six ops per tensor, ~5x slower: 74 against 15 ms a
    step for the built-in model's 384 x 30,522 unembedding, one thread) and PyTorch's default
    elsewhere. Fused and default agree to rounding (one float32 ulp after a step)."""
    params = list(params)
    fused = cfg.adamw == "fused" or (cfg.adamw == "auto" and bool(params) and params[0].device.type == "cpu")
    return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             **({"fused": True} if fused else {}))


def build_optimizers(model: ELF, cfg: OptimCfg, lr: float) -> list[torch.optim.Optimizer]:
    if cfg.name == "adamw":
        return [adamw(model.parameters(), cfg, lr)]
    # Muon for the 2-D weight matrices of the blocks, AdamW for everything else (docs/method.md §4)
    matrices = [p for n, p in model.blocks.named_parameters() if p.ndim == 2]
    ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in ids]
    # Newton-Schulz in bf16 where the device has bf16 arithmetic, else float32 (optim.muon_ns_dtype)
    return [Muon(matrices, lr=lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw",
                 ns_dtype=cfg.muon_ns_dtype),
            adamw(rest, cfg, lr)]


def lr_at(step: int, base: float, warmup: int, total: int = 0, decay: int = 0) -> float:
    """The lr of optimiser step ``step`` (0-based) of a ``total``-step run: linear warm-up over
    ``warmup`` steps, then ``base``, then, over the last ``decay`` steps, linearly down to
    ``base / (decay + 1)`` at the final step (optim.decay_steps; 0: no decay). A run may change its
    decay when it resumes: a constant-lr run's checkpoint can branch into a cool-down."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay > 0 and step >= total - decay:
        f = min(f, (total - step) / (decay + 1))
    return base * f


# ------------------------------------------------------------------ checkpoints
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_training_checkpoint(out: Path, step: int, model: ELF, ema: ELF, optims, header: CheckpointHeader,
                             progress: dict, keep_last: int) -> Path:
    """ckpt_<step>/ with model.safetensors, ema.safetensors (self-describing) and state.pt, written
    into a temporary folder and renamed: a crash never leaves a partial checkpoint under that name."""
    final = out / f"ckpt_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".ckpt_{step:08d}.", dir=out))
    try:
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp's 0700 would hide the checkpoint from other users
        save_checkpoint(tmp / "model.safetensors", model, header)
        save_checkpoint(tmp / "ema.safetensors", ema, header)
        torch.save({"optimizers": [o.state_dict() for o in optims], "progress": progress, "rng": _rng_state()},
                   tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(out.glob("ckpt_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporary ``.ckpt_<step>.*`` folders a killed run left behind while writing a
    checkpoint (complete checkpoints are only ever named ``ckpt_<step>``, so none is touched)."""
    stale = [p for p in out.glob(".ckpt_*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def find_resume(out: Path) -> Path | None:
    done = [p for p in sorted(out.glob("ckpt_*")) if (p / "state.pt").is_file()]
    return done[-1] if done else None


# ------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = ArgumentParser(prog="training/train.py", description=__doc__.splitlines()[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--config", help="YAML file (sections: model, encoder, data, objective, optim, train)")
    ap.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--resume", help="checkpoint folder to resume from (default: the newest in train.out_dir)")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in train.out_dir")
    args = ap.parse_args(argv)
    if args.resume is not None and args.no_resume:
        ap.error("--resume and --no-resume exclude each other")
    return args


#: The settings a resumed run must share with the run that wrote its checkpoint: the model, the
#: data layout and the batch (the optimiser state, data order and noise draws follow from them).
RESUME_MUST_MATCH = (("model", "preset"), ("data", "task"), ("data", "seq_len"), ("data", "pack"),
                     ("data", "first_line"), ("data", "max_input_length"),
                     ("data", "max_length"), ("data", "pad_token"), ("train", "global_batch"), ("train", "seed"),
                     ("optim", "name"))


def check_resume(resume: Path, cfg: Config) -> None:
    """``resume`` is a complete training checkpoint of a run with this config's model, data layout
    and batch (:data:`RESUME_MUST_MATCH`); CheckpointError (or FileNotFoundError) otherwise."""
    from elf_fast.checkpoint import read_header

    if not resume.is_dir():
        raise FileNotFoundError(f"--resume {str(resume)!r} is not a checkpoint folder (ckpt_<step>/)")
    for name in ("model.safetensors", "ema.safetensors", "state.pt"):
        if not (resume / name).is_file():
            raise CheckpointError(f"{str(resume)!r} is not a complete training checkpoint: {name} is missing")
    old = read_header(resume / "model.safetensors").extra.get("train_config")
    if not isinstance(old, dict):
        return  # written without its config: nothing to compare
    new = dataclasses.asdict(cfg)
    conditional = cfg.data.task != "unconditional"
    diff = []
    for section, key in RESUME_MUST_MATCH:
        if section == "data" and key in (("max_input_length", "max_length", "pad_token") if not conditional
                                         else ("seq_len", "pack", "first_line")):
            continue  # not used by this task
        was = (old.get(section) or {}).get(key) if isinstance(old.get(section), dict) else None
        if was is not None and was != new[section][key]:
            diff.append(f"{section}.{key} {was!r} there, {new[section][key]!r} now")
    if diff:
        raise CheckpointError(f"cannot resume from {str(resume)!r}: its run was trained with other settings ("
                              + "; ".join(diff) + "); pass --no-resume or another train.out_dir to start over")


def _init_file(path: Path) -> Path:
    """The file ``train.init_from`` names: itself, or a ``ckpt_<step>/`` folder's EMA weights."""
    return path / "ema.safetensors" if path.is_dir() else path


def init_weights(path: Path, model: ELF, ema: ELF, encoder: FrozenEncoder, cfg: Config) -> dict:
    """``train.init_from``: copy a checkpoint's weights (a ``ckpt_<step>/`` folder: its EMA weights)
    into ``model`` and ``ema``; the optimiser starts fresh. CheckpointError when the checkpoint is
    another architecture or was trained on another latent space (encoder scale, latent dim, vocab).
    Returns what the new run's header records about its start."""
    from elf_fast.checkpoint import load_checkpoint

    src = _init_file(path)
    if not src.is_file():
        raise FileNotFoundError(f"train.init_from {str(path)!r}: no checkpoint file there")
    init, h = load_checkpoint(src, max_length=cfg.data.length)
    enc = h.encoder
    if enc.name_or_path != cfg.encoder.name_or_path or enc.mu != encoder.mu or \
            (enc.sigma is not None and abs(enc.sigma - encoder.sigma) > 1e-12):
        raise CheckpointError(f"train.init_from {str(path)!r} was trained on encoder {enc.name_or_path!r} "
                              f"(mu {enc.mu}, sigma {enc.sigma}); this run uses {cfg.encoder.name_or_path!r} "
                              f"(mu {encoder.mu}, sigma {encoder.sigma})")
    try:
        for m in (model, ema):
            m.load_state_dict(init.state_dict())
    except RuntimeError as e:  # load_state_dict's missing / unexpected keys, wrong shapes
        raise CheckpointError(f"train.init_from {str(path)!r} is not a {cfg.model.preset} of this run's shape: "
                              f"{' '.join(str(e).split())[:300]}") from None
    return init_source(path, h)


def init_source(path: Path, h: CheckpointHeader | None = None) -> dict:
    """What a run's header records about the checkpoint ``train.init_from`` started it from."""
    if h is None:
        from elf_fast.checkpoint import read_header

        h = read_header(_init_file(path))
    built_in = h.extra.get("built_in") if isinstance(h.extra.get("built_in"), dict) else {}
    return {"path": str(path), "built_in": built_in or None, "from_step": built_in.get("total_steps", built_in.get("step"))}


def load_resume_state(resume: Path, model: ELF, ema: ELF, optims) -> dict:
    """Load a training checkpoint's weights, optimiser states and progress; CheckpointError when
    it does not fit (another architecture, a truncated or foreign state.pt)."""
    from elf_fast.checkpoint import read_state

    try:
        model.load_state_dict(read_state(resume / "model.safetensors")[0])
        ema.load_state_dict(read_state(resume / "ema.safetensors")[0])
    except RuntimeError as e:  # load_state_dict's missing / unexpected keys, wrong shapes
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{str(resume)!r} does not fit this run's model: {' '.join(str(e).split())[:300]}") from None
    try:
        state = torch.load(resume / "state.pt", map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("progress"), dict):
            raise ValueError("no progress entry")
        if len(state["optimizers"]) != len(optims):
            raise ValueError(f"{len(state['optimizers'])} optimiser states for {len(optims)} optimisers")
        for o, st in zip(optims, state["optimizers"]):
            o.load_state_dict(st)
        step = state["progress"]["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r}")
        state["rng"]["torch"]
    except Exception as e:  # truncated zip, refused pickle, foreign dict ...
        raise CheckpointError(f"{str(resume / 'state.pt')!r} is corrupt, truncated or not this run's "
                              f"training state: {' '.join(str(e).split())[:300]}") from None
    return state


def trim_metrics(path: Path, step: int) -> int:
    """Drop the lines of ``metrics.jsonl`` logged after ``step`` (by a run killed after its last
    checkpoint, whose steps the resumed run logs again) and lines cut off by the kill; returns how
    many were dropped. Rewritten atomically."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step
        except ValueError:
            ok = False
        if ok:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class NonFiniteLoss(ValueError):
    """The training loss (or gradient norm) became NaN or infinite: no checkpoint is written."""


def check_finite(bad: torch.Tensor, step: int, where: str) -> None:
    """``bad`` (a device flag accumulated without host syncs) says whether any step so far had a
    non-finite loss or gradient norm: stop then, before anything is saved."""
    if bool(bad):
        raise NonFiniteLoss(f"the training loss or gradient norm became NaN or infinite by step {step} ({where}); "
                            "no checkpoint was written for it: lower optim.blr, check the data and the config")


@dataclass
class Recipe:
    """What a run trains; everything else (data, DDP, optimisers, EMA, checkpoints, resume, logs)
    is :func:`run_training`'s. :func:`elf_recipe` is ELF training; ``training/distill.py`` gives
    its own (a student initialised from a checkpoint, the distillation loss)."""

    init_model: Callable[[Config, FrozenEncoder, torch.device], ELF]  # the weights at step 0
    header: Callable[[Config, FrozenEncoder], CheckpointHeader]        # what checkpoints say of the model
    loss: Callable  # loss(net, batch, generator) -> (loss with grad, dict of detached stats)


def elf_recipe(cfg: Config) -> Recipe:
    """ELF training (docs/method.md §4): a fresh ``model.preset`` and the objective of elf_fast.objective."""
    obj = ObjectiveConfig(**cfg.objective)

    def init_model(cfg: Config, encoder: FrozenEncoder, device: torch.device) -> ELF:
        mcfg = preset_config(cfg.model.preset, latent_dim=encoder.latent_dim, vocab_size=encoder.vocab_size,
                             max_length=cfg.data.length)
        return ELF(mcfg).to(device)

    def header(cfg: Config, encoder: FrozenEncoder) -> CheckpointHeader:
        d_cfg = cfg.data
        conditional = d_cfg.task != "unconditional"
        return CheckpointHeader(
            preset=cfg.model.preset,
            encoder=EncoderInfo(name_or_path=cfg.encoder.name_or_path, mu=encoder.mu, sigma=encoder.sigma),
            data=(DataInfo(task=d_cfg.task, max_input_length=d_cfg.max_input_length, max_length=d_cfg.max_length,
                           pad_token=d_cfg.pad_token) if conditional else DataInfo(seq_len=d_cfg.seq_len)),
            extra={"objective": obj.to_dict(), "train_config": dataclasses.asdict(cfg)})

    def loss(net, batch: dict, gen: torch.Generator):
        return elf_loss(net, batch["x"], batch["targets"], batch["loss_mask"],
                        cond_mask=batch["cond_mask"], cfg=obj, generator=gen)

    return Recipe(init_model, header, loss)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.override)  # a bad config is a user error (elf_fast.cli.run)
    run_training(cfg, elf_recipe(cfg), resume=args.resume, no_resume=args.no_resume)
    return 0


def run_training(cfg: Config, recipe: Recipe, *, resume: str | None = None, no_resume: bool = False) -> int:
    """Train ``recipe`` under ``cfg`` to ``train.max_steps`` (or its epochs), resuming from the newest
    complete checkpoint of ``train.out_dir`` (or ``resume``; none with ``no_resume``); returns the
    step it ended at."""
    d = init_distributed()
    tc, oc = cfg.train, cfg.optim
    out = Path(tc.out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"train.out_dir {str(out)!r} exists and is not a folder")
    resume = None if no_resume else Path(resume) if resume else find_resume(out)
    if resume is not None:
        check_resume(resume, cfg)  # before any work: another model, data layout or batch is refused
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        for p in remove_stale_temporaries(out):
            print(f"removed {p}, the partial checkpoint of an interrupted run", file=sys.stderr)
    d.barrier()

    if d.device.type == "cpu" and tc.cpu_malloc_reuse:
        from elf_fast.cpu_alloc import reuse_freed_memory

        if not reuse_freed_memory() and d.main:
            print("train.cpu_malloc_reuse: the C library is not glibc; its allocator is left as it is", file=sys.stderr)
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    encoder = FrozenEncoder(cfg.encoder.name_or_path, mu=cfg.encoder.mu, sigma=cfg.encoder.sigma, device=d.device)
    d_cfg = cfg.data
    model = recipe.init_model(cfg, encoder, d.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    model.gradient_checkpointing = tc.grad_checkpointing
    header = recipe.header(cfg, encoder)

    train = load_tensors(cfg, encoder, d_cfg.train, d_cfg.train_split)
    if tc.latent_cache and d_cfg.task == "unconditional":
        train["latents"] = cached_latents(cfg, encoder, train["ids"], d, out)
    val = None
    if tc.eval_every and d.main and d_cfg.validation:
        val = load_tensors(cfg, encoder, d_cfg.validation, d_cfg.validation_split)
    n = len(next(iter(train.values())))
    micro = tc.micro_batch or max(1, tc.global_batch // d.world)
    accum = tc.global_batch // (micro * d.world)
    if accum < 1 or accum * micro * d.world != tc.global_batch:
        raise ValueError(f"train.global_batch {tc.global_batch} is not a multiple of micro_batch {micro} x "
                         f"world size {d.world}")
    steps_per_epoch = (n // d.world // micro) // accum
    if steps_per_epoch < 1:
        raise ValueError(f"{n} training examples are fewer than one global batch of {tc.global_batch}")
    total = tc.max_steps or steps_per_epoch * tc.epochs
    lr = oc.blr * tc.global_batch / 256
    optims = build_optimizers(model, oc, lr)

    step = 0
    if resume is None and tc.init_from:
        header = replace(header, extra={**header.extra, "init_from": init_weights(Path(tc.init_from), model, ema,
                                                                                 encoder, cfg)})
        if d.main:
            print(f"initialised the weights from {tc.init_from}", file=sys.stderr)
    elif tc.init_from:  # a resumed run keeps saying where its weights started
        from elf_fast.checkpoint import read_header

        was = read_header(resume / "model.safetensors").extra.get("init_from")
        header = replace(header, extra={**header.extra, "init_from": was or init_source(Path(tc.init_from))})
    if resume is not None:
        state = load_resume_state(resume, model, ema, optims)
        step = state["progress"]["step"]
        if d.main and trim_metrics(out / "metrics.jsonl", step):
            print(f"metrics.jsonl: dropped the lines logged after step {step} (the resumed run logs them again)",
                  file=sys.stderr)
        # the loop draws from (seed, step) generators; the global streams are restored for anything else
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if d.main:
            print(f"resumed from {resume} at step {step}", file=sys.stderr)
    if tc.compile:  # before DDP; dynamic batch: the self-conditioning sub-batches change size
        compile_model(model, tc.compile, dynamic=None)
    net = model
    if d.world > 1:
        # broadcast_buffers=False: the only buffers (RoPE tables) are constants, and ranks make
        # different numbers of no-grad forwards per step (self-conditioning sub-batches), so a
        # per-forward buffer broadcast would pair up mismatched collectives
        net = _DDPView(torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, broadcast_buffers=False), model)
    amp = _autocast(d.device, tc)
    if d.main and d.device.type == "cpu" and tc.cpu_bf16 and cpu_has_native_bf16() is False:
        print("warning: train.cpu_bf16 is on but this CPU has no AVX512-BF16/AMX: bf16 is emulated and the "
              "step can be several times slower than float32 (seen: 5x on an AVX2-only EPYC)", file=sys.stderr)
    # on CPU the frozen encoder is a third of the step, so cpu_bf16 covers it too; on GPU it keeps
    # its own dtype (the latents are the targets)
    enc_amp = amp if d.device.type == "cpu" else contextlib.nullcontext()

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not d.main, file=sys.stderr)
    metrics = open(out / "metrics.jsonl", "a") if d.main else None
    board = None
    if d.main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            board = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # TensorBoard is optional: metrics.jsonl has everything
            pass
    acc: dict[str, torch.Tensor] = {}  # per-step statistics summed on device: one host sync per log
    bad = torch.zeros((), dtype=torch.bool, device=d.device)  # a non-finite loss or gradient norm so far
    n_acc, t_log, tokens_log = 0, time.perf_counter(), 0
    batches, cur_epoch = None, -1
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != cur_epoch:
            batches, cur_epoch = epoch_batches(n, micro, d, tc.seed, epoch), epoch
        step_lr = lr_at(step, lr, oc.warmup_steps, total, oc.decay_steps)
        for g in (o for opt in optims for o in opt.param_groups):
            g["lr"] = step_lr
        for k in range(accum):
            idx = batches[in_epoch * accum + k]
            gen = make_generator(tc.seed, step * accum + k, d.rank, d.device)
            with enc_amp:
                batch = make_batch(cfg, train, idx, encoder, d, gen)
            sync = contextlib.nullcontext() if (k == accum - 1 or d.world == 1) else net.ddp.no_sync()
            with sync, amp:
                loss, stats = recipe.loss(net, batch, gen)
                (loss / accum).backward()
            for key, v in stats.items():
                acc[key] = acc.get(key, 0) + v.detach().float() / accum
            bad |= ~torch.isfinite(loss.detach()).all()
            tokens_log += batch["targets"].numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
        bad |= ~torch.isfinite(grad_norm)
        for o in optims:
            o.step()
            o.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - oc.ema_decay)
        step += 1
        acc["grad_norm"] = acc.get("grad_norm", 0) + grad_norm.detach().float()
        n_acc += 1
        if step % tc.log_every == 0 or step == total:
            check_finite(bad, step, "at a log")
            keys = sorted(acc)
            vals = torch.stack([acc[k_] for k_ in keys]) / n_acc  # means over the interval's steps
            if d.world > 1:
                dist.all_reduce(vals)
                vals /= d.world
            now = time.perf_counter()
            rec = {"step": step, "epoch": epoch, "lr": step_lr,
                   "tokens_per_s": tokens_log * d.world / (now - t_log), **dict(zip(keys, vals.tolist()))}
            if d.main:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                if board is not None:
                    for k_, v_ in rec.items():
                        board.add_scalar(f"train/{k_}", v_, step)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            acc, n_acc, t_log, tokens_log = {}, 0, now, 0
        bar.update(1)
        if (tc.ckpt_every and step % tc.ckpt_every == 0) or step == total:
            check_finite(bad, step, "before a checkpoint")
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise NonFiniteLoss(f"the weights became NaN or infinite by step {step}; no checkpoint was written "
                                    "for it: lower optim.blr, check the data and the config")
            if d.main:
                save_training_checkpoint(out, step, model, ema, optims, header,
                                         {"step": step, "epoch": epoch, "batch_in_epoch": in_epoch + 1}, tc.keep_last)
            d.barrier()
        if tc.eval_every and step % tc.eval_every == 0:
            if d.main:
                ev = evaluate(cfg, ema, encoder, val, d, recipe.loss, step, encoder.tokenizer)
                with open(out / "samples.jsonl", "a") as f:
                    f.write(json.dumps(ev, ensure_ascii=False) + "\n")
                if board is not None:
                    for k_, v_ in ev.items():
                        if k_.startswith("val_"):
                            board.add_scalar(f"eval/{k_[4:]}", v_, step)
                if "val_loss" in ev:
                    bar.write(f"step {step}: validation loss {ev['val_loss']:.4f}")
            d.barrier()
    bar.close()
    if metrics:
        metrics.close()
    if board is not None:
        board.close()
    if d.world > 1:
        dist.destroy_process_group()
    if d.main:
        newest = find_resume(out)
        print(f"done at step {step}: newest checkpoint {newest if newest else '(none written)'} (sample it with "
              f"python -m elf_fast.sample --checkpoint {out}); logs in {out / 'metrics.jsonl'}", file=sys.stderr)
    return step


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))
