"""``python -m elf_fast.sample``: generate text with an ELF checkpoint.

With no arguments it loads the checkpoint shipped inside the package
(``elf_fast/assets/*.safetensors``, a small ELF trained on Debian's package descriptions) and
prints a few unconditional samples. Were no checkpoint shipped, it would say so and sample
from a randomly initialised ELF-T built on the default encoder's vocabulary (text = noise).

Sampler settings come from, in order: the command line; the checkpoint's recommended settings
(a ``sampler`` entry in its header, which the built-in checkpoint has); docs/method.md §5's
defaults (unconditional 32-step SDE, gamma 1.5, w_sc 3; conditional 64-step ODE, cfg 2).

Examples::

    python -m elf_fast.sample --num-samples 8 --steps 32 --sampler sde --gamma 1.5 --sc-cfg 3
    python -m elf_fast.sample --checkpoint runs/debian/latest.safetensors --out samples.jsonl
    python -m elf_fast.sample --device cuda --num-samples 256 --compile reduce-overhead
    python -m elf_fast.sample --checkpoint ckpt/ --condition "Ein Werkzeug zum ..." --cfg 2 --sampler ode --steps 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from elf_fast.checkpoint import default_sample_length, load_checkpoint
from elf_fast.model import create_model
from elf_fast.sampling import COMPILE_MODES, SamplerConfig, compile_model, decode, sample_latents, truncate_at_eos

ASSETS = Path(__file__).resolve().parent / "assets"


def shipped_checkpoint() -> Path | None:
    found = sorted(ASSETS.glob("*.safetensors"))
    return found[0] if found else None


def placeholder_model(encoder_name: str | None, length: int, seed: int = 0):
    """A randomly initialised ELF-T on the encoder's width and vocabulary (no trained weights)."""
    from transformers import AutoConfig

    from elf_fast.encoder import DEFAULT_ENCODER, resolve_encoder_path

    path = resolve_encoder_path(encoder_name)
    conf = AutoConfig.from_pretrained(path, local_files_only=Path(str(path)).is_dir())
    C = getattr(conf, "d_model", None) or conf.hidden_size
    torch.manual_seed(seed)
    model = create_model("ELF-T", latent_dim=C, vocab_size=conf.vocab_size, max_length=max(length, 64))
    header = {"preset": "ELF-T", "encoder": {"name_or_path": encoder_name or DEFAULT_ENCODER}, "placeholder": True}
    return model.eval(), header


def load_tokenizer(header: dict):
    from transformers import AutoTokenizer

    from elf_fast.encoder import resolve_encoder_path

    enc = header.get("encoder") or {}
    path = resolve_encoder_path(enc.get("name_or_path"))
    return AutoTokenizer.from_pretrained(path, local_files_only=Path(str(path)).is_dir())


