"""Tokenizers trained locally (never downloaded) for the language paradigm.

Two kinds, both wrapped as ``transformers.PreTrainedTokenizerFast`` so that they save and load
with ``save_pretrained`` / ``from_pretrained`` from a local folder (works with ``HF_HUB_OFFLINE=1``):

* **char**: one token per Unicode code point (spaces and newlines included), a ``WordLevel``
  model over the sorted characters of the training text; ids ``0..n-1`` are the sorted
  characters (the same ids as nanoGPT's ``shakespeare_char``) and ``[UNK]`` is id ``n``.
  Characters outside the vocabulary are an error in :func:`encode_checked` unless
  ``unknown="unk"``, which maps each of them to ``[UNK]`` (decoding gives the literal ``"[UNK]"``).
* **bpe**: byte-level BPE (GPT-2 style pre-tokenizer, no prefix space), which has no unknowns:
  every string round-trips exactly. ``<|endoftext|>`` is its only special token (the eos token).

Special-token strings that occur literally in a text are encoded as ordinary characters/bytes by
:func:`encode_checked` (``split_special_tokens=True``), so ``decode(encode(s)) == s`` for any ``s``
the tokenizer can represent.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..base import write_folder

UNK_TOKEN = "[UNK]"
EOS_TOKEN = "<|endoftext|>"
UNKNOWN_CHOICES = ("error", "unk")
TOKENIZER_SUBDIR = "tokenizer"

__all__ = [
    "EOS_TOKEN",
    "UNKNOWN_CHOICES",
    "UNK_TOKEN",
    "char_vocabulary",
    "encode_checked",
    "is_char_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "train_bpe_tokenizer",
    "train_char_tokenizer",
]


def train_char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer whose vocabulary is the sorted set of characters of ``text`` plus ``[UNK]``.

    Raises:
        ValueError: ``text`` is empty.
    """
    if not text:
        raise ValueError("train_char_tokenizer: text is empty; need at least one character")
    chars = sorted(set(text))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[UNK_TOKEN] = len(chars)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    # Every code point, whitespace included, is its own pre-token; no normalizer.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate tokens, no spaces in between
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK_TOKEN, clean_up_tokenization_spaces=False
    )


def train_bpe_tokenizer(
    text: str, vocab_size: int = 4096, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``text`` (256 byte tokens + ``<|endoftext|>`` + merges).

    Raises:
        ValueError: ``vocab_size`` < 257, ``min_frequency`` < 1 or empty ``text``.
    """
    if not text:
        raise ValueError("train_bpe_tokenizer: text is empty")
    if vocab_size < 257:
        raise ValueError(
            f"train_bpe_tokenizer: vocab_size={vocab_size} is too small; need >= 257 "
            "(256 byte tokens + <|endoftext|>)"
        )
    if min_frequency < 1:
        raise ValueError(f"train_bpe_tokenizer: min_frequency={min_frequency} must be >= 1")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS_TOKEN],
        show_progress=False,
    )
    # One sequence: the pre-tokenizer splits it into words itself, so this is exact (and ~2 s on 3.6 MB).
    backend.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, clean_up_tokenization_spaces=False
    )


def is_char_tokenizer(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether ``tokenizer`` is a character-level (WordLevel) tokenizer as made by :func:`train_char_tokenizer`."""
    return isinstance(tokenizer.backend_tokenizer.model, models.WordLevel)


def char_vocabulary(tokenizer: PreTrainedTokenizerFast) -> frozenset[str]:
    """The single characters a char-level tokenizer knows (``[UNK]`` excluded)."""
    return frozenset(t for t in tokenizer.get_vocab() if len(t) == 1)


def _describe_unknown(text: str, unknown_chars: set[str]) -> str:
    ordered = sorted(unknown_chars, key=text.index)  # order of first appearance
    shown = ", ".join(repr(c) for c in ordered[:8]) + (", ..." if len(ordered) > 8 else "")
    occurrences = sum(text.count(c) for c in ordered)
    return (
        f"{len(ordered)} distinct character(s) outside the tokenizer vocabulary "
        f"({occurrences} occurrence(s)): {shown}"
    )


def encode_checked(
    tokenizer: PreTrainedTokenizerFast,
    text: str,
    *,
    unknown: str = "error",
    as_tensor: bool = False,
) -> list[int] | torch.Tensor:
    """Encode ``text`` without special tokens, refusing silent ``[UNK]``s.

    ``unknown="error"`` raises on characters a char-level tokenizer does not know; ``"unk"`` maps
    each of them to ``[UNK]``. Byte-level BPE has no unknowns. Special-token strings inside
    ``text`` are encoded as plain text.

    Shapes: returns a list of ``len`` ids, or a 1-D int64 tensor ``(n_tokens,)`` if ``as_tensor``.

    Raises:
        ValueError: ``unknown`` is not one of ``"error"``/``"unk"``, or (``unknown="error"``) the
            text has unknown characters; the message names the first few (repr) and their count.
    """
    if unknown not in UNKNOWN_CHOICES:
        raise ValueError(f"unknown={unknown!r} is not valid; choose one of {UNKNOWN_CHOICES}")
    if unknown == "error" and is_char_tokenizer(tokenizer):
        missing = set(text) - char_vocabulary(tokenizer)
        if missing:
            raise ValueError(
                _describe_unknown(text, missing)
                + "; pass unknown='unk' to map them to [UNK]"
            )
    ids: list[int] = tokenizer(
        text,
        add_special_tokens=False,
        split_special_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    unk_id = tokenizer.unk_token_id
    if unknown == "error" and unk_id is not None and not is_char_tokenizer(tokenizer):
        # Other WordLevel/WordPiece-like tokenizers: catch unknowns after the fact.
        n_unk = sum(1 for i in ids if i == unk_id)
        if n_unk:
            raise ValueError(
                f"{n_unk} token(s) of the text map to {tokenizer.unk_token!r}; "
                "pass unknown='unk' to accept them"
            )
    if as_tensor:
        return torch.tensor(ids, dtype=torch.int64)
    return ids


def _tokenizer_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / TOKENIZER_SUBDIR


def save_tokenizer(tok: PreTrainedTokenizerFast, run_dir: str | os.PathLike[str]) -> Path:
    """Save ``tok`` to ``run_dir/tokenizer/`` (written to a temp folder, then renamed into place).

    Returns the folder written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = _tokenizer_dir(run_dir)
    write_folder(target, lambda tmp: tok.save_pretrained(str(tmp)))
    return target


def load_tokenizer(run_dir: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_tokenizer` (``run_dir/tokenizer/``, or ``run_dir`` itself
    if it holds ``tokenizer.json``); local files only, no hub access.

    Raises:
        FileNotFoundError: neither folder holds a ``tokenizer.json``.
    """
    run_dir = Path(run_dir)
    for folder in (_tokenizer_dir(run_dir), run_dir):
        if (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    raise FileNotFoundError(
        f"no tokenizer.json in {_tokenizer_dir(run_dir)} or {run_dir}; save one with save_tokenizer()"
    )
