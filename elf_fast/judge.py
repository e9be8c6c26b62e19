"""An offline judge: a small GPT-2 trained from scratch to score generative perplexity offline.

The paper scores unconditional samples with GPT-2 Large (docs/method.md §6), which needs the
model hub. On machines without it, :func:`train_judge` trains a small
``transformers.GPT2LMHeadModel`` on the text of a training split (default: the Debian English
corpus from ``python -m elf_fast.data prepare-debian --out data/debian``, split ``train``) and
saves it as an ordinary Hugging Face folder (model + tokenizer) that loads with
``elf_fast.metrics.PerplexityScorer(out_dir)``. Its perplexities and entropies are useful to
*compare* runs with each other (sampling steps, SDE vs ODE, w_sc); they are **not** comparable to
the paper's numbers, which need GPT-2 Large (different tokenizer, data and model size).

Command line::

    python -m elf_fast.judge --data data/debian/en --out judges/gpt2-debian [--steps 2000 ...]

Choices written down here:
* tokenizer: no GPT-2 tokenizer is available offline, so the judge uses the bundled MiniLM
  WordPiece tokenizer (uncased, vocab 30522; ``elf_fast.encoder.resolve_encoder_path(None)``)
  or any other local tokenizer folder given as ``tokenizer``. BERT-like tokenizers get
  ``bos_token = [CLS]`` and ``eos_token = [SEP]``;
* training stream: every non-empty document becomes ``[BOS] + tokens + [EOS]``
  (``[CLS] ... [SEP]``), the documents of the split are concatenated in a seeded random
  order and cut into blocks of ``seq_len`` (the final partial block is dropped). Scoring with
  ``PerplexityScorer`` puts the same BOS before every sample, so a sample is judged as the
  start of a document;
* the model's position limit (``n_positions``) is ``seq_len``: ``PerplexityScorer`` lowers its
  context to it (samples longer than ``seq_len - 1`` tokens are truncated and counted);
* AdamW (betas 0.9 / 0.95, weight decay 0.1 on matrices only), linear warm-up then cosine
  decay to 10% of ``lr``, gradient clipping at 1.0, dropout 0 (short runs, < 1 epoch);
  batches are drawn in a seeded random order of the blocks (re-shuffled every epoch), so a run
  is deterministic for a seed (on the same device and thread count);
* the validation perplexity (token-weighted, over packed validation blocks, at most
  ``max_val_blocks`` of them) is printed at the end and written with the configuration to
  ``out_dir/judge_info.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from elf_fast import validate
from elf_fast.cli import ArgumentParser

DEFAULT_DATA = "data/debian/en"


def _check_pos_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


def load_judge_tokenizer(tokenizer=None):
    """The judge's tokenizer: ``None`` / ``"minilm"`` -> the bundled MiniLM WordPiece tokenizer,
    a local folder -> that tokenizer, or a tokenizer object. BERT-like tokenizers without
    BOS/EOS get ``[CLS]`` / ``[SEP]``; a tokenizer without a pad token gets its EOS as pad."""
    from transformers import AutoTokenizer

    from elf_fast.encoder import resolve_encoder_path

    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        path = resolve_encoder_path(tokenizer)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"tokenizer {os.fspath(tokenizer)!r} is not a local folder; the judge is trained offline, so pass a local "
                "tokenizer folder or leave it out for the bundled MiniLM WordPiece tokenizer")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    elif callable(tokenizer):
        tok = tokenizer
    else:
        raise ValueError(f"tokenizer must be None, a folder or a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    extra = {}
    if tok.bos_token is None and tok.cls_token is not None:
        extra["bos_token"] = tok.cls_token
    if tok.eos_token is None and tok.sep_token is not None:
        extra["eos_token"] = tok.sep_token
    if extra:
        tok.add_special_tokens(extra)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tok).__name__} has no eos (or sep) token to separate documents")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pack_documents(texts: Sequence[str], tokenizer, seq_len: int, *, seed: int | None = 0,
                   batch_size: int = 1000, stats: dict | None = None) -> torch.Tensor:
    """Documents -> LongTensor (n_blocks, seq_len) of ``[BOS] doc [EOS] [BOS] doc [EOS] ...``.

    Empty / whitespace-only texts are skipped (counted in ``stats["empty_skipped"]``); the
    documents are taken in a random order drawn from ``seed`` (``None``: in the given order);
    the final partial block is dropped. ``stats`` gets ``documents``, ``tokens``, ``blocks``.
    """
    _check_pos_int("seq_len", seq_len, 2)
    texts = list(texts)
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        kept = [kept[i] for i in torch.randperm(len(kept), generator=g).tolist()]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    flat: list[int] = []
    for b in range(0, len(kept), batch_size):
        for ids in tokenizer(kept[b:b + batch_size], add_special_tokens=False, verbose=False)["input_ids"]:
            flat += bos
            flat += ids
            flat += eos
    n_blocks = len(flat) // seq_len
    out = torch.tensor(flat[:n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
    if stats is not None:
        stats.update({"documents": len(kept), "empty_skipped": len(texts) - len(kept), "tokens": len(flat),
                      "blocks": n_blocks})
    return out


def _texts(data, split: str | None, text_column: str):
    from elf_fast.data import load_text_dataset

    ds = load_text_dataset(data, split) if isinstance(data, (str, os.PathLike)) else data
    if text_column not in ds.column_names:
        raise ValueError(f"text_column {text_column!r} is not a column of the {split} split of {data!r}; "
                         f"available columns: {ds.column_names}")
    return ds[text_column]


def _has_split(data, split: str) -> bool:
    from elf_fast.data import load_text_dataset

    if not isinstance(data, (str, os.PathLike)):
        return False
    try:
        dd = load_text_dataset(data)
    except (FileNotFoundError, ValueError):
        return False
    return hasattr(dd, "keys") and split in dd


@torch.no_grad()
def packed_perplexity(model, blocks: torch.Tensor, *, batch_size: int = 16, device="cpu") -> float:
    """Token-weighted perplexity of ``model`` over packed blocks (n, L): exp(mean NLL of the
    n * (L - 1) next-token predictions)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in range(0, len(blocks), batch_size):
        x = blocks[b:b + batch_size].to(device)
        logits = model(input_ids=x).logits[:, :-1].float()                       # (B, L-1, V)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += x[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count) if count else float("nan")