def special_ids(tokenizer) -> tuple[int, int]:
    """(eos, pad): T5's </s>, or [SEP] for BERT-like tokenizers."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError("the tokenizer has neither an EOS nor a SEP token")
    return eos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos


# Printed whenever the placeholder model stands in for a trained one.
PLACEHOLDER_NOTE = ("NOTE: this version of elf_fast ships no trained checkpoint yet; sampling from a RANDOMLY "
                    "INITIALISED ELF-T (placeholder). The pipeline runs end to end, but the text is noise. "
                    "Pass --checkpoint to use trained weights.")


@dataclass
class SamplingSetup:
    """A loaded ELF with its tokenizer: what sampling needs, set up the way ``elf_fast.sample`` does."""

    model: torch.nn.Module
    header: dict
    checkpoint: str | None     # None: the random placeholder
    tokenizer: object
    eos: int
    pad: int
    device: torch.device

    @property
    def placeholder(self) -> bool:
        return self.checkpoint is None

    @property
    def data(self) -> dict:
        return self.header.get("data") or {}

    @property
    def cond_len(self) -> int:
        return int(self.data.get("cond_len", 0) or 0)

    def default_length(self) -> int:
        """The checkpoint's target length (conditional) or training length (unconditional), else 64."""
        return default_sample_length(self.header, self.model.config.max_length)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU) or a torch device string, checked up front."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SystemExit(f"error: --device {name!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"error: --device {name}: CUDA is not available here (no GPU or no CUDA build of torch)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"error: --device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def load_generator(checkpoint: str | None, *, device: torch.device, dtype: str | None, length: int = 0,
                   seed: int = 0, compile_mode: str | None = None) -> SamplingSetup:
    """``--checkpoint``, else the shipped checkpoint, else the placeholder (printing PLACEHOLDER_NOTE);
    ``compile_mode`` puts the network under torch.compile (see :func:`elf_fast.sampling.compile_model`)."""
    ckpt = checkpoint or shipped_checkpoint()
    if ckpt is None:
        model, header = placeholder_model(None, length or 64, seed)
        print(PLACEHOLDER_NOTE, file=sys.stderr)
    else:
        model, header = load_checkpoint(ckpt)
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = model.to(device).set_block_dtype(torch_dtype)
    if compile_mode:
        compile_model(model, compile_mode)
        print(f"compiling the network (torch.compile mode {compile_mode}): the first batch takes longer",
              file=sys.stderr)
    tokenizer = load_tokenizer(header)
    eos, pad = special_ids(tokenizer)
    return SamplingSetup(model, header, None if ckpt is None else str(ckpt), tokenizer, eos, pad, device)


def load_condition_encoder(gen: SamplingSetup):
    from elf_fast.encoder import FrozenEncoder

    enc = gen.header.get("encoder") or {}
    return FrozenEncoder(enc.get("name_or_path"), mu=enc.get("mu", 0.0), sigma=enc.get("sigma"), device=gen.device)


def generate(gen: SamplingSetup, cfg: SamplerConfig, *, n: int, length: int, batch_size: int = 0, seed: int = 0,
             conditions: list[str] | None = None, encoder=None, progress: bool = True,
             desc: str = "sampling") -> list[dict]:
    """Sample ``n`` texts (one per condition when ``conditions`` is given): batch ``b0`` uses
    seed ``seed + b0`` (one Philox stream per batch), so a seed and batch size fix the texts.

    Returns one record per sample: ``index``, ``text``, ``seed`` (and ``condition``).
    """
    from tqdm import tqdm

    cond_len = gen.cond_len
    if conditions is not None:
        n = len(conditions)
        if encoder is None:
            encoder = load_condition_encoder(gen)
    if cond_len + length > gen.model.config.max_length:
        raise SystemExit(f"error: {cond_len} condition + {length} target tokens exceed the model's "
                         f"max_length {gen.model.config.max_length}")
    bs = batch_size or min(n, 32)
    device, records = gen.device, []
    with tqdm(total=-(-n // bs) * cfg.steps, desc=desc, unit="step", disable=not progress, file=sys.stderr) as bar:
        for b0 in range(0, n, bs):
            B = min(bs, n - b0)
            batch_seed = seed + b0  # one Philox stream per batch: batches never share noise
            x_cond = cond_mask = attn = None
            if conditions is not None:
                c_ids, c_mask = encoder.tokenize(conditions[b0:b0 + B], cond_len)
                t_ids = torch.full((B, length), gen.pad, dtype=torch.long)
                t_mask = torch.ones(B, length, dtype=torch.bool)
                x_cond, _, valid = encoder.encode_pair(c_ids.to(device), c_mask.to(device), t_ids.to(device),
                                                       t_mask.to(device))
                cond_mask = torch.zeros(B, cond_len + length, dtype=torch.bool, device=device)
                cond_mask[:, :cond_len] = True
                attn = valid.to(device)
            z = sample_latents(gen.model, B, cond_len + length, cfg, seed=batch_seed, x_cond=x_cond,
                               cond_mask=cond_mask, attn_mask=attn, device=device, progress=lambda _: bar.update(1))
            ids = truncate_at_eos(decode(gen.model, z, cfg.w_sc, attn_mask=attn)[:, cond_len:], gen.eos, gen.pad).cpu()
            for j in range(B):
                rec = {"index": b0 + j, "text": gen.tokenizer.decode(ids[j].tolist(), skip_special_tokens=True).strip(),
                       "seed": batch_seed}
                if conditions is not None:
                    rec["condition"] = conditions[b0 + j]
                records.append(rec)
    return records


def add_compile_arg(ap) -> None:
    """``--compile MODE``, shared by ``elf_fast.sample`` and ``elf_fast.evaluate``."""
    ap.add_argument("--compile", choices=COMPILE_MODES, default=None, metavar="MODE",
                    help="torch.compile the network (" + ", ".join(COMPILE_MODES) + "; reduce-overhead adds "
                         "CUDA graphs on CUDA); the first batch then includes the compile time")


def add_sampler_args(ap: argparse.ArgumentParser) -> None:
    """The sampler options shared by ``elf_fast.sample`` and ``elf_fast.evaluate``; None means the
    defaults of docs/method.md §5, which depend on the checkpoint (see :func:`sampler_config`)."""
    ap.add_argument("--steps", type=int, help="default: 32 (unconditional), 64 (conditional)")
    ap.add_argument("--sampler", choices=("sde", "ode"), help="default: sde (unconditional), ode (conditional)")
    ap.add_argument("--gamma", type=float, help="SDE churn (default 1.5)")
    ap.add_argument("--sc-cfg", type=float, help="self-conditioning CFG scale w_sc (default: 3 / 1 conditional)")
    ap.add_argument("--cfg", type=float, help="CFG scale for conditional checkpoints (default 2)")


# Keys a checkpoint header's "sampler" entry may set, and the command-line option of each.
RECOMMENDABLE = {"steps": "steps", "sampler": "sampler", "gamma": "gamma", "w_sc": "sc_cfg", "cfg": "cfg"}


def recommended_sampler(header: dict) -> dict:
    """The checkpoint's recommended sampler settings (its header's ``sampler`` entry), checked."""
    rec = header.get("sampler") or {}
    if not isinstance(rec, dict) or set(rec) - set(RECOMMENDABLE):
        raise SystemExit(f"error: the checkpoint header's 'sampler' entry must be a dict with keys from "
                         f"{sorted(RECOMMENDABLE)}, got {rec!r}")
    return rec


def given_sampler_options(args) -> dict:
    """The sampler settings set on the command line, by their header (``RECOMMENDABLE``) names."""
    return {k: getattr(args, opt) for k, opt in RECOMMENDABLE.items() if getattr(args, opt) is not None}


def sampler_config(args, conditional: bool, recommended: dict | None = None) -> SamplerConfig:
    """Each setting from the command line, else ``recommended`` (the checkpoint's), else the method's
    section 5: unconditional 32-step SDE, gamma 1.5, w_sc 3; conditional 64-step ODE, cfg 2, w_sc 1."""
    recommended = recommended or {}

    def pick(key, uncond, cond):
        given = getattr(args, RECOMMENDABLE[key])
        if given is not None:
            return given
        return recommended.get(key, cond if conditional else uncond)

    try:
        return SamplerConfig(steps=int(pick("steps", 32, 64)), sampler=pick("sampler", "sde", "ode"),
                             gamma=float(pick("gamma", 1.5, 1.5)), w_sc=float(pick("w_sc", 3.0, 1.0)),
                             cfg=float(pick("cfg", 1.0, 2.0)) if conditional else 1.0, grid=args.grid)
    except (TypeError, ValueError) as e:
        source = f" (the checkpoint recommends {recommended})" if recommended else ""
        raise SystemExit(f"error: {e}{source}") from e


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m elf_fast.sample", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="elf_fast .safetensors, a port checkpoint_<step> file, or a directory "
                                         "(default: the checkpoint shipped in the package)")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=0, help="default: min(num-samples, 32)")
    ap.add_argument("--length", type=int, default=0, help="target tokens (default: the checkpoint's, else 64)")
    add_sampler_args(ap)
    ap.add_argument("--grid", choices=("logit_normal", "uniform"), default="logit_normal")
    ap.add_argument("--condition", action="append", help="condition text (repeatable; conditional checkpoints)")
    ap.add_argument("--condition-file", help="one condition per line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="transformer-block weights (default: bfloat16 on CUDA, float32 on CPU)")
    add_compile_arg(ap)
    ap.add_argument("--out", help="write one JSON line per sample here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.num_samples < 1:
        ap.error("--num-samples must be >= 1")
    if args.batch_size < 0 or args.length < 0:
        ap.error("--batch-size and --length must be >= 0")
    return args


def _conditions(args) -> list[str] | None:
    conds = list(args.condition or [])
    if args.condition_file:
        p = Path(args.condition_file)
        if not p.is_file():
            raise SystemExit(f"error: --condition-file {str(p)!r} does not exist")
        conds += [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return conds or None


def main(argv=None) -> int:
    args = parse_args(argv)
    conditions = _conditions(args)
    gen = load_generator(args.checkpoint, device=resolve_device(args.device), dtype=args.dtype, length=args.length,
                         seed=args.seed, compile_mode=args.compile)
    cond_len = gen.cond_len
    if conditions and not cond_len:
        raise SystemExit("error: --condition given, but this checkpoint is unconditional")
    if cond_len and not conditions:
        raise SystemExit("error: this checkpoint is conditional: pass --condition TEXT or --condition-file")
    length = args.length or gen.default_length()
    if args.cfg is not None and not cond_len:
        raise SystemExit("error: --cfg applies to conditional checkpoints only")
    recommended = recommended_sampler(gen.header)
    cfg = sampler_config(args, conditional=bool(cond_len), recommended=recommended)
    given = given_sampler_options(args)
    taken = {k: v for k, v in recommended.items() if k not in given}
    if taken:
        print("using the checkpoint's recommended " + ", ".join(f"{k} {v}" for k, v in taken.items())
              + " (options on the command line take precedence)", file=sys.stderr)
    start = time.perf_counter()
    records = generate(gen, cfg, n=args.num_samples, length=length, batch_size=args.batch_size, seed=args.seed,
                       conditions=conditions, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    for rec in records:
        print(f"[{rec['index']}] {rec['text']}")
    n = len(records)
    print(f"{n} samples x {length} tokens in {elapsed:.1f} s ({n * length / elapsed:.0f} tokens/s) on {gen.device}, "
          f"{cfg.steps}-step {cfg.sampler.upper()}, w_sc {cfg.w_sc}" + (f", cfg {cfg.cfg}" if conditions else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
