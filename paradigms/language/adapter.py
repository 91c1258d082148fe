"""The language paradigm: character/BPE causal language modelling with a transformers decoder block as the cell.

Data (see ``data.py``): ``tinyshakespeare`` at character level and ``austen`` with byte-level BPE.
The first ``1 - val_fraction`` of the characters is train (the tokenizer is trained on it only); the
held-out tail is cut in two halves of its tokens: the first half is ``val`` (model selection), the
second ``test``.

An *epoch* is ``n_train_tokens // (batch_size * context)`` batches of uniformly random windows: it
reads as many tokens as the train split holds (in expectation each token once). ``samples_per_step``
counts tokens (``batch_size * context``), so the engine's throughput is tokens/s.

Evaluation runs on a fixed set of non-overlapping windows of each split (up to ``eval_batches`` batches of
``eval_batch_size`` windows, evenly spaced over the split, all of them when the split has fewer: a 5% half of
tiny-shakespeare has 871 windows of 64 characters; ``eval_batches=None``: all windows), the same for every run
with the same ``context`` (``train.score_train``: up to as many windows of the training split, recorded as
``fit/...``); ``DataBundle.meta`` counts them (``n_train_windows``, ``n_val_windows``, ``n_test_windows``). It
reports the token-weighted mean cross-entropy
``{split}/loss`` (nats per token) plus ``{split}/bpc`` (char level, bits per character) or
``{split}/ppl`` (BPE, perplexity).

DEQ: the block is solved with one fixed-point system per (sequence, position) (``model.causal_spec``,
solver option ``sample_dims=2``), which keeps the solve exactly causal; a config that sets another
``sample_dims`` is an error.

Unknown characters: byte-level BPE has none. For a char-level tokenizer, held-out characters that
the train split lacks are an error at ``build_data`` unless ``data.unknown="unk"`` (they are then
scored as ``[UNK]`` and listed in ``DataBundle.meta["unknown_chars"]``); :meth:`LanguageParadigm.encode`
and :meth:`LanguageParadigm.evaluate_text` take the same choice for any other text.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tiedlab.core import Block, BlockSpec

from ..base import DataBundle, Paradigm, StepOutput, check_choice, check_int, eval_mode
from . import tokenizer as tok
from .data import Corpus, load_corpus
from .model import CausalLM, TransformerCell, causal_spec, gpt2_config
from .options import LanguageDataOptions, LanguageModelOptions

Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_SPLITS = ("val", "test")
SCORED_SPLITS = ("train", *EVAL_SPLITS)  # "train": up to as many evenly spaced windows of the training split


class LanguageParadigm(Paradigm):
    """Causal language modelling; the cell is a GPT-2 decoder block with the embedding injected each step."""

    name = "language"
    DataOptions = LanguageDataOptions
    ModelOptions = LanguageModelOptions
    primary_metric = "loss"
    higher_is_better = False
    data_parallel = True  # (inputs, targets) of equal-length windows, mean over tokens: slices average exactly
    seed_batch = True  # (inputs, targets) of one shape per seed (on CPU, vmap runs attention through a slow fallback)
    scores_train = True  # up to eval_batches x eval_batch_size windows evenly over the training split, as for val

    def __init__(self, data: Any, model: Any, device: torch.device, seed: int = 0, batch_size: int = 64):
        super().__init__(data, model, device, seed, batch_size)
        check_int("train.batch_size", self.batch_size)
        self.corpus: Corpus | None = None
        self._eval: dict[str, list[Batch]] = {}

    # ----------------------------------------------------------------- data
    def build_data(self) -> DataBundle:
        d, context, batch_size = self.data_opts, self.model_opts.context, self.batch_size
        corpus = load_corpus(d.name, tokenizer=d.tokenizer, vocab_size=d.vocab_size, val_fraction=d.val_fraction,
                             max_chars=d.max_chars)
        if corpus.val_unknown_chars and d.unknown == "error":
            raise ValueError(
                f"{d.name}: the held-out text has {len(corpus.val_unknown_chars)} character(s) outside the "
                f"char-level train vocabulary: {', '.join(map(repr, corpus.val_unknown_chars[:8]))}; "
                "set data.unknown='unk' to score them as [UNK]")
        splits = corpus.train_val_test()
        for split, ids in splits.by_split.items():
            if context > len(ids) - 1:
                raise ValueError(
                    f"model.context={context} needs at least {context + 1} tokens but the {split} split of "
                    f"{corpus.display_name} has {len(ids)}; lower model.context or raise data.max_chars")
        self.corpus = corpus
        self._eval = {s: list(splits.eval_batches(s, d.eval_batch_size, context, d.eval_batches, device=self.device))
                      for s in SCORED_SPLITS}
        steps = max(1, len(corpus.train_ids) // (batch_size * context))

        def train_batches(generator: torch.Generator) -> Iterator[Batch]:
            for _ in range(steps):
                yield corpus.batch("train", batch_size, context, generator=generator, device=self.device)

        meta = {
            "dataset": corpus.display_name, "tokenizer": corpus.tokenizer_kind, "vocab_size": corpus.vocab_size,
            "context": context, "batch_size": batch_size,
            **{f"n_{s}_tokens": len(ids) for s, ids in splits.by_split.items()},
            **{f"n_{s}_windows": sum(len(x) for x, _ in self._eval[s]) for s in SCORED_SPLITS},
            "chars_per_token": corpus.chars_per_token, "unknown_chars": list(corpus.val_unknown_chars),
            "epoch": "n_train_tokens // (batch_size * context) random windows",
        }
        return DataBundle(train_batches=train_batches, steps_per_epoch=steps,
                          samples_per_step=batch_size * context, meta=meta)

    def _require_corpus(self) -> Corpus:
        if self.corpus is None:
            raise RuntimeError("call build_data() first: the tokenizer and the vocabulary come from the corpus")
        return self.corpus

    # ----------------------------------------------------------------- model
    def _config(self, vocab_size: int):
        m = self.model_opts
        return gpt2_config(m.width, m.heads, m.mlp_ratio, m.max_positions, m.dropout, vocab_size, m.block_dropout)

    def cell(self, data: DataBundle, twice_differentiable: bool = False) -> nn.Module:
        m = self.model_opts
        return TransformerCell(self._config(data.meta["vocab_size"]), out_norm=m.out_norm,
                               twice_differentiable=twice_differentiable, inject_norm=m.inject_norm,
                               state_scale=m.state_scale)

    def build_model(self, data: DataBundle, spec: BlockSpec) -> nn.Module:
        if spec.mode == "deq" and self.model_opts.block_dropout > 0:
            raise ValueError(f"model.block_dropout={self.model_opts.block_dropout} with block mode 'deq': the "
                             "fixed-point map must be the same at every iteration; set model.block_dropout=0 "
                             "(model.dropout, on the embedding, is allowed)")
        config = self._config(data.meta["vocab_size"])
        spec = causal_spec(spec)  # a DEQ is solved per position: see model.causal_spec
        penalised = spec.mode == "deq" and spec.jacobian_samples > 0  # the penalty's backward differentiates a VJP
        return CausalLM(config, Block(lambda: self.cell(data, penalised), spec), tie_head=self.model_opts.tie_head,
                        embed_width=self.model_opts.embed_width)

    # ----------------------------------------------------------------- train / eval
    def training_step(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch
        logits, stats = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return StepOutput(loss=loss, stats=stats)

    def score(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        check_choice("split", split, SCORED_SPLITS)
        self._require_corpus()
        return self._metrics(split, *_loss_sum(model, self._eval[split]))

    def _metrics(self, prefix: str, loss_sum: float, n_tokens: int) -> dict[str, float]:
        loss = loss_sum / n_tokens
        out = {f"{prefix}/loss": loss}
        if self._require_corpus().tokenizer_kind == "char":
            out[f"{prefix}/bpc"] = loss / math.log(2)
        else:
            out[f"{prefix}/ppl"] = math.exp(min(loss, 80.0))
        return out

    # ----------------------------------------------------------------- text in, text out
    def encode(self, text: str, unknown: str = "error") -> torch.Tensor:
        """Token ids of ``text`` with the run's tokenizer.

        Shapes: -> (n_tokens,) int64

        Raises:
            ValueError: characters outside a char-level vocabulary with ``unknown="error"`` (names them).
        """
        return tok.encode_checked(self._require_corpus().tokenizer, text, unknown=unknown, as_tensor=True)

    def evaluate_text(self, model: nn.Module, text: str, unknown: str = "error") -> dict[str, float]:
        """Loss (and bpc/ppl) of ``model`` on ``text``, over non-overlapping windows of ``model.context``
        tokens (a shorter text is one window; a tail shorter than a window is dropped).

        Raises:
            ValueError: unknown characters (see :meth:`encode`), or fewer than 2 tokens.
        """
        ids = self.encode(text, unknown=unknown)
        if len(ids) < 2:
            raise ValueError(f"text of {len(ids)} token(s) has nothing to predict; need at least 2")
        context = min(self.model_opts.context, len(ids) - 1)
        starts = torch.arange(0, len(ids) - context, context)
        window = ids[starts[:, None] + torch.arange(context + 1)].to(self.device)
        with eval_mode(model):
            return self._metrics("text", *_loss_sum(model, [(window[:, :-1], window[:, 1:])]))

    def artifacts(self, run_dir: str) -> None:
        """Save the tokenizer to ``run_dir/tokenizer/`` (reload with ``tokenizer.load_tokenizer(run_dir)``)."""
        tok.save_tokenizer(self._require_corpus().tokenizer, run_dir)


def _loss_sum(model: nn.Module, batches: list[Batch]) -> tuple[float, int]:
    """Summed cross-entropy (nats) and token count of ``model`` over ``batches`` (call it in eval mode)."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for x, y in batches:
        logits, _ = model(x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").double().cpu()
        count += y.numel()
    return float(total), count
