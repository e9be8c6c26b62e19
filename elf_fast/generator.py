"""The generation library: an ELF checkpoint with its tokenizer (and, for conditional tasks, its
encoder), ready to sample text.

::

    from elf_fast import Generator

    gen = Generator.from_pretrained()                    # the built-in model
    print(gen.sample(3))                                 # three unconditional texts
    gen = Generator.from_pretrained("embedded-language-flows/ELF-B-owt-torch")  # a published model (hub)
    gen = Generator.from_checkpoint("runs/de_en/ckpt_00005000/ema.safetensors")
    print(gen.translate(["Werkzeug zum Bearbeiten von Bildern"]))

Sampler settings (docs/method.md §5) are, for each one: what the call passes, else what the
checkpoint recommends (its header's ``sampler`` entry), else the method's defaults
(:data:`elf_fast.sampling.METHOD_DEFAULTS`). Sample i of a call depends only on the seed and
i: the noise is keyed by (seed, sample index), so the batch size does not change a text and
different seeds give different texts.

Everything here raises exceptions (ValueError for bad arguments, FileNotFoundError for missing
files, :class:`~elf_fast.checkpoint.CheckpointError` for unusable checkpoints) and prints
nothing; ``python -m elf_fast.sample`` and ``python -m elf_fast.evaluate`` are command-line
shells over it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from elf_fast import validate
from elf_fast.checkpoint import CheckpointHeader, load_checkpoint
from elf_fast.sampling import (COMPILE_MODES, SamplerConfig, compile_model, decode, sample_latents, sampler_settings,
                               truncate_at_eos)

ASSETS = Path(__file__).resolve().parent / "assets"


def builtin_checkpoint() -> Path | None:
    """The checkpoint shipped inside the package (``elf_fast/assets/*.safetensors``), if any."""
    found = sorted(ASSETS.glob("*.safetensors"))
    return found[0] if found else None


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available, else the CPU) or a torch device, checked up front (ValueError)."""
    if isinstance(name, torch.device):
        device = name
    elif not isinstance(name, str):
        raise ValueError(f"device must be a str or torch.device, got {type(name).__name__}")
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"{name!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{str(name)!r}: elf_fast runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: CUDA is not available here (no GPU or no CUDA build of torch)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' progress bars (and its info logging) off for the block, as they were after it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class Generator:
    """An ELF, its header and its tokenizer on one device.

    Build one with :meth:`from_checkpoint` or :meth:`from_pretrained`. ``model`` is the network
    (eval mode, transformer blocks in ``dtype``), ``header`` its
    :class:`~elf_fast.checkpoint.CheckpointHeader`, ``checkpoint`` the file it came from.
    """

    def __init__(self, model: torch.nn.Module, header: CheckpointHeader, tokenizer, *, device: torch.device,
                 checkpoint: str | None = None):
        from elf_fast.encoder import special_token_ids

        self.model = model
        self.header = header
        self.tokenizer = tokenizer
        self.device = device
        self.checkpoint = checkpoint
        self.eos, self.pad, _ = special_token_ids(tokenizer)
        self._encoder = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                        dtype: torch.dtype | str | None = None, compile: str | None = None, port_config=None,
                        encoder: str | os.PathLike | None = None) -> "Generator":
        """Load an elf_fast ``.safetensors``, a port ``checkpoint_<step>`` file or a directory of them.

        ``dtype`` is the transformer blocks' weight type (default: bfloat16 on CUDA, float32 on
        the CPU); ``compile`` a :data:`~elf_fast.sampling.COMPILE_MODES` mode to put the network
        under ``torch.compile`` (the first batch then includes the compile time).

        A port file carries no encoder, latent statistics, task or lengths: ``port_config`` gives
        them (the port's training YAML, a dict of its keys, or a published model's name; see
        :func:`elf_fast.hub.port_info`, which also finds a ``config.yml`` beside the file);
        without one, CheckpointError. ``encoder`` replaces the checkpoint's encoder (e.g. a local
        copy of ``t5-small``). The network's vocabulary and latent width are checked against the
        encoder (:func:`elf_fast.hub.check_encoder_fit`): CheckpointError on a mismatch.
        """
        from dataclasses import replace

        from elf_fast import hub
        from elf_fast.checkpoint import resolve_checkpoint
        from elf_fast.encoder import load_tokenizer

        path = validate.path_arg("the checkpoint path", path)
        device = resolve_device(device)
        if isinstance(dtype, str) and dtype in ("float32", "bfloat16", "float16"):
            dtype = getattr(torch, dtype)
        if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        if compile is not None and compile is not False and compile not in COMPILE_MODES:
            raise ValueError(f"compile must be None or one of {COMPILE_MODES}, got {compile!r}")
        file = resolve_checkpoint(path)
        port = hub.port_header(file, port_config)
        encoder = None if encoder is None else os.fspath(encoder)
        tokenizer = None
        if port is None:
            model, header = load_checkpoint(file)
        else:  # the tokenizer first: an encoder that is not there fails before gigabytes of weights are read
            with _quiet_transformers():
                tokenizer = load_tokenizer(encoder or port.encoder.name_or_path)
            model, header = load_checkpoint(file, header=port, preset=port.preset,
                                            max_length=port.extra["port"]["max_length"])
        if encoder is not None:
            header = replace(header, encoder=replace(header.encoder, name_or_path=encoder))
        if tokenizer is None:
            with _quiet_transformers():
                tokenizer = load_tokenizer(header.encoder.name_or_path)
        hub.check_encoder_fit(model.config, header.encoder.name_or_path, tokenizer)
        model = model.to(device).set_block_dtype(dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32))
        if compile:
            compile_model(model, compile)
        return cls(model, header, tokenizer, device=device, checkpoint=str(path))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *, port_config=None,
                        encoder: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                        revision: str | None = None, **kwargs) -> "Generator":
        """A model by name or path: None is the built-in model (``elf_fast/assets``); a published
        model by repo id or short name (``"embedded-language-flows/ELF-B-de-en-torch"``,
        ``"ELF-B-owt-torch"``: :data:`elf_fast.hub.PUBLISHED`, which supplies what its port
        checkpoint lacks); any other hub repo id (downloaded into the Hugging Face cache, progress on
        stderr; ``cache_dir`` / ``revision`` as in huggingface_hub); a local file or folder (a
        folder laid out like a hub repo loads the same way). Offline and not cached:
        FileNotFoundError within seconds (:func:`elf_fast.hub.download`). ``port_config``,
        ``encoder`` and the other keyword arguments as :meth:`from_checkpoint`.
        """
        from elf_fast import hub
        from elf_fast.checkpoint import resolve_checkpoint

        if name_or_path is None:
            path = builtin_checkpoint()
            if path is None:
                raise FileNotFoundError(f"this installation of elf_fast ships no built-in checkpoint (nothing in {ASSETS}); "
                                        "load one with Generator.from_checkpoint(path)")
            return cls.from_checkpoint(path, port_config=port_config, encoder=encoder, **kwargs)
        validate.path_arg("the model name or path", name_or_path)
        found = hub.resolve(name_or_path, cache_dir=cache_dir, revision=revision)
        if port_config is None and found.repo_id is not None and found.published is not None \
                and resolve_checkpoint(found.path).suffix != ".safetensors":  # what the port file lacks
            port_config = found.published
        gen = cls.from_checkpoint(found.path, port_config=port_config, encoder=encoder, **kwargs)
        if found.repo_id is not None:
            gen.checkpoint = found.repo_id
        return gen

    # ------------------------------------------------------------------ description
    @property
    def conditional(self) -> bool:
        return self.header.conditional

    @property
    def max_input_length(self) -> int:
        """Condition tokens a conditional checkpoint reads at most (0: unconditional)."""
        return self.header.data.max_input_length

    @property
    def task(self) -> str:
        return self.header.data.task

    @property
    def default_length(self) -> int:
        """Target tokens per sample unless told otherwise (see CheckpointHeader.default_sample_length)."""
        return self.header.default_sample_length(self.model.config.max_length)

    def sampler(self, **settings) -> SamplerConfig:
        """The sampler a call with these settings uses (None: the checkpoint's recommendation, else
        the method's default); settings are SamplerConfig fields."""
        return sampler_settings(self.conditional, self.header.sampler, **settings)

    @property
    def encoder(self):
        """The frozen encoder, loaded on first use (only conditional sampling needs it)."""
        if self._encoder is None:
            from elf_fast.encoder import FrozenEncoder

            enc = self.header.encoder
            with _quiet_transformers():  # the API prints nothing (transformers shows a "Loading weights" bar)
                self._encoder = FrozenEncoder(enc.name_or_path, mu=enc.mu, sigma=enc.sigma, device=self.device)
        return self._encoder

    # ------------------------------------------------------------------ generation
    def generate(self, n: int | None = None, *, conditions: list[str] | None = None, length: int | None = None,
                 seed: int = 0, batch_size: int = 0, sampler: SamplerConfig | None = None, progress: bool = False,
                 desc: str = "sampling", on_batch=None, **settings) -> list[dict]:
        """Sample ``n`` texts (unconditional) or one per condition (conditional checkpoints).

        ``sampler`` is a whole :class:`~elf_fast.sampling.SamplerConfig`; else ``settings``
        (``steps``, ``sampler``... as :meth:`sampler`) pick one. Returns one record per sample:
        ``index``, ``text``, ``seed`` (and, conditional: ``condition``, ``condition_tokens`` and
        ``condition_truncated``: whether it had more than ``max_input_length`` tokens, of which
        the model reads the first, as in the port's layout). ``progress`` shows a bar on stderr;
        ``on_batch(records)`` is called with each batch's records as soon as they are decoded (to
        write them out, so an interrupted run keeps what it finished).
        """
        from tqdm import tqdm

        n, length, seq_len, cfg = self.check_generate(n, conditions=conditions, length=length, seed=seed,
                                                      batch_size=batch_size, sampler=sampler, **settings)
        batch_size, seed = int(batch_size), int(seed)
        encoder = self.encoder if conditions is not None else None
        bs = batch_size or min(max(n, 1), 32)
        device, records = self.device, []
        with tqdm(total=-(-n // bs) * cfg.steps, desc=desc, unit="step", disable=not progress, file=sys.stderr) as bar:
            for b0 in range(0, n, bs):
                B = min(bs, n - b0)
                x_cond = cond_mask = None
                if conditions is not None:
                    x_cond, cond_mask, cond_len, cond_tokens = self._encode_conditions(conditions[b0:b0 + B])
                z = sample_latents(self.model, B, seq_len, cfg, seed=seed, x_cond=x_cond, cond_mask=cond_mask,
                                   device=device, first_sample=b0, progress=lambda _: bar.update(1))
                ids = decode(self.model, z, cfg.w_sc)
                if conditions is not None:  # each target starts right after its own condition
                    # cond_len <= max_input_length and length = max_length - max_input_length: in range
                    ids = ids.gather(1, cond_len[:, None] + torch.arange(length, device=ids.device))
                ids = truncate_at_eos(ids, self.eos, self.pad).cpu()
                batch = []
                for j in range(B):
                    text = self.tokenizer.decode(ids[j].tolist(), skip_special_tokens=True).strip()
                    rec = {"index": b0 + j, "text": text, "seed": seed}
                    if conditions is not None:  # the layout reads at most max_input_length condition tokens
                        rec["condition"] = conditions[b0 + j]
                        rec["condition_tokens"] = cond_tokens[j]
                        rec["condition_truncated"] = cond_tokens[j] > self.max_input_length
                    batch.append(rec)
                records += batch
                if on_batch is not None:
                    on_batch(batch)
        return records

    def _encode_conditions(self, texts: list[str]):
        """Conditions -> ``(x_cond (B, L, C), cond_mask (B, L), cond_len (B,), tokens)`` in the packed
        layout: each condition tokenised without special tokens, cut to ``max_input_length``
        ids, at positions ``0..cond_len-1`` of a ``max_length`` sequence, encoded attending to
        itself only (``FrozenEncoder.encode_packed`` with the condition as the valid part);
        ``tokens``: each condition's token count before the cut."""
        from elf_fast.data import pack_pairs, pair_masks

        data, enc = self.header.data, self.encoder
        plain = enc.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        ids, cond_len, _ = pack_pairs(plain, [[]] * len(plain), data.max_length, data.max_input_length, self.pad)
        cond_len = cond_len.to(self.device)
        cond_mask, _ = pair_masks(cond_len, cond_len, data.max_length)
        x_cond = enc.encode_packed(ids.to(self.device), cond_mask, cond_mask)
        return x_cond, cond_mask, cond_len, [len(p) for p in plain]

    def check_generate(self, n: int | None = None, *, conditions: list[str] | None = None, length: int | None = None,
                       seed: int = 0, batch_size: int = 0, sampler: SamplerConfig | None = None,
                       **settings) -> tuple[int, int, int, SamplerConfig]:
        """Check :meth:`generate`'s arguments without sampling (ValueError naming the bad one);
        returns the number of samples, the target length, the positions sampled and the sampler."""
        if sampler is not None and settings:
            raise ValueError(f"pass either sampler= or sampler settings, not both (got {sorted(settings)})")
        if sampler is not None and not isinstance(sampler, SamplerConfig):
            raise ValueError(f"sampler must be a SamplerConfig, got {type(sampler).__name__}")
        cfg = sampler if sampler is not None else self.sampler(**settings)
        if conditions is not None:
            if isinstance(conditions, str) or not isinstance(conditions, (list, tuple)) \
                    or not all(isinstance(c, str) for c in conditions):
                raise ValueError("conditions must be a list of strings")
            if not self.conditional:
                raise ValueError("conditions given, but this checkpoint is unconditional")
            if n is not None and n != len(conditions):
                raise ValueError(f"n = {n} but {len(conditions)} conditions given")
            n = len(conditions)
        elif self.conditional:
            raise ValueError(f"this checkpoint is conditional (task {self.task!r}): pass conditions")
        if n is None:
            raise ValueError("n must be an int >= 0, got None")
        n = validate.integer("n", n, 0, validate.LIMITS["num_samples"][1])
        data = self.header.data
        if self.conditional:  # the packed layout fixes the lengths (docs/method.md §4.1)
            if length not in (None, 0, data.target_length) or isinstance(length, bool):
                raise ValueError(f"a conditional checkpoint samples max_length - max_input_length = {data.target_length} "
                                 f"target tokens (the layout it was trained on), got length={length!r}")
            length = data.target_length
        length = self.default_length if length is None or (length == 0 and not isinstance(length, bool)) else length
        length = validate.integer("length", length, 1, validate.LIMITS["length"][1])
        validate.setting("batch_size", batch_size)
        validate.seed(seed)
        seq_len = data.max_length if self.conditional else length
        if seq_len > self.model.config.max_length:
            raise ValueError(f"{seq_len} positions exceed the model's max_length {self.model.config.max_length}")
        if cfg.cfg != 1.0 and not self.conditional:
            raise ValueError("cfg applies to conditional checkpoints only")
        return n, length, seq_len, cfg

    def sample(self, n: int = 4, **kwargs) -> list[str]:
        """``n`` unconditional texts; keyword arguments as :meth:`generate`."""
        return [r["text"] for r in self.generate(n, **kwargs)]

    def translate(self, conditions: str | list[str], **kwargs) -> list[str] | str:
        """One generated target per condition (conditional checkpoints: translation, summary);
        a single string gives a single string. Keyword arguments as :meth:`generate`."""
        one = isinstance(conditions, str)
        if not one and not isinstance(conditions, (list, tuple)):
            raise ValueError(f"conditions must be a string or a list of strings, got {type(conditions).__name__}")
        texts = [r["text"] for r in self.generate(conditions=[conditions] if one else list(conditions), **kwargs)]
        return texts[0] if one else texts
