"""The language paradigm's ``data`` and ``model`` config sections, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..base import check_choice, check_int
from . import tokenizer as tok
from .data import CORPORA, TOKENIZER_KINDS
from .model import gpt2_config

__all__ = ["LanguageDataOptions", "LanguageModelOptions"]


@dataclass
class LanguageDataOptions:
    """The ``data`` config section.

    Attributes:
        name: corpus, one of ``data.CORPORA`` (tinyshakespeare, austen).
        tokenizer: "char" or "bpe"; None = the corpus default (char for tinyshakespeare, bpe for austen).
        vocab_size: BPE vocabulary size (ignored at char level).
        val_fraction: held-out fraction of the characters (val + test).
        max_chars: keep only the first max_chars characters of the source (quick runs, tests).
        eval_batches: evaluation batches per split, at most (a split with fewer than eval_batches x eval_batch_size
            non-overlapping windows is evaluated on all of them; None: every window).
        eval_batch_size: windows per evaluation batch (independent of train.batch_size, so that the
            evaluated windows do not change with the training batch size).
        unknown: held-out characters outside a char-level vocabulary: "error" or "unk" (score as [UNK]).
    """

    name: str = "tinyshakespeare"
    tokenizer: Optional[str] = None
    vocab_size: int = 4096
    val_fraction: float = 0.1
    max_chars: Optional[int] = None
    eval_batches: Optional[int] = 16
    eval_batch_size: int = 64
    unknown: str = "error"

    def __post_init__(self) -> None:
        if self.name not in CORPORA:
            raise ValueError(f"unknown corpus data.name={self.name!r}; valid names: {sorted(CORPORA)}")
        check_choice("data.tokenizer", self.tokenizer, TOKENIZER_KINDS, allow_none=True)
        check_choice("data.unknown", self.unknown, tok.UNKNOWN_CHOICES)
        check_int("data.eval_batch_size", self.eval_batch_size)
        check_int("data.eval_batches", self.eval_batches, allow_none=True)  # null: every window


@dataclass
class LanguageModelOptions:
    """The ``model`` config section.

    Attributes:
        width: hidden size of the block (GPT-2 ``n_embd``).
        heads: attention heads (must divide width).
        mlp_ratio: MLP hidden size / width.
        context: tokens per window (training and evaluation).
        max_positions: size of the learned positional embedding; context must not exceed it.
        dropout: dropout on the injected embedding (drawn once per forward, so a DEQ map stays
            deterministic).
        block_dropout: attention and residual dropout inside the block (must be 0 for DEQ: the
            solver needs the same map at every iteration).
        out_norm: LayerNorm on the cell output (f = LN(GPT2Block(z + x))); needed for DEQ.
        inject_norm: LayerNorm on the injected embedding (f = LN(GPT2Block(z + LN_in(x)))): the input enters every
            iteration at unit scale instead of the embedding's (0.02 at initialisation).
        state_scale: s in f = LN(GPT2Block(s z + x)), in (0, 1]. LN_out makes the map invariant to the scale of its
            input, so the state's identity path has gain ~1 whatever the weights; with s < 1 and a unit-scale
            injection the state's share of the block input, and with it df/dz, shrinks (a DEQ can contract).
        tie_head: share the LM head's matrix with the token embedding.
        embed_width: width of the token and position embeddings, the final LayerNorm and the LM head, the same at
            every cell width (two bias-free linear maps connect it to the cell: ``model.CausalLM``); None: the
            cell's width (no maps). Arms that differ in cell width (a FLOP-matched mask comparison) then differ in
            the cell and those maps only. The input side composes linearly (embeddings, then the map: a rank-width
            embedding, as without the option); the output side gains the wider final LayerNorm and head.
    """

    width: int = 128
    heads: int = 4
    mlp_ratio: int = 4
    context: int = 64
    max_positions: int = 256
    dropout: float = 0.0
    block_dropout: float = 0.0
    out_norm: bool = True
    inject_norm: bool = False
    state_scale: float = 1.0
    tie_head: bool = True
    embed_width: Optional[int] = None

    def __post_init__(self) -> None:
        check_int("model.context", self.context)
        check_int("model.embed_width", self.embed_width, allow_none=True)
        if not (isinstance(self.state_scale, (int, float)) and 0.0 < self.state_scale <= 1.0):
            raise ValueError(f"model.state_scale={self.state_scale!r} must be in (0, 1]")
        if self.context > self.max_positions:
            raise ValueError(
                f"model.context={self.context} exceeds the positional range model.max_positions={self.max_positions}; "
                f"lower context or raise max_positions")
        gpt2_config(self.width, self.heads, self.mlp_ratio, self.max_positions, self.dropout, 1,
                    self.block_dropout)
