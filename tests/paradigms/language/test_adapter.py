"""Language adapter: the shared contract for every block mode, causal masking and causal DEQ solving,
learning on real text, bad input (context too long, unknown characters), the saved tokenizer and the config files."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

if not os.environ.get("TIEDLAB_DATA"):
    pytest.skip("TIEDLAB_DATA is not set (needs tinyshakespeare/)", allow_module_level=True)

from tiedlab.core import Block, BlockSpec, GradSpec, SolverSpec, model_param_counts
from tiedlab.paradigms.contract import CONTRACT_BLOCKS, check_paradigm
from tiedlab.paradigms.language import tokenizer as T
from tiedlab.paradigms.language.adapter import LanguageDataOptions, LanguageModelOptions, LanguageParadigm
from tiedlab.paradigms.language.model import CausalLM, TransformerCell, causal_spec, gpt2_config

CPU = torch.device("cpu")
SMALL = dict(name="tinyshakespeare", max_chars=50_000, eval_batches=4, eval_batch_size=16)
TINY = dict(width=32, heads=2, context=16, max_positions=16)
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(scope="module", autouse=True)
def cache_root(tmp_path_factory):
    """Corpus caches go to a temporary folder, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("tiedlab-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIEDLAB_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def small() -> tuple[LanguageParadigm, object]:
    paradigm = LanguageParadigm(SMALL, TINY, CPU, seed=0, batch_size=8)
    return paradigm, paradigm.build_data()


# ----------------------------------------------------------------- the shared contract
@pytest.mark.parametrize("block", list(CONTRACT_BLOCKS))
def test_contract(block):
    result = check_paradigm(LanguageParadigm, data=SMALL, model=TINY, blocks=[block], batch_size=8)
    assert result[block]["last"] < result[block]["first"]


def test_bundle(small):
    paradigm, data = small
    meta = data.meta
    assert meta["dataset"].startswith("Tiny Shakespeare") and meta["tokenizer"] == "char"
    assert data.samples_per_step == 8 * 16  # tokens per step
    assert data.steps_per_epoch == meta["n_train_tokens"] // (8 * 16)
    assert meta["n_train_tokens"] == 45_000 and meta["n_val_tokens"] + meta["n_test_tokens"] == 5_000
    assert meta["n_val_windows"] == meta["n_test_windows"] == meta["n_train_windows"] == 4 * 16
    # all randomness of an epoch comes from the generator
    a = list(data.train_batches(torch.Generator().manual_seed(3)))
    b = list(data.train_batches(torch.Generator().manual_seed(3)))
    c = next(iter(data.train_batches(torch.Generator().manual_seed(4))))
    assert len(a) == data.steps_per_epoch
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0])
    x, y = a[0]
    assert x.shape == y.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_eval_batches_caps_the_windows_and_a_split_with_fewer_is_scored_on_all(small):
    """eval_batches x eval_batch_size is an upper bound: a split with fewer non-overlapping windows is evaluated on
    every one of them (a 5% half of tiny-shakespeare at context 64: 871 < 16 x 64); the meta counts the windows
    each split is scored on, the training split's (train.score_train) too."""
    paradigm = LanguageParadigm({**SMALL, "eval_batches": 20}, TINY, CPU, seed=0, batch_size=8)
    meta = paradigm.build_data().meta
    every = len(range(0, meta["n_val_tokens"] - 16, 16))  # the 2,500-token val half's windows of 16
    assert meta["n_val_windows"] == meta["n_test_windows"] == every == 156 < 20 * 16
    assert meta["n_train_windows"] == 20 * 16 == sum(len(x) for x, _ in paradigm._eval["train"])


