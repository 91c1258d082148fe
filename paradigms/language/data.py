"""Character/BPE language-modelling corpora (tiny-shakespeare, Jane Austen) as token-id tensors.

The split is the nanoGPT ``shakespeare_char`` convention: the first ``1 - val_fraction`` of the
*characters* is train, the rest val. The tokenizer is trained on the train text only; each split is
encoded once and cached (ids + tokenizer) under ``cache_dir("language", <key>)``, keyed by the
source file's size/mtime, the tokenizer kind, ``vocab_size`` (BPE), ``val_fraction`` and ``max_chars``.

Val characters outside a char-level train vocabulary (none for tiny-shakespeare) are mapped to
``[UNK]``, logged, and listed in :attr:`Corpus.val_unknown_chars`.

The source file is checked against the data root's ``SHA256SUMS`` on every load, cached tokens or not
(``DataIntegrityError``: a half-length copy does not train as "Tiny Shakespeare"); an empty or non-UTF-8
source raises ``DataFormatError`` naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from ..base import write_folder
from ..paths import DataFormatError, cache_dir, data_path, read_text_file
from . import tokenizer as _tok

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SPLITS = ("train", "val")
TOKENIZER_KINDS = ("char", "bpe")


@dataclass(frozen=True)
class _Source:
    parts: tuple[str, ...]
    display_name: str
    default_tokenizer: str


CORPORA: dict[str, _Source] = {
    "tinyshakespeare": _Source(("tinyshakespeare", "input.txt"), "Tiny Shakespeare", "char"),
    "austen": _Source(("austen", "austen.txt"), "Jane Austen (six novels)", "bpe"),
}

__all__ = [
    "CORPORA",
    "Corpus",
    "TokenSplits",
    "SPLITS",
    "TOKENIZER_KINDS",
    "bits_per_character",
    "bits_per_token",
    "load_corpus",
    "read_text",
    "split_text",
]


def bits_per_token(loss: float | torch.Tensor) -> float | torch.Tensor:
    """Cross-entropy in nats per token -> bits per token (``loss / ln 2``)."""
    return loss / math.log(2)


def bits_per_character(loss: float | torch.Tensor, chars_per_token: float = 1.0) -> float | torch.Tensor:
    """Cross-entropy in nats per token -> bits per character, given the split's characters per token
    (1.0 for char level, so this is ``loss / ln 2``)."""
    if chars_per_token <= 0:
        raise ValueError(f"chars_per_token={chars_per_token} must be > 0")
    return loss / math.log(2) / chars_per_token


def read_text(name: str) -> str:
    """The raw text of corpus ``name`` from the data root (UTF-8, newlines kept as they are).

    Raises:
        ValueError: unknown ``name`` (lists the valid ones).
        DataNotFoundError: the file is missing under ``$TIEDLAB_DATA``.
        DataIntegrityError: the file differs from its line in ``<root>/SHA256SUMS``.
        DataFormatError: the file is empty or not UTF-8 (names it).
    """
    return read_text_file(_source_path(name), fix=_restore_hint(name))


def _restore_hint(name: str) -> str:
    """How to fix a damaged source file of corpus ``name``."""
    return f"copy {'/'.join(_source(name).parts)} again from the shared data folder"


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """First ``int(len(text) * (1 - val_fraction))`` characters -> train, the rest -> val."""
    _check_val_fraction(val_fraction)
    n_train = int(len(text) * (1.0 - val_fraction))
    return text[:n_train], text[n_train:]


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in the open interval (0, 1)")


def _source(name: str) -> _Source:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid names: {sorted(CORPORA)}")
    return CORPORA[name]


def _check_split(
    name: str, path: Path, n_chars: int, train: str, val: str, max_chars: int | None, val_fraction: float
) -> None:
    """Both splits must hold text: else the config (``max_chars``, ``val_fraction``) or the file is at fault.

    Raises:
        ValueError: ``max_chars`` cut the text too short for ``val_fraction``.
        DataFormatError: the file itself is too short (names it).
    """
    if train and val:
        return
    if max_chars is not None and n_chars == max_chars:
        raise ValueError(
            f"max_chars={max_chars} leaves an empty {'train' if not train else 'val'} split at "
            f"val_fraction={val_fraction}; raise max_chars or move val_fraction towards 0.5"
        )
    raise DataFormatError(
        f"{path} holds only {n_chars} character(s), too few to split into train and val at "
        f"val_fraction={val_fraction}. Fix: {_restore_hint(name)}"
    )


def _source_path(name: str) -> Path:
    return data_path(*_source(name).parts)


class _Windows:
    """Training and evaluation windows over the token ids of named splits; subclasses give ``name`` and
    ``ids(split)``."""

    name: str

    def ids(self, split: str) -> torch.Tensor:
        raise NotImplementedError

    def _check_window(self, split: str, batch_size: int, context: int) -> torch.Tensor:
        ids = self.ids(split)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if context < 1:
            raise ValueError(f"context={context} must be >= 1")
        if context > len(ids) - 1:
            raise ValueError(
                f"context={context} is larger than the {split} split length - 1 = {len(ids) - 1} "
                f"({len(ids)} tokens of {self.name})"
            )
        return ids

    def sample_offsets(
        self, split: str, batch_size: int, context: int, *, generator: torch.Generator
    ) -> torch.Tensor:
        """Uniform random window starts in ``[0, n_tokens - context - 1]``, as :meth:`batch` draws them.

        Shapes: ``(batch_size,)`` int64 on the CPU.
        """
        ids = self._check_window(split, batch_size, context)
        high = len(ids) - context  # exclusive; start + context + 1 <= n_tokens
        return torch.randint(
            0, high, (batch_size,), generator=generator, device=generator.device
        ).cpu()

    @staticmethod
    def _gather(
        ids: torch.Tensor, starts: torch.Tensor, context: int, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        window = ids[starts[:, None] + torch.arange(context + 1)]  # (B, context + 1)
        x = window[:, :-1].to(device=device, dtype=torch.long)
        y = window[:, 1:].to(device=device, dtype=torch.long)
        return x, y

    def batch(
        self,
        split: str,
        batch_size: int,
        context: int,
        *,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: ``x = ids[s : s + context]``, ``y = ids[s + 1 : s + context + 1]``.

        Shapes: ``x``, ``y``: ``(batch_size, context)`` int64 on ``device``.

        Raises:
            ValueError: bad ``split``, or ``context`` > split length - 1 (names both).
        """
        starts = self.sample_offsets(split, batch_size, context, generator=generator)
        return self._gather(self.ids(split), starts, context, device)

    def eval_offsets(self, split: str, context: int, max_windows: int | None = None) -> torch.Tensor:
        """Fixed, non-overlapping window starts (``0, context, 2 context, ...``); if more than
        ``max_windows``, an evenly spaced subset of them. Shapes: ``(n_windows,)`` int64."""
        ids = self._check_window(split, 1, context)
        starts = torch.arange(0, len(ids) - context, context)
        if max_windows is not None and max_windows < len(starts):
            if max_windows < 1:
                raise ValueError(f"max_windows={max_windows} must be >= 1")
            starts = starts[torch.linspace(0, len(starts) - 1, max_windows).round().long()]
        return starts

    def eval_batches(
        self,
        split: str,
        batch_size: int,
        context: int,
        max_batches: int | None = None,
        *,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic evaluation batches over :meth:`eval_offsets` windows (at most
        ``max_batches * batch_size`` of them; the last batch may be smaller).

        Shapes: each ``x``, ``y``: ``(<= batch_size, context)`` int64 on ``device``.
        """
        ids = self._check_window(split, batch_size, context)
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches={max_batches} must be >= 1 (or None for all windows)")
        max_windows = None if max_batches is None else max_batches * batch_size
        starts = self.eval_offsets(split, context, max_windows)
        for i in range(0, len(starts), batch_size):
            yield self._gather(ids, starts[i : i + batch_size], context, device)


@dataclass
class TokenSplits(_Windows):
    """Token ids by split name (e.g. train, val, test), cut into windows as :class:`Corpus` cuts its own.

    Shapes: each of ``by_split``: ``(n_tokens,)`` int64.
    """

    name: str
    by_split: dict[str, torch.Tensor]

    def ids(self, split: str) -> torch.Tensor:
        """The ids of ``split``. Shapes: ``(n_tokens,)``."""
        if split not in self.by_split:
            raise ValueError(f"split={split!r} is not valid; choose one of {tuple(self.by_split)}")
        return self.by_split[split]


@dataclass
class Corpus(_Windows):
    """A tokenized corpus split into train/val.

    Shapes: ``train_ids``: ``(n_train_tokens,)``, ``val_ids``: ``(n_val_tokens,)``, int64.
    ``chars_per_token`` is measured on the whole held-out text, ``val_ids`` (its characters / its tokens): the
    val and test halves of :meth:`train_val_test` together.
    """

    name: str
    display_name: str
    tokenizer_kind: str
    tokenizer: PreTrainedTokenizerFast
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    vocab_size: int
    chars_per_token: float
    n_train_chars: int
    n_val_chars: int
    val_unknown_chars: tuple[str, ...] = ()
    cache_path: Path | None = field(default=None, repr=False)

    def ids(self, split: str) -> torch.Tensor:
        """The ids of ``split`` (``"train"`` or ``"val"``). Shapes: ``(n_tokens,)``."""
        if split == "train":
            return self.train_ids
        if split == "val":
            return self.val_ids
        raise ValueError(f"split={split!r} is not valid; choose one of {SPLITS}")

    def train_val_test(self) -> TokenSplits:
        """Train, and the held-out ids cut in two halves of their tokens: ``val`` (the first) and ``test``."""
        half = len(self.val_ids) // 2
        return TokenSplits(self.name, {"train": self.train_ids, "val": self.val_ids[:half],
                                       "test": self.val_ids[half:]})

    def bits_per_character(self, loss: float | torch.Tensor) -> float | torch.Tensor:
        """Nats per token -> bits per character using this corpus's held-out ``chars_per_token``."""
        return bits_per_character(loss, self.chars_per_token)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Token ids -> text. Shapes: ``ids``: ``(n,)``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def load_corpus(
    name: str,
    *,
    tokenizer: str | None = None,
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    min_frequency: int = 2,
    max_chars: int | None = None,
    use_cache: bool = True,
) -> Corpus:
    """Load ``tinyshakespeare`` (default ``tokenizer="char"``) or ``austen`` (default ``"bpe"``).

    ``vocab_size``/``min_frequency`` apply to BPE only. ``max_chars`` keeps only the first
    ``max_chars`` characters of the source (before splitting), for quick experiments and tests.
    The first call trains the tokenizer and encodes; later calls read the cache.

    Shapes: ``Corpus.train_ids``: ``(n_train_tokens,)``, ``Corpus.val_ids``: ``(n_val_tokens,)``.

    Raises:
        ValueError: unknown ``name`` or ``tokenizer`` kind (lists the valid ones), bad ``val_fraction``.
        DataNotFoundError: the source file is missing under ``$TIEDLAB_DATA``.
        DataIntegrityError: the source file differs from its line in ``<root>/SHA256SUMS``.
        DataFormatError: the source file is empty, not UTF-8 or too short to split (names it).
    """
    src = _source(name)
    kind = src.default_tokenizer if tokenizer is None else tokenizer
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {list(TOKENIZER_KINDS)}")
    _check_val_fraction(val_fraction)
    if max_chars is not None and max_chars < 2:
        raise ValueError(f"max_chars={max_chars} must be >= 2 (or None for the whole text)")
    path = _source_path(name)
    stat = path.stat()
    spec = {
        "format": CACHE_FORMAT,
        "name": name,
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "tokenizer": kind,
        "vocab_size": vocab_size if kind == "bpe" else None,
        "min_frequency": min_frequency if kind == "bpe" else None,
        "val_fraction": val_fraction,
        "max_chars": max_chars,
    }
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    key = f"{name}-{kind}" + (f"{vocab_size}" if kind == "bpe" else "") + f"-{digest}"
    base = cache_dir("language")
    final = base / key
    display = src.display_name + (f" (first {max_chars:,} chars)" if max_chars is not None else "")

    if use_cache:
        cached = _read_cache(final, spec)
        if cached is not None:
            meta, train_ids, val_ids, tok = cached
            return _make_corpus(name, display, kind, tok, train_ids, val_ids, meta, final)

    t0 = time.perf_counter()
    text = read_text(name)
    if max_chars is not None:
        text = text[:max_chars]
    train_text, val_text = split_text(text, val_fraction)
    _check_split(name, path, len(text), train_text, val_text, max_chars, val_fraction)
    if kind == "char":
        tok = _tok.train_char_tokenizer(train_text)
    else:
        tok = _tok.train_bpe_tokenizer(train_text, vocab_size=vocab_size, min_frequency=min_frequency)
    t_train = time.perf_counter() - t0
    unknown = ()
    if _tok.is_char_tokenizer(tok):
        missing = set(val_text) - _tok.char_vocabulary(tok)
        unknown = tuple(sorted(missing, key=val_text.index))
        if unknown:
            log.warning(
                "%s: val split has %d character(s) outside the train vocabulary, mapped to [UNK]: %s",
                name, len(unknown), ", ".join(repr(c) for c in unknown[:8]),
            )
    t1 = time.perf_counter()
    train_ids = _tok.encode_checked(tok, train_text, as_tensor=True)
    val_ids = _tok.encode_checked(tok, val_text, unknown="unk" if unknown else "error", as_tensor=True)
    t_encode = time.perf_counter() - t1
    meta = {
        "spec": spec,
        "n_train_chars": len(train_text),
        "n_val_chars": len(val_text),
        "n_train_tokens": len(train_ids),
        "n_val_tokens": len(val_ids),
        "chars_per_token": len(val_text) / max(len(val_ids), 1),
        "val_unknown_chars": list(unknown),
        "vocab_size": len(tok),
        "seconds_tokenizer": round(t_train, 3),
        "seconds_encode": round(t_encode, 3),
    }
    log.info("%s/%s: tokenizer %.2fs, encode %.2fs", name, kind, t_train, t_encode)
    if use_cache:
        _write_cache(final, meta, train_ids, val_ids, tok)
    return _make_corpus(name, display, kind, tok, train_ids, val_ids, meta, final if use_cache else None)


def _make_corpus(
    name: str,
    display: str,
    kind: str,
    tok: PreTrainedTokenizerFast,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    meta: dict,
    cache_path: Path | None,
) -> Corpus:
    return Corpus(
        name=name,
        display_name=display,
        tokenizer_kind=kind,
        tokenizer=tok,
        train_ids=train_ids,
        val_ids=val_ids,
        vocab_size=len(tok),
        chars_per_token=float(meta["chars_per_token"]),
        n_train_chars=int(meta["n_train_chars"]),
        n_val_chars=int(meta["n_val_chars"]),
        val_unknown_chars=tuple(meta["val_unknown_chars"]),
        cache_path=cache_path,
    )


def _read_cache(
    folder: Path, spec: dict
) -> tuple[dict, torch.Tensor, torch.Tensor, PreTrainedTokenizerFast] | None:
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("spec") != spec:
            return None
        train_ids = torch.load(folder / "train_ids.pt", weights_only=True)
        val_ids = torch.load(folder / "val_ids.pt", weights_only=True)
        tok = _tok.load_tokenizer(folder)
    except Exception as e:  # a corrupt or partial cache is rebuilt, not fatal
        log.warning("ignoring unreadable cache %s: %s", folder, e)
        return None
    if len(train_ids) != meta["n_train_tokens"] or len(val_ids) != meta["n_val_tokens"]:
        log.warning("ignoring inconsistent cache %s", folder)
        return None
    return meta, train_ids, val_ids, tok


def _write_cache(
    final: Path,
    meta: dict,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    tok: PreTrainedTokenizerFast,
) -> None:
    """Build the whole cache folder under a temp name, then rename it into place (``base.write_folder``)."""

    def fill(tmp: Path) -> None:
        torch.save(train_ids, tmp / "train_ids.pt")
        torch.save(val_ids, tmp / "val_ids.pt")
        _tok.save_tokenizer(tok, tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))

    if not write_folder(final, fill):  # another process won the race; its entry is equivalent
        log.info("cache %s written concurrently; keeping the existing one", final)
