"""Language data: char/BPE tokenizers, nanoGPT-style splits, batching and the encoded-array cache."""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

if not os.environ.get("TIEDLAB_DATA"):
    pytest.skip("TIEDLAB_DATA is not set (needs tinyshakespeare/ and austen/)", allow_module_level=True)

from tiedlab.paradigms.language import data as D
from tiedlab.paradigms.language import tokenizer as T
from tiedlab.paradigms.paths import DataFormatError, DataIntegrityError

REAL_DATA = os.environ["TIEDLAB_DATA"]

N_CHARS = 1_115_394
N_TRAIN = int(N_CHARS * 0.9)  # 1,003,854 (nanoGPT shakespeare_char)
AUSTEN_SLICE = 300_000


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiedlab-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIEDLAB_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def text(cache_root) -> str:
    return D.read_text("tinyshakespeare")  # checks SHA256SUMS, caching the digest under cache_root


@pytest.fixture(scope="module")
def shakespeare(cache_root) -> D.Corpus:
    return D.load_corpus("tinyshakespeare")


@pytest.fixture(scope="module")
def austen(cache_root) -> D.Corpus:
    return D.load_corpus("austen", vocab_size=1024, max_chars=AUSTEN_SLICE)


def test_raw_text_and_split(text):
    assert len(text) == N_CHARS
    assert len(set(text)) == 65
    train, val = D.split_text(text, 0.1)
    assert len(train) == N_TRAIN and train + val == text


def test_char_vocab_is_train_split(shakespeare, text):
    train_chars = sorted(set(text[:N_TRAIN]))
    vocab = shakespeare.tokenizer.get_vocab()
    assert shakespeare.tokenizer_kind == "char" and shakespeare.name == "tinyshakespeare"
    assert shakespeare.vocab_size == len(train_chars) + 1 == 66
    assert {c: i for i, c in enumerate(train_chars)} == {k: v for k, v in vocab.items() if k != T.UNK_TOKEN}
    assert shakespeare.tokenizer.unk_token_id == vocab[T.UNK_TOKEN] == 65
    assert shakespeare.val_unknown_chars == ()  # every val char occurs in train


def test_token_counts_follow_character_split(shakespeare):
    assert shakespeare.train_ids.shape == (N_TRAIN,)
    assert shakespeare.val_ids.shape == (N_CHARS - N_TRAIN,)
    assert shakespeare.n_train_chars == N_TRAIN and shakespeare.n_val_chars == N_CHARS - N_TRAIN
    assert shakespeare.train_ids.dtype == torch.int64
    assert shakespeare.chars_per_token == 1.0


def test_round_trip_first_2000_chars(shakespeare, text):
    s = text[:2000]
    ids = T.encode_checked(shakespeare.tokenizer, s)
    assert len(ids) == 2000 and ids == shakespeare.train_ids[:2000].tolist()
    assert shakespeare.tokenizer.decode(ids) == s
    assert shakespeare.decode(shakespeare.val_ids[:500]) == text[N_TRAIN : N_TRAIN + 500]