def test_evaluation_is_fixed_and_val_differs_from_test(small):
    paradigm, data = small
    net = paradigm.build_model(data, BlockSpec(mode="tied", depth=2))
    val1, val2 = paradigm.evaluate(net, data, "val"), paradigm.evaluate(net, data, "val")
    test = paradigm.evaluate(net, data, "test")
    assert val1 == val2
    assert set(val1) == {"val/loss", "val/bpc"} and set(test) == {"test/loss", "test/bpc"}
    assert val1["val/bpc"] == pytest.approx(val1["val/loss"] / math.log(2))
    assert val1["val/loss"] != test["test/loss"]
    assert abs(val1["val/loss"] - math.log(data.meta["vocab_size"])) < 0.5  # untrained: near uniform
    fit = paradigm.evaluate(net, data, "train")  # train.score_train: as many windows, from the training split
    assert set(fit) == {"train/loss", "train/bpc"} and fit == paradigm.evaluate(net, data, "train")
    assert fit["train/loss"] not in (val1["val/loss"], test["test/loss"])
    (x, _), = paradigm._eval["train"][:1]
    assert sum(len(x) for x, _ in paradigm._eval["train"]) == 4 * 16
    train_ids = paradigm.corpus.train_ids
    assert any(torch.equal(x[0], train_ids[i:i + 16]) for i in range(len(train_ids) - 16))  # a training window
    with pytest.raises(ValueError, match="split='valid'"):
        paradigm.evaluate(net, data, "valid")


def test_tied_head_and_param_counts(small):
    paradigm, data = small
    tied = paradigm.build_model(data, BlockSpec(mode="tied", depth=4))
    explicit = paradigm.build_model(data, BlockSpec(mode="explicit", depth=4))
    assert tied.lm_head.weight is tied.wte.weight
    cell = sum(p.numel() for p in tied.block.cells[0].parameters())
    ct, ce = model_param_counts(tied), model_param_counts(explicit)
    assert ce["params/unique"] - ct["params/unique"] == 3 * cell
    assert ct["params/dense"] == ce["params/unique"]


def test_embed_width_fixes_everything_outside_the_cell(small):
    """model.embed_width: the embeddings, final norm and (tied) head at one width whatever the cell's, joined to the
    cell by two bias-free maps, counted by hand; at the cell's own width it builds the default model, draw for draw."""
    paradigm, data = small
    vocab, positions, spec = data.meta["vocab_size"], TINY["max_positions"], BlockSpec(mode="tied", depth=2)
    narrow = LanguageParadigm(SMALL, {**TINY, "width": 16, "embed_width": 32}, CPU, batch_size=8)
    torch.manual_seed(0)
    net = narrow.build_model(data, spec)
    assert net.wte.weight.shape == (vocab, 32) and net.wpe.weight.shape == (positions, 32)
    assert net.proj_in.weight.shape == (16, 32) and net.proj_out.weight.shape == (32, 16)
    assert net.proj_in.bias is None and net.proj_out.bias is None and net.lm_head.weight is net.wte.weight
    cell = sum(p.numel() for p in net.block.cells[0].parameters())
    outside = vocab * 32 + positions * 32 + 2 * 16 * 32 + 2 * 32  # wte (= head), wpe, the two maps, ln_f
    assert model_param_counts(net)["params/unique"] == cell + outside
    x, _ = next(iter(data.train_batches(torch.Generator().manual_seed(0))))
    logits, _ = net(x)
    assert logits.shape == (*x.shape, vocab) and net.embed(x).shape == (*x.shape, 16)
    # embed_width equal to the cell's width: no maps, the default model with the same parameters
    torch.manual_seed(1)
    same = LanguageParadigm(SMALL, {**TINY, "embed_width": TINY["width"]}, CPU, batch_size=8).build_model(data, spec)
    torch.manual_seed(1)
    default = paradigm.build_model(data, spec)
    assert same.proj_in is None and same.proj_out is None
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), default.state_dict().values()))
    assert list(same.state_dict()) == list(default.state_dict())


def test_austen_bpe_reports_perplexity(tmp_path):
    paradigm = LanguageParadigm({"name": "austen", "max_chars": 100_000, "vocab_size": 512, "eval_batches": 2,
                                 "eval_batch_size": 8}, TINY, CPU, batch_size=4)
    data = paradigm.build_data()
    assert data.meta["tokenizer"] == "bpe" and data.meta["vocab_size"] == 512 and data.meta["chars_per_token"] > 1.5
    net = paradigm.build_model(data, BlockSpec(mode="tied", depth=1))
    metrics = paradigm.evaluate(net, data, "val")
    assert set(metrics) == {"val/loss", "val/ppl"}
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]))
    assert paradigm.encode("Emma Woodhouse, handsome, clever, and rich \u20ac").numel() > 0  # byte-level: no unknowns
    paradigm.artifacts(str(tmp_path))
    assert T.load_tokenizer(tmp_path).get_vocab() == paradigm.corpus.tokenizer.get_vocab()


