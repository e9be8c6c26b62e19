"""elf_fast.latent_cache: the cached latents are the encoder's output (float32: exactly; float16:
rounded once), keyed by encoder and data, never read when either changed."""

import pytest
import torch

from elf_fast import latent_cache as lc
from elf_fast.encoder import FrozenEncoder


@pytest.fixture(scope="module")
def encoder():
    return FrozenEncoder(None)  # the bundled MiniLM


def _ids(encoder, n=40, L=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, encoder.vocab_size, (n, L), generator=g)


def test_cached_rows_are_the_encoders_output(encoder, tmp_path):
    ids = _ids(encoder)
    lat = lc.load_or_build(encoder, ids, tmp_path, encode_batch=16, progress=False)
    lat16 = lc.load_or_build(encoder, ids, tmp_path, dtype="float16", encode_batch=16, progress=False)
    assert lat.shape == (40, 16, encoder.latent_dim) and lat.dtype == torch.float32
    # a micro-batch of other rows than the build's chunks, of the same size (as train.py builds it)
    idx = torch.tensor([39, 3, 17, 0, 22, 8, 31, 12, 5, 38, 27, 1, 19, 33, 10, 24])
    want = encoder.encode(ids[idx], torch.ones(len(idx), 16, dtype=torch.bool))
    got = lc.rows(lat, idx, torch.device("cpu"))
    assert got.dtype == torch.float32
    # each full-length row is encoded independently of the others: bit-identical (as measured on
    # this machine's BLAS); another row count may block the GEMMs differently (~1e-5 here)
    assert torch.equal(got, want)
    few = encoder.encode(ids[idx[:7]], torch.ones(7, 16, dtype=torch.bool))
    torch.testing.assert_close(lc.rows(lat, idx[:7], torch.device("cpu")), few, rtol=1e-4, atol=1e-4)
    got16 = lc.rows(lat16, idx, torch.device("cpu"))
    assert torch.equal(got16, want.half().float())  # rounded once to nearest
    assert ((got16 - want).abs() <= want.abs() * 2.0**-11 + 2.0**-24).all()


def test_key_follows_encoder_data_and_dtype(encoder, tmp_path):
    ids = _ids(encoder, n=8, L=8)
    a = lc.load_or_build(encoder, ids, tmp_path, encode_batch=8, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and not any(f.endswith(".tmp") for f in files)
    # the same encoder and data: the file is reused (build=False finds it), no new file
    b = lc.load_or_build(encoder, ids, tmp_path, encode_batch=8, build=False)
    assert torch.equal(a, b) and sorted(p.name for p in tmp_path.iterdir()) == files
    # other data, other normalisation, other weights: another key, never the old file
    other = ids.clone()
    other[3, 5] += 1
    with pytest.raises(FileNotFoundError):
        lc.load_or_build(encoder, other, tmp_path, encode_batch=8, build=False)
    mu = encoder.mu
    try:
        encoder.mu = mu + 0.5
        with pytest.raises(FileNotFoundError):
            lc.load_or_build(encoder, ids, tmp_path, encode_batch=8, build=False)
    finally:
        encoder.mu = mu
    key = lc.encoder_fingerprint(encoder)
    p = next(iter(encoder.parameters()))
    with torch.no_grad():
        p.view(-1)[0] += 1e-3
        try:
            assert lc.encoder_fingerprint(encoder) != key
        finally:
            p.view(-1)[0] -= 1e-3
    with pytest.raises(FileNotFoundError):
        lc.load_or_build(encoder, ids, tmp_path, dtype="float16", encode_batch=8, build=False)
    with pytest.raises(ValueError, match="dtype"):
        lc.load_or_build(encoder, ids, tmp_path, dtype="bfloat16", progress=False)


def test_truncated_cache_is_refused(encoder, tmp_path):
    ids = _ids(encoder, n=4, L=8)
    lc.load_or_build(encoder, ids, tmp_path, encode_batch=4, progress=False)
    data = next(tmp_path.glob("*.latents"))
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(ValueError, match="bytes"):
        lc.load_or_build(encoder, ids, tmp_path, encode_batch=4, progress=False)