def test_batch_shapes_and_shift(shakespeare):
    B, L = 8, 64
    offsets = shakespeare.sample_offsets("train", B, L, generator=torch.Generator().manual_seed(3))
    x, y = shakespeare.batch("train", B, L, generator=torch.Generator().manual_seed(3), device="cpu")
    assert x.shape == y.shape == (B, L) and x.dtype == y.dtype == torch.int64
    ids = shakespeare.train_ids
    for i, o in enumerate(offsets.tolist()):
        assert torch.equal(x[i], ids[o : o + L]) and torch.equal(y[i], ids[o + 1 : o + L + 1])
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_batch_deterministic_with_seed(shakespeare):
    a = shakespeare.batch("val", 4, 32, generator=torch.Generator().manual_seed(7))
    b = shakespeare.batch("val", 4, 32, generator=torch.Generator().manual_seed(7))
    c = shakespeare.batch("val", 4, 32, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_context_too_large(shakespeare):
    n = len(shakespeare.val_ids)
    x, _ = shakespeare.batch("val", 2, n - 1, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, n - 1)
    with pytest.raises(ValueError, match=rf"context={n}.*{n - 1}"):
        shakespeare.batch("val", 2, n, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="'test'.*train"):
        shakespeare.batch("test", 2, 8, generator=torch.Generator().manual_seed(0))


def test_eval_batches_fixed_windows(shakespeare):
    L = 128
    first = list(shakespeare.eval_batches("val", 16, L, max_batches=3))
    again = list(shakespeare.eval_batches("val", 16, L, max_batches=3))
    assert len(first) == 3 and all(x.shape == (16, L) for x, _ in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    starts = shakespeare.eval_offsets("val", L, 48)
    assert len(starts) == 48 and bool((starts % L == 0).all())
    ids = shakespeare.val_ids
    xs = torch.cat([x for x, _ in first])
    ys = torch.cat([y for _, y in first])
    for i, s in enumerate(starts.tolist()):
        assert torch.equal(xs[i], ids[s : s + L]) and torch.equal(ys[i], ids[s + 1 : s + L + 1])
    everything = list(shakespeare.eval_batches("val", 512, L))
    assert sum(len(x) for x, _ in everything) == (len(ids) - 1) // L


def test_unknown_characters(shakespeare):
    tok = shakespeare.tokenizer
    with pytest.raises(ValueError, match=r"'é'") as err:
        T.encode_checked(tok, "hello é world é")
    assert "2 occurrence" in str(err.value)
    ids = T.encode_checked(tok, "hi é", unknown="unk", as_tensor=True)
    assert ids.tolist()[-1] == tok.unk_token_id and len(ids) == 4
    with pytest.raises(ValueError, match="'skip'.*'error', 'unk'"):
        T.encode_checked(tok, "hi", unknown="skip")
    # a literal special-token string is plain text, not [UNK]
    ids = T.encode_checked(tok, "a[UNK]b", unknown="unk")
    assert len(ids) == 7 and ids[1] == ids[5] == tok.unk_token_id and ids[2] != tok.unk_token_id


def test_save_load_offline_without_data_root(shakespeare, austen, tmp_path, monkeypatch, text):
    sample = text[N_TRAIN : N_TRAIN + 3000]
    expected = {k: T.encode_checked(c.tokenizer, sample) for k, c in (("char", shakespeare), ("bpe", austen))}
    for k, c in (("char", shakespeare), ("bpe", austen)):
        T.save_tokenizer(c.tokenizer, tmp_path / k)
    monkeypatch.delenv("TIEDLAB_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for k in ("char", "bpe"):
        tok = T.load_tokenizer(tmp_path / k)
        assert T.encode_checked(tok, sample) == expected[k]
        assert tok.decode(expected[k]) == sample
    with pytest.raises(FileNotFoundError):
        T.load_tokenizer(tmp_path / "missing")


def test_austen_bpe_slice(austen):
    text = D.read_text("austen")[:AUSTEN_SLICE]
    train, val = D.split_text(text)
    assert austen.tokenizer_kind == "bpe" and austen.vocab_size == 1024
    assert austen.n_train_chars == len(train) and austen.n_val_chars == len(val)
    assert austen.decode(austen.val_ids) == val and austen.decode(austen.train_ids) == train
    assert austen.chars_per_token == pytest.approx(len(val) / len(austen.val_ids)) and austen.chars_per_token > 2
    odd = "  £5 — naïve 😀\n\n\tend<|endoftext|>  "
    assert austen.tokenizer.decode(T.encode_checked(austen.tokenizer, odd)) == odd  # no unknowns


def test_bpe_trainer_direct():
    tok = T.train_bpe_tokenizer("the cat sat on the mat. " * 50, vocab_size=300)
    assert len(tok) <= 300
    with pytest.raises(ValueError, match="vocab_size=100"):
        T.train_bpe_tokenizer("abc", vocab_size=100)


def test_bits_helpers(shakespeare, austen):
    loss = 1.2
    assert D.bits_per_token(loss) == pytest.approx(loss / math.log(2))
    assert shakespeare.bits_per_character(loss) == pytest.approx(loss / math.log(2))
    assert austen.bits_per_character(loss) == pytest.approx(loss / math.log(2) / austen.chars_per_token)
    t = D.bits_per_character(torch.tensor([loss]), 2.0)
    assert torch.allclose(t, torch.tensor([loss / math.log(2) / 2]))


def test_cache_reused(shakespeare, austen, cache_root, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(T, "train_char_tokenizer", boom)
    monkeypatch.setattr(T, "train_bpe_tokenizer", boom)
    monkeypatch.setattr(T, "encode_checked", boom)
    again = D.load_corpus("tinyshakespeare")
    assert torch.equal(again.train_ids, shakespeare.train_ids) and torch.equal(again.val_ids, shakespeare.val_ids)
    assert again.vocab_size == shakespeare.vocab_size and again.cache_path == shakespeare.cache_path
    a2 = D.load_corpus("austen", vocab_size=1024, max_chars=AUSTEN_SLICE)
    assert torch.equal(a2.val_ids, austen.val_ids) and a2.chars_per_token == austen.chars_per_token
    # a different key is a miss and trains again
    with pytest.raises(AssertionError, match="cache"):
        D.load_corpus("tinyshakespeare", val_fraction=0.2)
    entries = os.listdir(cache_root / "language")
    assert not [e for e in entries if e.startswith(".")], entries  # no temp folders left behind


def test_bad_arguments(cache_root):
    with pytest.raises(ValueError, match="'wiki'.*austen.*tinyshakespeare"):
        D.load_corpus("wiki")
    with pytest.raises(ValueError, match="'word'.*char.*bpe"):
        D.load_corpus("tinyshakespeare", tokenizer="word")
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        D.load_corpus("tinyshakespeare", val_fraction=1.5)


# --------------------------------------------------------------------------------------------------
# damaged corpora in a fake data root: SHA256SUMS and unreadable files
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """An empty data root ($TIEDLAB_DATA) and a fresh cache ($TIEDLAB_CACHE)."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "cache"))
    return root


def _put(root, name: str, blob: bytes):
    path = root.joinpath(*D.CORPORA[name].parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("name", sorted(D.CORPORA))
def test_empty_corpus_names_the_file(fake_root, name):
    path = _put(fake_root, name, b"")
    rel = "/".join(D.CORPORA[name].parts)
    for load in (D.read_text, D.load_corpus):
        with pytest.raises(DataFormatError) as err:
            load(name)
        assert str(err.value) == f"{path} is empty (0 bytes). Fix: copy {rel} again from the shared data folder"


def test_corpus_too_short_or_not_text(fake_root):
    path = _put(fake_root, "tinyshakespeare", b"a")
    with pytest.raises(DataFormatError, match=rf"^{path} holds only 1 character\(s\), too few to split"):
        D.load_corpus("tinyshakespeare")
    _put(fake_root, "tinyshakespeare", b"abcdefgh")
    with pytest.raises(ValueError, match=r"max_chars=2 leaves an empty train split at val_fraction=0\.9"):
        D.load_corpus("tinyshakespeare", max_chars=2, val_fraction=0.9)
    _put(fake_root, "tinyshakespeare", b"First Citizen:\n\x93Before\x94")
    with pytest.raises(DataFormatError, match=rf"^{path} is not UTF-8 text \(byte 0x93 at offset 15\)"):
        D.read_text("tinyshakespeare")


def test_half_length_corpus_fails_against_sums_even_when_cached(fake_root, text):
    path = _put(fake_root, "tinyshakespeare", text[: len(text) // 2].encode())
    first = D.load_corpus("tinyshakespeare", max_chars=5000)  # no SHA256SUMS yet: tokens get cached
    assert first.cache_path is not None and first.cache_path.is_dir()
    real_line = [ln for ln in (Path(REAL_DATA) / "SHA256SUMS").read_text().splitlines() if "tinyshakespeare/input.txt" in ln]
    (fake_root / "SHA256SUMS").write_text(real_line[0] + "\n")
    with pytest.raises(DataIntegrityError) as err:
        D.load_corpus("tinyshakespeare", max_chars=5000)
    msg = str(err.value)
    assert msg.startswith(f"{path} does not match {fake_root / 'SHA256SUMS'}: sha256 ")
    assert f"({path.stat().st_size:,} bytes), expected 86c4e6aa9db7..." in msg
    path.write_text(text)  # the whole text again (a new mtime and size): verified, then loaded
    assert D.load_corpus("tinyshakespeare", max_chars=5000).n_train_chars == 4500