# ----------------------------------------------------------------- causal masking and causal solving
CAUSAL_BLOCKS = {
    "explicit": dict(mode="explicit", depth=3),
    "tied": dict(mode="tied", depth=3),
    "tied_distinct_mask": dict(mode="tied", depth=3, mask=dict(mode="distinct", sparsity=0.5)),
    "tied_nm_mask_weight_norm": dict(mode="tied", depth=2, norm="weight", mask=dict(mode="distinct", kind="nm")),
    # DEQs solved per position (causal_spec): exact for any tol, since converged positions are held on
    # their own and no stopping step or mixing weight is shared between positions
    "deq_anderson_ift": dict(mode="deq", solver=dict(name="anderson", max_iter=30, tol=1e-3),
                             grad=dict(mode="ift", max_iter=10)),
    "deq_anderson_8_steps": dict(mode="deq", solver=dict(name="anderson", max_iter=8, tol=0.0), grad=dict(mode="onestep")),
    "deq_broyden_phantom": dict(mode="deq", solver=dict(name="broyden", max_iter=18, tol=1e-3),
                                grad=dict(mode="phantom", steps=2)),
    "deq_fixed_point": dict(mode="deq", solver=dict(name="fixed_point", max_iter=20, tol=1e-3,
                                                            options=dict(damping=0.8))),
    "deq_fixed_point_tol0": dict(mode="deq", solver=dict(name="fixed_point", max_iter=10, tol=0.0,
                                                                 options=dict(damping=0.8))),
    "deq_anderson_distinct_mask": dict(mode="deq", depth=2, solver=dict(name="anderson", max_iter=12, tol=1e-3),
                                       mask=dict(mode="distinct", sparsity=0.5)),
}


def _lm(spec: dict, vocab: int = 50, out_norm: bool = True, embed_width: int | None = None) -> CausalLM:
    config = gpt2_config(32, 2, 4, 16, 0.0, vocab)
    return CausalLM(config, Block(lambda: TransformerCell(config, out_norm), causal_spec(BlockSpec.from_dict(spec))),
                    embed_width=embed_width)


def _future_change(net: CausalLM, at: int = 9) -> tuple[float, float, float]:
    """Max |logit change| before and from position ``at`` when every token from ``at`` on changes, and
    (with grad enabled) the max |gradient| of the earlier logits with respect to the later inputs.

    Shapes: net takes (3, 16) token ids
    """
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (3, 16), generator=g)
    idx2 = idx.clone()
    idx2[:, at:] = (idx2[:, at:] + torch.randint(1, 50, (3, 16 - at), generator=g)) % 50
    a, _ = net(idx)
    b, _ = net(idx2)
    grad = 0.0
    if torch.is_grad_enabled():
        x = net.embed(idx).detach().requires_grad_()
        z, _ = net.block(x)
        net.head(z)[:, :at].square().sum().backward()
        grad = x.grad[:, at:].abs().max().item()
    return (a[:, :at] - b[:, :at]).abs().max().item(), (a[:, at:] - b[:, at:]).abs().max().item(), grad


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("block", list(CAUSAL_BLOCKS))
@pytest.mark.parametrize("embed_width", [None, 48], ids=["cell-width", "embed-48"])
def test_future_tokens_do_not_change_the_past(block, train, embed_width):
    net = _lm(CAUSAL_BLOCKS[block], embed_width=embed_width).train(train)
    with torch.set_grad_enabled(train):
        past, future, grad = _future_change(net)
    assert past <= 1e-6, f"{block}: future tokens changed earlier logits by {past:.2e}"
    assert grad <= 1e-6, f"{block}: earlier logits have gradient {grad:.2e} to later inputs"
    assert future > 1e-3, f"{block}: the changed tokens had no effect ({future:.2e})"


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point"])
def test_deq_is_causal_in_float64(solver):
    net = _lm(dict(mode="deq", solver=dict(name=solver, max_iter=20, tol=1e-4))).double().eval()
    with torch.no_grad():
        past, future, _ = _future_change(net)
    assert past <= 1e-12 and future > 1e-3, f"{solver}: past {past:.2e}, future {future:.2e}"


