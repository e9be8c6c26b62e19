"""Latent caching for training on unconditional data: encode the corpus once with the frozen
encoder, store the latents on disk (memory-mapped), and read a micro-batch's rows instead of
running the encoder for every batch of every epoch.

A cache file is keyed by everything its values depend on: the encoder's weights (a hash of its
state), mu, sigma and dtype, the autocast the training step encodes under (``train.cpu_bf16``),
the packed token ids of the corpus, the storage dtype, the encode batch size and the torch
version. A change to any of them gives another key, so a stale cache is never read (old files stay
until deleted: ``<cache dir>/<key>.latents`` and ``<key>.json``).

Exactness. With ``float32`` storage the cached rows are what :meth:`FrozenEncoder.encode` returns
for them when encoded in chunks of ``encode_batch`` consecutive rows (the last chunk overlapping
the one before, so that every chunk has that many rows); the training step on the fly encodes its
micro-batch (random rows) instead, and training/train.py sets ``encode_batch`` to the micro-batch's
chunk size. For an unconditional corpus every row has the full length, so the encoder computes
each row independently: with GEMMs of the same shapes the rows come out bit-identical (checked on
the built-in config, 4 x 64 random rows, and in tests/test_latent_cache.py). Another row count may
block a BLAS GEMM differently: ~1e-5 differences (absolute, on latents of magnitude ~1-17). ``float16`` storage halves the file and rounds each value once (relative
error <= 2^-11 for the normalised latents; the loss difference is measured in RESULTS.md too).

Conditional tasks keep encoding on the fly (their condition dropout changes the encoder's input
per step), and validation batches are not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch

#: bump when the cached values' meaning changes
FORMAT = "elf_fast.latent_cache/1"
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def encoder_fingerprint(encoder) -> str:
    """sha256 of the encoder's state (every tensor, in name order), mu, sigma and dtype."""
    h = hashlib.sha256()
    h.update(f"{type(encoder).__name__} mu={encoder.mu!r} sigma={encoder.sigma!r} dtype={encoder.dtype}".encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, t)
    return h.hexdigest()


def cache_key(encoder, ids: torch.Tensor, *, dtype: str, autocast: str, encode_batch: int) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT} torch={torch.__version__} dtype={dtype} autocast={autocast} "
             f"batch={encode_batch} enc={encoder_fingerprint(encoder)}".encode())
    _hash_tensor(h, ids)
    return h.hexdigest()


def autocast_tag() -> str:
    """The CPU autocast in effect ("bfloat16" under train.cpu_bf16, else "off"): part of the key."""
    return str(torch.get_autocast_dtype("cpu")).replace("torch.", "") if torch.is_autocast_enabled("cpu") else "off"


def load_or_build(encoder, ids: torch.Tensor, cache_dir: str | os.PathLike, *, dtype: str = "float32",
                  encode_batch: int = 64, build: bool = True, progress: bool = True) -> torch.Tensor:
    """The latents of ``ids`` (N, L) as an (N, L, C) tensor memory-mapped from ``cache_dir``.

    Built first when absent (only with ``build``; else FileNotFoundError): the rows encoded in
    chunks of ``encode_batch`` under the caller's autocast (call it inside the same autocast
    context as the on-the-fly encoding), written to a temporary file and renamed, so a partial
    file is never read. The tensor is read-only in effect (a private mapping: pages are read
    on demand and never written back).
    """
    if dtype not in DTYPES:
        raise ValueError(f"latent cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if ids.dim() != 2:
        raise ValueError(f"ids must be (N, L), got shape {tuple(ids.shape)}")
    ids = ids.cpu()
    key = cache_key(encoder, ids, dtype=dtype, autocast=autocast_tag(), encode_batch=encode_batch)
    folder = Path(cache_dir)
    data, meta_path = folder / f"{key[:32]}.latents", folder / f"{key[:32]}.json"
    N, L = ids.shape
    C = encoder.latent_dim
    shape = (N, L, C)
    if not (data.is_file() and meta_path.is_file()):
        if not build:
            raise FileNotFoundError(f"no latent cache {data} (built by the main process)")
        folder.mkdir(parents=True, exist_ok=True)
        _build(encoder, ids, data, DTYPES[dtype], encode_batch, progress)
        meta = {"format": FORMAT, "key": key, "shape": list(shape), "dtype": dtype, "encode_batch": encode_batch,
                "autocast": autocast_tag(), "encoder": {"mu": encoder.mu, "sigma": encoder.sigma,
                                                        "fingerprint": encoder_fingerprint(encoder)},
                "torch": torch.__version__}
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, meta_path)
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key or meta.get("shape") != list(shape) or meta.get("dtype") != dtype:
        raise ValueError(f"latent cache {meta_path} does not match its name (key, shape or dtype); delete it")
    numel = N * L * C
    if data.stat().st_size != numel * DTYPES[dtype].itemsize:
        raise ValueError(f"latent cache {data} has {data.stat().st_size} bytes, expected "
                         f"{numel * DTYPES[dtype].itemsize}; delete it")
    return torch.from_file(str(data), shared=False, size=numel, dtype=DTYPES[dtype]).view(shape)


@torch.no_grad()
def _build(encoder, ids, path: Path, dtype: torch.dtype, encode_batch: int, progress: bool) -> None:
    import numpy as np

    N, L = ids.shape
    C = encoder.latent_dim
    tmp = path.with_suffix(".latents.tmp")
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16}[dtype]
    out = np.memmap(tmp, dtype=np_dtype, mode="w+", shape=(N, L, C))
    bar = contextlib.nullcontext()
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=N, desc="latent cache", unit="row")
    mask = torch.ones(encode_batch, L, dtype=torch.bool)
    with bar:
        for s in range(0, N, encode_batch):
            # the last chunk is encode_batch rows too (overlapping the previous one) when N allows:
            # every row is then computed by GEMMs of the same shapes
            s0 = max(0, min(s, N - encode_batch))
            x = encoder.encode(ids[s0:s + encode_batch], mask[:min(N, s + encode_batch) - s0], batch_size=encode_batch)
            out[s:s + encode_batch] = x[s - s0:].to(dtype).cpu().numpy()
            if progress:
                bar.update(min(N, s + encode_batch) - s)
    out.flush()
    del out
    os.replace(tmp, path)


def rows(latents: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The cached latents of rows ``idx`` as float32 on ``device`` (what ``encoder.encode`` gives)."""
    return latents[idx.cpu()].to(device=device, dtype=torch.float32)