def train_judge(
    data=DEFAULT_DATA,
    out_dir: str | os.PathLike = "judges/gpt2-debian",
    *,
    tokenizer=None,
    split: str = "train",
    val_split: str | None = "validation",
    text_column: str = "text",
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    seq_len: int = 256,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    dropout: float = 0.0,
    max_val_blocks: int = 256,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
) -> Path:
    """Train a small GPT-2 judge from scratch on ``data`` and save it to ``out_dir``.

    ``data``: anything :func:`elf_fast.data.load_text_dataset` reads (or a ``datasets.Dataset``
    of the training split), with a ``text_column``; ``split`` is trained on and ``val_split``
    (if the source has it) is scored at the end. ``tokenizer``: None (bundled MiniLM WordPiece),
    a local tokenizer folder, or a tokenizer (see :func:`load_judge_tokenizer`). The model is a
    ``GPT2LMHeadModel`` with ``n_layer`` x ``n_embd`` (``n_head`` heads), context
    ``n_positions = seq_len`` and the tokenizer's vocabulary; ``steps`` AdamW steps of
    ``batch_size`` blocks (``steps=0`` saves the untrained initialisation), ``warmup`` steps of
    linear warm-up (default 5% of ``steps``), cosine decay to 0.1 ``lr``.

    Saves ``save_pretrained`` model + tokenizer and ``judge_info.json`` (configuration, final
    train loss, validation perplexity) under ``out_dir``; returns ``Path(out_dir)``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    for name, v in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head), ("batch_size", batch_size),
                    ("max_val_blocks", max_val_blocks)):
        _check_pos_int(name, v)
    _check_pos_int("seq_len", seq_len, 2)
    _check_pos_int("steps", steps, 0)
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} must be divisible by n_head {n_head}")
    validate.number("lr", lr, 0.0, 10.0, low_open=True)
    validate.number("weight_decay", weight_decay, 0.0, 10.0)
    validate.number("dropout", dropout, 0.0, 1.0)
    validate.seed(seed)
    warmup = max(1, steps // 20) if warmup is None else warmup
    _check_pos_int("warmup", warmup, 0)
    # checked before any training: an unusable device or output folder fails now, not after the steps
    from elf_fast.generator import resolve_device

    device = resolve_device(device)
    validate.writable_dir("out_dir", validate.path_arg("out_dir", out_dir))
    t0 = time.time()
    tok = load_judge_tokenizer(tokenizer)
    tok.model_max_length = seq_len

    train_stats: dict = {}
    blocks = pack_documents(_texts(data, split, text_column), tok, seq_len, seed=seed, stats=train_stats)
    if steps > 0 and len(blocks) == 0:
        raise ValueError(f"the {split!r} split of {data!r} has {train_stats['tokens']} tokens, fewer than one "
                         f"block of seq_len {seq_len}")

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=seq_len, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(config).to(device)
    model.train()

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:          # step = 0..steps-1
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(blocks), generator=g) if len(blocks) else torch.empty(0, dtype=torch.long)
    pos, epoch = 0, 0
    bar = None
    if progress and steps > 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="judge", dynamic_ncols=True)
    loss_ema = None
    last_loss = float("nan")
    for step in range(steps):
        idx = []
        while len(idx) < batch_size:
            if pos >= len(order):
                order, pos, epoch = torch.randperm(len(blocks), generator=g), 0, epoch + 1
            take = order[pos:pos + batch_size - len(idx)]
            idx += take.tolist()
            pos += len(take)
        x = blocks[idx].to(device)                                                  # (B, seq_len)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last_loss = loss.item()
        loss_ema = last_loss if loss_ema is None else 0.95 * loss_ema + 0.05 * last_loss
        if bar is not None:
            bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr_at(step):.2e}", epoch=epoch)
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()

    val_ppl, val_stats = None, {}
    if val_split is not None and _has_split(data, val_split):
        vblocks = pack_documents(_texts(data, val_split, text_column), tok, seq_len, seed=None, stats=val_stats)
        vblocks = vblocks[:max_val_blocks]
        if len(vblocks):
            val_ppl = packed_perplexity(model, vblocks, device=device)
            print(f"judge: validation perplexity {val_ppl:.3f} ({len(vblocks)} blocks x {seq_len} tokens of "
                  f"{data!r} split {val_split!r})", flush=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {
        "note": "offline judge for elf_fast.metrics.PerplexityScorer; numbers are NOT comparable to the paper's "
                "GPT-2 Large generative perplexity",
        "data": os.fspath(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
        "split": split, "val_split": val_split, "text_column": text_column,
        "tokenizer": getattr(tok, "name_or_path", None), "vocab_size": len(tok),
        "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "seq_len": seq_len, "steps": steps,
        "batch_size": batch_size, "lr": lr, "warmup": warmup, "weight_decay": weight_decay, "dropout": dropout,
        "seed": seed, "epochs_seen": (steps * batch_size / len(blocks)) if len(blocks) else 0.0,
        "train_stats": train_stats, "final_train_loss": last_loss, "final_train_loss_ema": loss_ema,
        "val_ppl": val_ppl, "val_blocks": min(val_stats.get("blocks", 0), max_val_blocks) if val_stats else 0,
        "seconds": round(time.time() - t0, 1),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    with open(out / "judge_info.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m elf_fast.judge", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="training text (load_text_dataset source; default %(default)s)")
    p.add_argument("--out", required=True, help="output folder (a Hugging Face model folder)")
    p.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: bundled MiniLM WordPiece)")
    p.add_argument("--split", default="train")
    p.add_argument("--val-split", default="validation", help="scored at the end if present ('none' to skip)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--n-layer", type=validate.arg_int(0, 1 << 30), default=4)
    p.add_argument("--n-embd", type=validate.arg_int(0, 1 << 30), default=256)
    p.add_argument("--n-head", type=validate.arg_int(0, 1 << 30), default=4)
    p.add_argument("--seq-len", type=validate.arg_int(0, 1 << 30), default=256)
    p.add_argument("--steps", type=validate.arg_int(0, 1 << 30), default=2000)
    p.add_argument("--batch-size", type=validate.arg_int(0, 1 << 30), default=32)
    p.add_argument("--lr", type=validate.arg_float(), default=1e-3)
    p.add_argument("--warmup", type=validate.arg_int(0, 1 << 30), default=None, help="warm-up steps (default 5%% of --steps)")
    p.add_argument("--weight-decay", type=validate.arg_float(), default=0.1)
    p.add_argument("--dropout", type=validate.arg_float(), default=0.0)
    p.add_argument("--max-val-blocks", type=validate.arg_int(0, 1 << 30), default=256)
    p.add_argument("--seed", type=validate.arg_setting("seed"), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    out = train_judge(
        a.data, a.out, tokenizer=a.tokenizer, split=a.split,
        val_split=None if a.val_split.lower() == "none" else a.val_split, text_column=a.text_column,
        n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, seq_len=a.seq_len, steps=a.steps,
        batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, weight_decay=a.weight_decay, dropout=a.dropout,
        max_val_blocks=a.max_val_blocks, seed=a.seed, device=a.device, progress=not a.no_progress)
    print(f"saved the judge to {out} (load it with elf_fast.metrics.PerplexityScorer({os.fspath(out)!r}))")
    return 0


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))