def test_deq_is_built_per_position(small):
    paradigm, data = small
    net = paradigm.build_model(data, BlockSpec(mode="deq", solver=SolverSpec(name="broyden"), grad=GradSpec(mode="ift")))
    assert net.block.spec.solver.options["sample_dims"] == 2
    assert net.block.spec.grad.options["sample_dims"] == 2
    assert paradigm.build_model(data, BlockSpec(mode="tied")).block.spec.solver.options == {}


def test_per_sequence_deq_is_refused():
    """A DEQ solved with one system per sequence mixes future positions into earlier ones."""
    config = gpt2_config(32, 2, 4, 16, 0.0, 50)
    spec = BlockSpec(mode="deq", solver=SolverSpec(name="anderson", max_iter=8))
    with pytest.raises(ValueError, match="not causal: build its spec with causal_spec"):
        CausalLM(config, Block(lambda: TransformerCell(config), spec))
    for bad in (dict(solver=SolverSpec(options=dict(sample_dims=1))), dict(grad=GradSpec(options=dict(sample_dims=1)))):
        with pytest.raises(ValueError, match="sample_dims=1: a causal language model solves each"):
            causal_spec(dataclasses.replace(spec, **bad))


def test_default_attention_would_not_be_causal():
    """Why the config pins attn_implementation: a bare GPT2Config attends to the future."""
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="not causal"):
        TransformerCell(GPT2Config(n_embd=32, n_head=2))


