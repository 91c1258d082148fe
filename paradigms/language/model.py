"""The language cell (a real ``transformers`` GPT-2 decoder block) and the causal LM around the core block.

Why ``GPT2Block`` (transformers 5.x): it is pre-norm (LayerNorm before attention and MLP, what a DEQ
transformer needs), takes ``hidden_states`` and returns one tensor, holds its weights as ordinary
parameters used through plain submodule calls (so masks and weight/spectral norms apply through
``torch.func.functional_call``), and has no rotary embedding (the model adds a learned positional
embedding, GPT-2 style). Its linear maps are ``transformers.Conv1D`` with weights stored as
``(in, out)``: the cell says so (``TransformerCell.mask_input_dims``), so an ``nm`` mask groups along dim 0,
the input features, as it does along dim 1 of an (out, in) weight, and a weight norm normalises per output feature,
dim 1 (one gain per column).

Causal masking: a block built from a bare config has ``_attn_implementation=None``, which falls back
to eager attention that, with ``attention_mask=None``, attends to *every* position (future tokens
included). The config made here therefore always sets ``attn_implementation="sdpa"``, whose
attention is causal (``is_causal``) when no mask is passed; :class:`TransformerCell` refuses any
other implementation.

Causal solving: a DEQ solved with one system per sequence is not causal even with a causal map, since
Anderson's mixing weights, Broyden's secant updates and the stopping step are shared by all positions
(measured leak into earlier logits: Anderson ~2e-6 after 8 steps, ~7e-3 after 30; Broyden ~1.5e-2).
:func:`causal_spec` therefore solves each (sequence, position) as its own system (the core solvers'
``sample_dims=2``, forward and adjoint): mixing weights, secant terms and holding of converged
positions are per position, so position t of the solution depends on tokens <= t only, exactly.
:class:`CausalLM` refuses a DEQ block solved otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch import nn
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Block
from transformers.pytorch_utils import Conv1D

from tiedlab.core import Block, BlockSpec, BlockStats
from tiedlab.paradigms.base import check_int

CAUSAL_ATTN = "sdpa"
CAUSAL_SAMPLE_DIMS = 2  # the state is (batch, time, width): one fixed-point system per (batch, time)


def gpt2_config(width: int, heads: int, mlp_ratio: int, max_positions: int, dropout: float,
                vocab_size: int, block_dropout: float = 0.0) -> GPT2Config:
    """The one config object the cell and the model are built from (never loaded from the hub).

    ``dropout`` acts on the embedding (``embd_pdrop``), ``block_dropout`` inside the block (attention
    and residual dropout).

    Raises:
        ValueError: ``width`` not divisible by ``heads``, or a non-positive size.
    """
    for name, value in (("width", width), ("heads", heads), ("mlp_ratio", mlp_ratio),
                        ("max_positions", max_positions), ("vocab_size", vocab_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model {name}={value!r} must be an integer >= 1")
    if width % heads:
        raise ValueError(f"model width={width} must be divisible by heads={heads}")
    for name, value in (("dropout", dropout), ("block_dropout", block_dropout)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"model {name}={value} must be in [0, 1)")
    return GPT2Config(
        vocab_size=vocab_size, n_positions=max_positions, n_embd=width, n_layer=1, n_head=heads,
        n_inner=mlp_ratio * width, activation_function="gelu", resid_pdrop=block_dropout, embd_pdrop=dropout,
        attn_pdrop=block_dropout, attn_implementation=CAUSAL_ATTN, bos_token_id=None, eos_token_id=None,
    )


def causal_spec(spec: BlockSpec) -> BlockSpec:
    """``spec`` with a DEQ solved per position (``sample_dims=2`` for the forward and the adjoint
    solve); explicit and tied specs are returned as they are.

    Raises:
        ValueError: the spec already sets another ``sample_dims`` (that solve would see the future).
    """
    if spec.mode != "deq":
        return spec
    for where, opts in (("solver.options", spec.solver.options), ("grad.options", spec.grad.options)):
        if opts.get("sample_dims", CAUSAL_SAMPLE_DIMS) != CAUSAL_SAMPLE_DIMS:
            raise ValueError(
                f"{where} sample_dims={opts['sample_dims']!r}: a causal language model solves each (batch, "
                f"position) on its own, sample_dims={CAUSAL_SAMPLE_DIMS}; any other value lets the solver "
                "mix future positions into earlier ones (drop the option or set it to 2)")
    causal = {"sample_dims": CAUSAL_SAMPLE_DIMS}
    return dataclasses.replace(spec, solver=dataclasses.replace(spec.solver, options={**spec.solver.options, **causal}),
                               grad=dataclasses.replace(spec.grad, options={**spec.grad.options, **causal}))


class TransformerCell(nn.Module):
    """f(z, x) = LN_out(GPT2Block(s * z + LN_in(x))): the token embedding is injected at every iteration.

    ``out_norm=False`` drops LN_out (a plain pre-norm residual block). With it, every state is
    normalised, so the map is bounded and a DEQ solve settles (as in the DEQ transformer of Bai et
    al.); without it the residual stream ``z + x + ...`` has no fixed point to speak of.
    ``inject_norm=True`` adds LN_in (the injection at unit scale; else x as it comes) and ``state_scale`` s < 1
    damps the state's path through the block: LN_out is invariant to its input's scale, so with s = 1 the identity
    path keeps df/dz near norm 1 or above whatever the weights.
    ``twice_differentiable=True`` computes attention with SDPA's math kernel, whose backward can itself be
    differentiated (the fused CPU kernel's cannot): a DEQ trained with the Jacobian penalty needs it.

    Shapes: z: (B, T, width), x: (B, T, width) -> (B, T, width)
    """

    def __init__(self, config: GPT2Config, out_norm: bool = True, twice_differentiable: bool = False,
                 inject_norm: bool = False, state_scale: float = 1.0):
        super().__init__()
        self.twice_differentiable = twice_differentiable
        if config._attn_implementation != CAUSAL_ATTN:
            raise ValueError(
                f"attention implementation {config._attn_implementation!r} is not causal without an explicit mask; "
                f"build the config with attn_implementation={CAUSAL_ATTN!r}")
        if not 0.0 < state_scale <= 1.0:
            raise ValueError(f"state_scale={state_scale} must be in (0, 1]")
        self.block = GPT2Block(config)
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon) if out_norm else None
        self.ln_in = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon) if inject_norm else None
        self.state_scale = float(state_scale)

    def forward(self, z: torch.Tensor, x: torch.Tensor, **ctx: Any) -> torch.Tensor:
        if ctx:
            raise TypeError(f"TransformerCell takes no context, got {sorted(ctx)}")
        u = (z if self.state_scale == 1.0 else self.state_scale * z) + (self.ln_in(x) if self.ln_in is not None else x)
        if self.twice_differentiable:
            with sdpa_kernel(SDPBackend.MATH):
                h = self.block(u)
        else:
            h = self.block(u)
        return self.ln_out(h) if self.ln_out is not None else h

    def mask_input_dims(self) -> dict[str, int]:
        """The block's ``Conv1D`` weights are stored (in, out): N:M masks group along their dim 0, the input
        features (``tiedlab.core.masks``), and a weight norm normalises along dim 1, the output features."""
        return {f"{name}.weight": 0 for name, module in self.named_modules() if isinstance(module, Conv1D)}


class CausalLM(nn.Module):
    """token + position embedding [-> linear map into the cell's width] -> core Block over the cell
    [-> linear map back] -> final LayerNorm -> LM head.

    The head is tied to the token embedding when ``tie_head`` (GPT-2 style), else its own matrix.
    ``embed_width`` (None: the cell's width ``config.n_embd``) sets the width of the embeddings, the final
    LayerNorm and the head; when it differs from the cell's, two bias-free linear maps (``embed_width -> width``
    before the block, ``width -> embed_width`` after it) connect them, so arms of different cell widths can share
    everything outside the cell but those maps (what vision's ``model.feature_channels`` does for its head).
    A DEQ block must be solved per position (build its spec with :func:`causal_spec`).

    Shapes: idx: (B, T) int64, T <= max_positions -> logits (B, T, vocab_size), BlockStats
    """

    def __init__(self, config: GPT2Config, block: Block, tie_head: bool = True, embed_width: int | None = None):
        super().__init__()
        if block.spec.mode == "deq" and causal_spec(block.spec) != block.spec:
            raise ValueError("a DEQ block solved with one system per sequence is not causal: build its spec "
                             "with causal_spec(spec) (solver option sample_dims=2, forward and adjoint)")
        check_int("model.embed_width", embed_width, allow_none=True)
        width = config.n_embd
        outer = width if embed_width is None else embed_width
        self.max_positions = config.n_positions
        self.wte = nn.Embedding(config.vocab_size, outer)
        self.wpe = nn.Embedding(config.n_positions, outer)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.proj_in = nn.Linear(outer, width, bias=False) if outer != width else None
        self.block = block
        self.proj_out = nn.Linear(width, outer, bias=False) if outer != width else None
        self.ln_f = nn.LayerNorm(outer, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(outer, config.vocab_size, bias=False)
        for emb in (self.wte, self.wpe):
            nn.init.normal_(emb.weight, std=config.initializer_range)
        if tie_head:
            self.lm_head.weight = self.wte.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=config.initializer_range)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The injected input (mapped into the cell's width). Shapes: idx (B, T) -> (B, T, width)"""
        if idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, time), got {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.max_positions:
            raise ValueError(f"sequence length {t} exceeds the positional range max_positions={self.max_positions}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        return self.proj_in(x) if self.proj_in is not None else x

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from the block's output. Shapes: z (B, T, width) -> (B, T, vocab_size)"""
        return self.lm_head(self.ln_f(self.proj_out(z) if self.proj_out is not None else z))

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, BlockStats]:
        z, stats = self.block(self.embed(idx))
        return self.head(z), stats