# ----------------------------------------------------------------- learning on real text
def test_learns_characters():
    """100 AdamW steps of a tiny tied model bring the val loss well below the unigram entropy."""
    paradigm = LanguageParadigm(SMALL, TINY, CPU, seed=0, batch_size=32)
    data = paradigm.build_data()
    torch.manual_seed(0)
    net = paradigm.build_model(data, BlockSpec(mode="tied", depth=2))
    train_ids = paradigm.corpus.train_ids
    freq = torch.bincount(train_ids, minlength=data.meta["vocab_size"]).double() / len(train_ids)
    unigram = -(freq[freq > 0] * freq[freq > 0].log()).sum().item()  # about 3.3 nats
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    assert data.steps_per_epoch < 100  # so this also runs past the end of an epoch
    batches = (b for epoch in range(2) for b in data.train_batches(torch.Generator().manual_seed(epoch)))
    for _, batch in zip(range(100), batches):
        out = paradigm.training_step(net.train(), batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    val = paradigm.evaluate(net, data, "val")["val/loss"]
    assert val < unigram - 0.5, f"val loss {val:.3f} vs unigram entropy {unigram:.3f}"


# ----------------------------------------------------------------- bad input
def test_context_longer_than_positions_is_an_error():
    with pytest.raises(ValueError, match="max_positions=16"):
        LanguageParadigm(SMALL, {**TINY, "context": 17}, CPU)
    net = _lm(dict(mode="tied", depth=1))
    with pytest.raises(ValueError, match="exceeds the positional range"):
        net(torch.zeros(1, 17, dtype=torch.long))


def test_context_longer_than_split_is_an_error():
    paradigm = LanguageParadigm({**SMALL, "max_chars": 1000}, {**TINY, "context": 64, "max_positions": 64}, CPU)
    with pytest.raises(ValueError, match="model.context=64 needs at least 65 tokens but the val split"):
        paradigm.build_data()


def test_unknown_characters(small):
    paradigm, data = small
    net = paradigm.build_model(data, BlockSpec(mode="tied", depth=1))
    with pytest.raises(ValueError, match="outside the tokenizer vocabulary.*'€'"):
        paradigm.encode("To be, or not to be: €5")
    with pytest.raises(ValueError, match="'€'"):
        paradigm.evaluate_text(net, "To be, or not to be: €5")
    ids = paradigm.encode("be €", unknown="unk")
    assert ids[-1].item() == paradigm.corpus.tokenizer.unk_token_id
    scored = paradigm.evaluate_text(net, "To be, or not to be: €5", unknown="unk")
    assert set(scored) == {"text/loss", "text/bpc"} and math.isfinite(scored["text/loss"])


def test_unknown_characters_in_held_out_text():
    """The first 2000 characters: the held-out 10% has a 'T' that the train 90% lacks."""
    data = {**SMALL, "max_chars": 2000, "eval_batches": 1}
    with pytest.raises(ValueError, match="outside the char-level train vocabulary: 'T'"):
        LanguageParadigm(data, TINY, CPU, batch_size=4).build_data()
    bundle = LanguageParadigm({**data, "unknown": "unk"}, TINY, CPU, batch_size=4).build_data()
    assert bundle.meta["unknown_chars"] == ["T"]


@pytest.mark.parametrize("section,options,bad", [
    ("data", {"name": "wikitext"}, "valid names"),
    ("data", {"tokenizer": "word"}, "data.tokenizer='word'"),
    ("data", {"unknown": "skip"}, "data.unknown='skip'"),
    ("data", {"eval_batchs": 3}, "unknown key"),
    ("model", {"width": 30, "heads": 4}, "divisible"),
    ("model", {"depth": 4}, "unknown key"),
    ("model", {"state_scale": 0.0}, "model.state_scale=0.0 must be in"),
    ("model", {"state_scale": 1.5}, "model.state_scale=1.5 must be in"),
    ("model", {"embed_width": 0}, "model.embed_width=0 must be null or an integer >= 1"),
    ("model", {"embed_width": 16.0}, "model.embed_width=16.0 must be null or an integer >= 1"),
])
def test_bad_options(section, options, bad):
    data, model = (options, TINY) if section == "data" else (SMALL, options)
    with pytest.raises(ValueError, match=bad):
        LanguageParadigm(data, model, CPU)


def test_nm_masks_group_the_gpt2_blocks_input_features():
    """Conv1D weights are stored (in, out): a 2:4 mask keeps 2 of every 4 consecutive input features (dim 0) for
    each output feature, in every masked weight of the cell."""
    config = gpt2_config(32, 2, 4, 16, 0.0, 50)
    block = Block(lambda: TransformerCell(config), BlockSpec.from_dict(
        dict(mode="tied", depth=2, mask=dict(mode="distinct", kind="nm", n=2, m=4))))
    assert block.masks.names == ["block.attn.c_attn.weight", "block.attn.c_proj.weight", "block.mlp.c_fc.weight",
                                 "block.mlp.c_proj.weight"]
    for name in block.masks.names:
        for layer in range(2):
            mask = block.masks.mask(layer, name)
            inputs, outputs = mask.shape
            assert torch.all(mask.t().reshape(outputs, inputs // 4, 4).sum(dim=-1) == 2), name


def test_weight_norm_normalises_the_gpt2_blocks_output_features():
    """Conv1D weights are stored (in, out): a weight norm keeps one gain per output feature (dim 1), as the masks
    read them, and ``used`` counts each output column a mask keeps any of."""
    config = gpt2_config(16, 2, 4, 16, 0.0, 50)
    block = Block(lambda: TransformerCell(config), BlockSpec.from_dict(
        dict(mode="tied", depth=2, norm="weight", mask=dict(mode="shared", sparsity=0.99))))
    cell, used = block.cells[0], 0
    for name in block.masks.names:
        inputs, outputs = cell.get_parameter(name).shape
        assert block.norms[0].norms[name.replace(".", "__")].gain.shape == (1, outputs), name
        used += inputs * int(block.masks.mask(0, name).any(dim=0).sum())
    weights = sum(cell.get_parameter(name).numel() for name in block.masks.names)
    assert block.param_counts()["used"] == block.param_counts()["unique"] - weights + used


def test_inject_norm_and_state_scale_make_the_cell_a_contraction_at_initialisation():
    """f = LN_out(GPT2Block(s z + LN_in(x))), checked against the formula; LN_out is invariant to its input's scale,
    so the default cell (x as it comes, 0.02 at initialisation; s = 1) has df/dz of norm ~1 at its fixed point,
    and s < 1 alone changes nothing; with the injection at unit scale it contracts, more so with s < 1."""
    from tiedlab.core.equilibrium import spectral_norm_at

    config = gpt2_config(32, 2, 4, 16, 0.0, 50, 0.0)
    x = 0.02 * torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    norms = {}
    for inject_norm, scale in [(False, 1.0), (False, 0.5), (True, 1.0), (True, 0.5)]:
        torch.manual_seed(0)
        cell = TransformerCell(config, inject_norm=inject_norm, state_scale=scale).eval()
        z = torch.zeros_like(x)
        with torch.no_grad():
            for _ in range(40):
                z = cell(z, x)
            u = scale * z + (torch.nn.functional.layer_norm(x, (32,), cell.ln_in.weight, cell.ln_in.bias, 1e-5)
                             if inject_norm else x)
            assert torch.allclose(cell(z, x), cell.ln_out(cell.block(u)), atol=1e-6)
        norms[inject_norm, scale] = float(spectral_norm_at(lambda q: cell(q, x), z.flatten(0, 1).view(2, 16, 32),
                                                           iters=30, generator=torch.Generator().manual_seed(0)).max())
    assert norms[False, 1.0] > 0.95 and norms[False, 0.5] > 0.95
    assert norms[True, 0.5] < norms[True, 1.0] < 0.75


def test_deq_with_block_dropout_is_an_error(small):
    _, data = small
    paradigm = LanguageParadigm(SMALL, {**TINY, "block_dropout": 0.1}, CPU)
    with pytest.raises(ValueError, match="block_dropout=0.1 with block mode 'deq'"):
        paradigm.build_model(data, BlockSpec(mode="deq"))
    # embedding dropout is drawn once per forward: the DEQ map stays deterministic
    net = LanguageParadigm(SMALL, {**TINY, "dropout": 0.1}, CPU).build_model(data, BlockSpec(mode="deq", solver=SolverSpec(max_iter=4)))
    assert net.drop.p == 0.1 and all(m.p == 0.0 for m in net.block.modules() if isinstance(m, torch.nn.Dropout))


# ----------------------------------------------------------------- artifacts and configs
def test_artifacts_save_the_tokenizer(small, tmp_path):
    paradigm, _ = small
    paradigm.artifacts(str(tmp_path))
    loaded = T.load_tokenizer(tmp_path)
    text = "First Citizen:\nBefore we proceed"
    assert T.encode_checked(loaded, text) == paradigm.encode(text).tolist()
    with pytest.raises(RuntimeError, match="build_data"):
        LanguageParadigm(SMALL, TINY, CPU).artifacts(str(tmp_path))


def test_config_files_hold_every_option():
    omegaconf = pytest.importorskip("omegaconf")
    paradigm = omegaconf.OmegaConf.load(CONFIGS / "paradigm" / "language.yaml")
    assert paradigm.paradigm == "language"
    model = omegaconf.OmegaConf.to_container(paradigm.model)
    assert set(model) == set(LanguageModelOptions.__dataclass_fields__)
    assert LanguageModelOptions(**model) == LanguageModelOptions()
    for name in ("tinyshakespeare", "austen"):
        path = CONFIGS / "data" / f"{name}.yaml"
        assert path.read_text().startswith("# @package data")
        data = omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.load(path))
        assert set(data) == set(LanguageDataOptions.__dataclass_fields__) and data["name"] == name
        LanguageDataOptions(**data)


def test_a_deq_with_the_jacobian_penalty_trains_and_its_equilibrium_can_be_measured(small):
    """The penalty differentiates a vector-Jacobian product: the cell then attends with the math kernel (the fused
    CPU kernel has no double backward); the engine's spectral-norm probe needs no double backward at all."""
    paradigm, data = small
    spec = BlockSpec(mode="deq", jacobian_samples=1, solver=SolverSpec(max_iter=6))
    net = paradigm.build_model(data, spec)
    assert net.block.cells[0].twice_differentiable
    assert not paradigm.build_model(data, BlockSpec(mode="deq")).block.cells[0].twice_differentiable
    batch = next(iter(data.train_batches(torch.Generator().manual_seed(0))))
    out = paradigm.training_step(net, batch)
    (out.loss + out.stats.jacobian_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.block.parameters() if p.grad is not None)
    plain = paradigm.build_model(data, BlockSpec(mode="deq", solver=SolverSpec(max_iter=6))).eval()
    x = plain.embed(batch[0]).detach()
    health = plain.block.equilibrium(x, power_iters=3)
    assert set(health) == {"rel_residual", "converged_fraction", "systems", "spectral_norm"}
    assert health["spectral_norm"] > 0 and health["systems"] == x.shape[0] * x.shape[1]  # solved per position
