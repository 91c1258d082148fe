"""Tests for the self-supervised paradigm (tiedlab.paradigms.ssl): the shared contract for every method
and block mode, the kNN against a brute-force reference, the linear probe, the baselines, the views,
BYOL's momentum target, bad input, and the Hydra configs. CPU only; sklearn digits need no data root.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import numpy as np
import pytest
import torch

from tiedlab.core import Block, BlockSpec, model_param_counts
from tiedlab.paradigms.contract import CONTRACT_BLOCKS, check_paradigm
from tiedlab.paradigms.ssl.adapter import SSLParadigm
from tiedlab.paradigms.ssl.evaluation import knn_accuracy, knn_predict, linear_probe_accuracy
from tiedlab.paradigms.ssl.methods import BYOL
from tiedlab.paradigms.ssl.views import (
    LightlyViews,
    ViewSpec,
    color_jitter,
    resized_crop,
    sample_crop_boxes,
    tensor_views,
)

CPU = torch.device("cpu")
DIGITS = dict(name="digits", knn_k=20, linear_steps=20, crop_scale_min=0.5)
TINY = dict(width=8, expansion=2, feature_mult=2, proj_hidden=32, proj_dim=16)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "cache"))


def make(method: str = "simclr", block: dict | None = None, batch_size: int = 16, **data):
    paradigm = SSLParadigm({**DIGITS, **data}, {**TINY, "method": method}, CPU, seed=0, batch_size=batch_size)
    bundle = paradigm.build_data()
    model = paradigm.build_model(bundle, BlockSpec.from_dict(block or dict(mode="tied", depth=2)))
    return paradigm, bundle, model


def train_steps(paradigm, bundle, model, steps: int) -> None:
    """``steps`` Adam steps (lr 3e-3) on the bundle's first training batches (generator seed 0)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in itertools.islice(bundle.train_batches(torch.Generator().manual_seed(0)), steps):
        loss = paradigm.training_step(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


# ----------------------------------------------------------------------------------------- contract


# Every block mode runs under SimCLR; BYOL and VICReg differ only in heads and loss, so the fast suite runs
# each on one unrolled and one DEQ block, and the slow suite (-m slow) runs them on every block.
FAST_BLOCKS = {
    "simclr": tuple(CONTRACT_BLOCKS),
    "byol": ("tied_distinct_mask", "deq_fixed_point_onestep"),
    "vicreg": ("explicit", "deq_anderson_ift"),
}


@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg"])
def test_contract(method):
    results = check_paradigm(SSLParadigm, data=DIGITS, model={**TINY, "method": method}, blocks=FAST_BLOCKS[method])
    assert set(results) == set(FAST_BLOCKS[method])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["byol", "vicreg"])
def test_contract_every_block_mode(method):
    results = check_paradigm(SSLParadigm, data=DIGITS, model={**TINY, "method": method})
    assert set(results) == set(CONTRACT_BLOCKS)


def test_model_holds_exactly_one_block_and_counts_only_trained_weights():
    for method in ("simclr", "byol", "vicreg"):
        _, _, model = make(method)
        assert sum(isinstance(m, Block) for m in model.modules()) == 1, method
        assert all(p.requires_grad for p in model.parameters()), method
        counts = model_param_counts(model)
        assert counts["params/unique"] == sum(p.numel() for p in model.parameters())
        assert counts["params/dense"] > counts["params/unique"]  # tied depth 2


# ----------------------------------------------------------------------------------------- kNN and probe


def brute_force_knn(bank, bank_labels, queries, num_classes, k, temperature):
    """The weighted kNN vote written with Python loops, one query and one neighbour at a time."""
    preds = []
    for q in queries.tolist():
        qn = math.sqrt(sum(v * v for v in q))
        sims = []
        for j, b in enumerate(bank.tolist()):
            bn = math.sqrt(sum(v * v for v in b))
            sims.append((sum(x * y for x, y in zip(q, b)) / (qn * bn), j))
        sims.sort(key=lambda t: -t[0])
        score = [0.0] * num_classes
        for s, j in sims[:k]:
            score[int(bank_labels[j])] += math.exp(s / temperature)
        preds.append(max(range(num_classes), key=lambda c: (score[c], -c)))
    return torch.tensor(preds)


def test_knn_matches_brute_force_reference():
    gen = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(40, 5, generator=gen), torch.randn(17, 5, generator=gen)
    bank_labels = torch.randint(0, 4, (40,), generator=gen)
    query_labels = torch.randint(0, 4, (17,), generator=gen)
    for k, t in [(1, 0.1), (7, 0.1), (40, 0.5), (12, 0.05)]:
        ref = brute_force_knn(bank, bank_labels, queries, 4, k, t)
        got = knn_predict(torch.nn.functional.normalize(queries, dim=1), torch.nn.functional.normalize(bank, dim=1),
                          bank_labels, 4, k, t)
        assert torch.equal(got, ref), (k, t)
        acc = knn_accuracy(bank, bank_labels, queries, query_labels, 4, k=k, temperature=t, batch_size=5)
        assert acc == pytest.approx(float((ref == query_labels).float().mean()))


def test_knn_exact_numbers_on_a_hand_made_bank():
    # two class-0 points near the x axis, three class-1 points near the y axis; the query is nearer class 0
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.3, 1.0], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.6]])
    # k=2: both neighbours are class 0
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), 2, k=2, temperature=0.1) == 1.0
    # k=5 with a flat temperature: three class-1 votes of similar weight beat two class-0 votes
    assert knn_accuracy(bank, labels, query, torch.tensor([1]), 2, k=5, temperature=100.0) == 1.0
    # k=5 with a sharp temperature: the two much closer class-0 points win again
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), 2, k=5, temperature=0.05) == 1.0
    with pytest.raises(ValueError, match="knn k=6"):
        knn_accuracy(bank, labels, query, torch.tensor([0]), 2, k=6)


def test_knn_agrees_with_lightly_knn_predict():
    from lightly.utils.benchmarking import knn_predict as lightly_knn_predict

    gen = torch.Generator().manual_seed(5)
    bank = torch.nn.functional.normalize(torch.randn(60, 8, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=1)
    labels = torch.randint(0, 3, (60,), generator=gen)
    ours = knn_predict(queries, bank, labels, 3, 10, 0.1)
    theirs = lightly_knn_predict(queries, bank.t(), labels, 3, knn_k=10, knn_t=0.1)[:, 0]
    assert torch.equal(ours, theirs)


def test_linear_probe_separable_vs_random_labels():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=gen) * 4
    y = torch.randint(0, 3, (300,), generator=gen)
    x = centers[y] + torch.randn(300, 6, generator=gen)
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:], 3, steps=50) == 1.0
    noise = torch.randn(300, 6, generator=gen)
    assert linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:], 3, steps=50) < 0.6


# ----------------------------------------------------------------------------------------- baselines


def test_random_init_and_pixel_baselines_are_reported_and_fixed():
    torch.manual_seed(0)
    paradigm, bundle, model = make("simclr")
    initial = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before = paradigm.evaluate(model, bundle, "val")
    for key in ("knn_acc", "linear_acc", "knn_acc_random_init", "linear_acc_random_init", "knn_acc_pixels",
                "linear_acc_pixels"):
        assert 0.0 <= before[f"val/{key}"] <= 1.0, key
    # before any training the model IS its random initialisation
    assert before["val/knn_acc"] == before["val/knn_acc_random_init"]
    train_steps(paradigm, bundle, model, 20)
    after = paradigm.evaluate(model, bundle, "val")
    assert after["val/knn_acc_random_init"] == before["val/knn_acc_random_init"]
    assert after["val/knn_acc_pixels"] == before["val/knn_acc_pixels"]
    assert any(not torch.equal(v, initial[k]) for k, v in model.backbone.state_dict().items())
    # the baseline really is the initial weights: a backbone loaded with them scores the same
    fresh = make("simclr")[2]
    fresh.backbone.load_state_dict(initial)
    assert paradigm.evaluate(fresh, bundle, "val")["val/knn_acc"] == before["val/knn_acc_random_init"]
    # pixels on 8x8 digits are a strong kNN baseline
    assert after["val/knn_acc_pixels"] > 0.9
    test = paradigm.evaluate(model, bundle, "test")
    assert set(test) == {k.replace("val/", "test/") for k in after}


def test_the_random_init_baseline_can_be_left_out_and_then_is_never_encoded(monkeypatch):
    """data.random_init_baseline=false: no *_random_init keys, the initial backbone is never run, and every other
    metric is what the default gives."""
    import tiedlab.paradigms.ssl.adapter as adapter

    torch.manual_seed(0)
    paradigm, bundle, model = make("simclr")
    default = paradigm.evaluate(model, bundle, "val")
    torch.manual_seed(0)
    paradigm, bundle, model = make("simclr", random_init_baseline=False)
    monkeypatch.setattr(type(model), "initial_backbone", property(lambda self: pytest.fail("random init was run")))
    without = paradigm.evaluate(model, bundle, "val")
    assert without == {k: v for k, v in default.items() if not k.endswith("_random_init")}
    assert len(without) == 4
    with pytest.raises(ValueError, match=r"data.random_init_baseline='no' is not valid; choose one of \[True, Fa"):
        make("simclr", random_init_baseline="no")


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_the_training_split_fit_is_the_loss_on_fixed_views_and_changes_nothing(method):
    """train.score_train: the method's loss on the bank's training images with fixed view draws: the same on every
    call, lower after training on them, and the model (a BYOL target's BatchNorm statistics too) untouched."""
    torch.manual_seed(0)
    paradigm, bundle, model = make(method)
    state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    first = paradigm.evaluate(model, bundle, "train")
    assert set(first) == {"train/loss"} and first == paradigm.evaluate(model, bundle, "train")
    after_eval = model.state_dict()
    assert all(torch.equal(after_eval[k], v) for k, v in state.items())
    if method == "byol":
        target = {k: v.clone() for k, v in model.target.state_dict().items()}
        paradigm.evaluate(model, bundle, "train")
        assert all(torch.equal(model.target.state_dict()[k], v) for k, v in target.items())
    train_steps(paradigm, bundle, model, 30)
    assert paradigm.evaluate(model, bundle, "train")["train/loss"] < first["train/loss"]
    with pytest.raises(ValueError, match="split 'valid' is not valid"):
        paradigm.evaluate(model, bundle, "valid")


def test_bank_features_are_encoded_once_per_weights_and_never_stale(monkeypatch):
    import tiedlab.paradigms.ssl.adapter as adapter

    torch.manual_seed(0)
    paradigm, bundle, model = make("simclr")
    bank_size = len(bundle.splits["bank"][1])
    encoded: list[int] = []
    extract = adapter.extract_features

    def counting(encode, images, prepare, batch_size):
        encoded.append(len(images))
        return extract(encode, images, prepare, batch_size)

    monkeypatch.setattr(adapter, "extract_features", counting)

    def bank_passes() -> int:
        n = encoded.count(bank_size)
        encoded.clear()
        return n

    val = paradigm.evaluate(model, bundle, "val")
    assert bank_passes() == 3  # trained model, random init, pixels
    test = paradigm.evaluate(model, bundle, "test")
    assert bank_passes() == 1  # pixels only: the model's and the random init's bank features are reused
    model.bank_cache.clear()
    assert paradigm.evaluate(model, bundle, "test") == test  # reuse gives what encoding again gives
    assert bank_passes() == 1
    # an optimiser step changes the weights: the model's bank is encoded again, the baselines are not
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = paradigm.training_step(model, next(iter(bundle.train_batches(torch.Generator().manual_seed(0))))).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = paradigm.evaluate(model, bundle, "val")
    assert bank_passes() == 1 and after["val/knn_acc_random_init"] == val["val/knn_acc_random_init"]
    # a training step clears the cache even when no counter moves (fused optimisers, p.data writes)
    paradigm.evaluate(model, bundle, "test")
    bank_passes()
    paradigm.training_step(model, next(iter(bundle.train_batches(torch.Generator().manual_seed(1)))))
    paradigm.evaluate(model, bundle, "test")
    assert bank_passes() == 1
    # loading other weights (copied in place) re-encodes both the model's bank and, as the state dict carries
    # another initial backbone, the random-init baseline's, which then matches the other model's
    other_model = make("simclr")[2]
    expected = paradigm.evaluate(other_model, bundle, "val")
    bank_passes()
    model.load_state_dict(other_model.state_dict())
    loaded = paradigm.evaluate(model, bundle, "val")
    assert bank_passes() == 2 and loaded == expected
    # another bundle never reads this one's bank features
    other = paradigm.build_data()
    paradigm.evaluate(model, other, "val")
    assert bank_passes() == 3


# ----------------------------------------------------------------------------------------- views


def test_tensor_views_are_per_image_random_and_reproducible():
    imgs = (torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    imgs[:] = imgs[0]  # one image repeated: any difference between views comes from the augmentation
    spec = ViewSpec(size=12)
    a0, a1 = tensor_views(imgs, spec, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(7))
    b0, b1 = tensor_views(imgs, spec, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(7))
    c0, _ = tensor_views(imgs, spec, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(8))
    assert a0.shape == (32, 3, 12, 12) and a0.dtype == torch.float32
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert not torch.equal(a0, c0) and not torch.allclose(a0, a1)
    flat = a0.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(32) * 1e9).min() > 1e-3  # every image got its own view
    torch.manual_seed(0)
    state = torch.get_rng_state()
    tensor_views(imgs, spec, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.get_rng_state())  # nothing drawn from the global RNG


def test_crop_geometry_and_colour_match_torchvision():
    import torchvision.transforms.v2.functional as TF

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 9, 11, generator=gen)
    boxes = torch.tensor([[1.0, 2.0, 5.0, 5.0], [0.0, 0.0, 5.0, 5.0], [4.0, 6.0, 5.0, 5.0], [2.0, 3.0, 5.0, 5.0]])
    flip = torch.tensor([False, True, False, True])
    out = resized_crop(x, boxes, 5, flip)
    ref = torch.stack([x[i, :, int(t):int(t) + 5, int(l):int(l) + 5] for i, (t, l, _, _) in enumerate(boxes.tolist())])
    ref[flip] = ref[flip].flip(-1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    b, c, s = (torch.rand(4, generator=gen) * 1.5 for _ in range(3))
    h = torch.rand(4, generator=gen) - 0.5
    ref = torch.stack([TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(
        x[i], float(b[i])), float(c[i])), float(s[i])), float(h[i])) for i in range(4)])
    torch.testing.assert_close(color_jitter(x, b, c, s, h), ref, atol=2e-4, rtol=0)
    boxes = sample_crop_boxes(5000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), gen)
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= 32).all() and (left + bw <= 32).all()
    assert 0.45 < float((bh * bw).mean() / 1024) < 0.6  # E[area] ~ 0.54 before the fits-rejection


def test_lightly_views_are_reproducible_and_leave_global_rngs_alone():
    imgs = (torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    views = LightlyViews(ViewSpec(size=12), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    a = views(imgs, torch.Generator().manual_seed(3))
    b = views(imgs, torch.Generator().manual_seed(3))
    assert len(a) == 2 and a[0].shape == (6, 3, 12, 12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], a[1])
    assert torch.equal(states[0], torch.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()


def test_train_batches_depend_only_on_the_generator():
    _, bundle, _ = make("simclr")
    first = next(iter(bundle.train_batches(torch.Generator().manual_seed(4))))
    torch.manual_seed(123)
    again = next(iter(bundle.train_batches(torch.Generator().manual_seed(4))))
    other = next(iter(bundle.train_batches(torch.Generator().manual_seed(5))))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert bundle.steps_per_epoch == 1297 // 16 and len(list(bundle.train_batches(torch.Generator()))) == 81


def test_lightly_backend_builds_batches():
    _, bundle, _ = make("simclr", views="lightly")
    v0, v1 = next(iter(bundle.train_batches(torch.Generator().manual_seed(0))))
    assert v0.shape == v1.shape == (16, 1, 8, 8)


# ----------------------------------------------------------------------------------------- BYOL


def test_byol_target_follows_the_cosine_momentum_schedule_and_is_checkpointed():
    paradigm = SSLParadigm(DIGITS, {**TINY, "method": "byol", "momentum_base": 0.9, "momentum_steps": 10}, CPU,
                           batch_size=16)
    bundle = paradigm.build_data()
    model = paradigm.build_model(bundle, BlockSpec.from_dict(dict(mode="tied", depth=2)))
    assert isinstance(model, BYOL)
    assert model.momentum_at(0) == pytest.approx(0.9) and model.momentum_at(9) == 1.0
    assert 0.9 < model.momentum_at(5) < 1.0
    online = next(model.backbone.parameters())
    target = next(model.target.backbone.parameters())
    assert torch.equal(online, target) and not target.requires_grad
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(bundle.train_batches(torch.Generator().manual_seed(0))))
    for _ in range(3):
        out = paradigm.training_step(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    before = target.detach().clone()
    m = model.momentum_at(3)
    paradigm.training_step(model, batch)
    torch.testing.assert_close(target, m * before + (1 - m) * online.detach())
    assert int(model.momentum_step) == 4
    # state_dict carries the target and the step: a rebuilt model resumes exactly
    state = model.state_dict()
    torch.manual_seed(99)
    clone = paradigm.build_model(bundle, BlockSpec.from_dict(dict(mode="tied", depth=2)))
    clone.load_state_dict(state)
    assert int(clone.momentum_step) == 4
    torch.testing.assert_close(next(clone.target.backbone.parameters()), target)
    torch.testing.assert_close(next(clone.initial_backbone.parameters()), next(model.initial_backbone.parameters()))


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("data,model,batch_size,match", [
    ({"crop_size": 9}, {}, 16, r"crop_size=9 does not fit the 8x8 images"),
    ({"crop_size": 9, "views": "lightly"}, {}, 16, r"crop_size=9 does not fit the 8x8 images"),
    ({}, {}, 1, r"batch_size=1 is too small"),
    ({"knn_bank_size": 10}, {}, 16, r"knn_k=20 exceeds the kNN memory bank of 10"),
    ({"knn_bank_size": 5000}, {}, 16, r"knn_bank_size=5000 exceeds the 1297"),
    ({"limit_train": 8}, {}, 16, r"batch_size=16 exceeds the 8 training images"),
    ({"views": "pil"}, {}, 16, r"data.views='pil' is not valid; choose one of \('tensor', 'lightly'\)"),
    ({"crop_scale_min": 0.0}, {}, 16, r"crop_scale_min=0.0"),
    ({}, {"method": "moco"}, 16, r"model.method='moco' is not valid; choose one of \('simclr', 'byol', 'vicreg'\)"),
    ({"knn_neighbours": 3}, {}, 16, r"unknown key\(s\) \['knn_neighbours'\]"),
])
def test_bad_input_is_a_clear_error_before_training(data, model, batch_size, match):
    with pytest.raises(ValueError, match=match):
        SSLParadigm({**DIGITS, **data}, {**TINY, **model}, CPU, batch_size=batch_size).build_data()


@pytest.mark.parametrize("data,batch_size,match", [
    ({"crop_size": 9}, 16, r"crop_size=9 does not fit the 8x8 images.*choose data.crop_size <= 8"),
    ({}, 1, r"train.batch_size=1 is too small for simclr"),
])
def test_engine_stops_on_bad_input_before_training(tmp_path, data, batch_size, match):
    from tiedlab.paradigms.engine import train

    cfg = dict(paradigm="ssl", data={**DIGITS, **data}, model=dict(TINY), block=dict(mode="tied", depth=2),
               train=dict(batch_size=batch_size, epochs=None, max_steps=2, eval_every=1, progress=False))
    with pytest.raises(ValueError, match=match):
        train(cfg, tmp_path)
    # no config, history, metrics or checkpoint: nothing ran (only the run directory's lock file was opened)
    assert [p.name for p in tmp_path.iterdir()] == ["run.lock"]


def test_views_reject_a_crop_larger_than_the_images():
    imgs = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"crop_size=12 does not fit the 8x8 images"):
        tensor_views(imgs, ViewSpec(size=12), (0.5,), (0.25,), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"crop_size=12 does not fit the 8x8 images"):
        LightlyViews(ViewSpec(size=12), (0.5,), (0.25,))(imgs, torch.Generator().manual_seed(0))


def test_forward_rejects_a_single_image_batch():
    _, _, model = make("simclr")
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="at least 2 images"):
        model(x, x)


# ----------------------------------------------------------------------------------------- configs


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    import tiedlab.paradigms.cli  # noqa: F401  (registers the train schema)

    with initialize_config_module(config_module="tiedlab.configs", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", ["ssl_tied_vs_deq", "ssl_sparsity", "ssl_depth"])
@pytest.mark.parametrize("size", ["ssl_quick", "ssl_paper"])
def test_configs_compose_and_every_grid_value_validates(experiment, size):
    from omegaconf import OmegaConf

    from tiedlab.paradigms.config import validate

    base = ["paradigm=ssl", f"size={size}", f"experiment={experiment}"]
    cfg = _compose(base)
    grid = dict(cfg.hydra.sweeper.params)
    assert grid, experiment
    for key, values in grid.items():
        for value in str(values).split(","):
            run = _compose([*base, f"{key}={value}"])
            validate(run)
            model = OmegaConf.to_container(run.model, resolve=True)
            data = OmegaConf.to_container(run.data, resolve=True)
            SSLParadigm(data, model, CPU, batch_size=run.train.batch_size)
            assert run.paradigm == "ssl"


@pytest.mark.parametrize("data", ["ssl_cifar10", "ssl_mnist", "ssl_fashion_mnist", "ssl_digits"])
def test_data_files_set_every_option(data):
    import dataclasses

    from omegaconf import OmegaConf

    from tiedlab.paradigms.ssl.adapter import SSLDataOptions, SSLModelOptions

    cfg = _compose(["paradigm=ssl", f"data={data}"])
    assert set(cfg.data) == {f.name for f in dataclasses.fields(SSLDataOptions)}
    assert set(cfg.model) == {f.name for f in dataclasses.fields(SSLModelOptions)}
    SSLParadigm(OmegaConf.to_container(cfg.data, resolve=True), OmegaConf.to_container(cfg.model, resolve=True), CPU)


def test_engine_runs_byol_end_to_end(tmp_path):
    from tiedlab.paradigms.engine import train

    cfg = dict(paradigm="ssl", data={**DIGITS, "limit_train": 64},
               model={**TINY, "method": "byol", "momentum_steps": 4},
               block=dict(mode="tied", depth=2),
               train=dict(batch_size=16, epochs=None, max_steps=4, eval_every=2, ckpt_every=2, progress=False),
               optim=dict(lr=0.01))
    result = train(cfg, tmp_path)
    assert result["status"] == "completed", result["reason"]
    m = result["metrics"]
    for key in ("val/knn_acc", "test/knn_acc", "test/knn_acc_random_init", "test/knn_acc_pixels", "test/linear_acc",
                "core/nfe_forward", "params/unique"):
        assert key in m, key
    assert m["core/nfe_forward"] == 2  # only the online block is recorded, not the target


def test_the_fit_batches_mix_classes_when_the_source_is_grouped_by_class(monkeypatch):
    """fit/loss cuts the kNN bank into batches in the bank's order: on a training split grouped by class (the
    CIFAR-10 copy without data.limit_train) the bank is in a random order, so batches are not one class each."""
    import tiedlab.paradigms.ssl.adapter as adapter

    real = adapter.load_vision_data

    def grouped(*args, **kwargs):
        data = real(*args, **kwargs)
        order = torch.argsort(data.train_y, stable=True)
        return dataclasses.replace(data, train_x=data.train_x[order], train_y=data.train_y[order])

    monkeypatch.setattr(adapter, "load_vision_data", grouped)
    _, bundle, _ = make("simclr")
    labels = bundle.splits["bank"][1]
    assert not torch.equal(labels, labels.sort().values)  # the bank does not keep the grouped order
    classes_per_batch = [len(set(labels[i:i + 16].tolist())) for i in range(0, len(labels) - 15, 16)]
    assert min(classes_per_batch) >= 3  # a batch of 16 from 10 classes at random: one class is vanishingly rare


def test_the_equilibrium_probe_puts_back_a_byol_target_that_its_training_step_moved():
    """The engine's gradient probe runs the paradigm's training step, which moves BYOL's target (kept outside the
    module tree) towards the online weights: the probe restores it with the buffers, so probing changes nothing."""
    from tiedlab.paradigms.engine import _restored

    torch.manual_seed(0)
    paradigm, bundle, model = make("byol")
    train_steps(paradigm, bundle, model, 3)  # online and target weights now differ
    batch = next(iter(bundle.train_batches(torch.Generator().manual_seed(1))))
    before = {k: v.clone() for k, v in model.target.state_dict().items()}
    with _restored(model):
        paradigm.training_step(model, batch)
        moved = any(not torch.equal(model.target.state_dict()[k], v) for k, v in before.items())
    assert moved  # the step did move it ...
    assert all(torch.equal(model.target.state_dict()[k], v) for k, v in before.items())  # ... and it is back


# ----------------------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg"])
def test_the_training_split_fit_normalises_by_batch_statistics_as_training_does(method):
    """fit/loss is the objective the run minimised: the heads' (and a BYOL target's) BatchNorm uses the batch's
    statistics, as a training step's forward does, not the running ones an eval-mode forward would use; and the
    running statistics it moves are put back."""
    import copy

    from tiedlab.paradigms.ssl.adapter import FIT_VIEWS_SEED

    torch.manual_seed(0)
    paradigm, bundle, model = make(method, knn_bank_size=64)
    train_steps(paradigm, bundle, model, 5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and any(float(m.running_mean.abs().max()) > 0 for m in norms)  # non-trivial running statistics
    state = copy.deepcopy(model.state_dict())
    fit = paradigm.evaluate(model, bundle, "train")["train/loss"]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items() if isinstance(v, torch.Tensor))
    assert all(torch.equal(a, b) for a, b in zip(model.target.state_dict().values(),
                                                  state["_extra_state"]["momentum"].values())) \
        if method == "byol" else True

    def loss_in_mode(training: bool) -> float:
        """The mean of the method's forward over the fit's batches and views, the whole model in one mode."""
        generator, bank, losses = torch.Generator().manual_seed(FIT_VIEWS_SEED), bundle.splits["bank"][0], []
        model.train(training)
        with torch.no_grad():
            for i in range(0, len(bank) - 16 + 1, 16):
                losses.append(float(model(*bundle.views(bank[i:i + 16], generator))[0]))
        model.load_state_dict(copy.deepcopy(state))
        return sum(losses) / len(losses)

    assert fit == pytest.approx(loss_in_mode(True), rel=1e-6, abs=1e-7)
    assert abs(fit - loss_in_mode(False)) > 1e-3


def test_block_statistics_are_the_scored_splits():
    """A val or test evaluation also encodes the kNN bank (training images), off the record: the engine's
    core/<split>_* statistics and the equilibrium probe see the scored split's block calls alone, whether the bank's
    features are cached or not."""
    from tiedlab.paradigms.base import on_the_record
    from tiedlab.paradigms.engine import StatsRecorder

    torch.manual_seed(0)
    paradigm, bundle, model = make("simclr", eval_batch_size=64)
    recorder, seen = StatsRecorder(model), []
    model.backbone.block.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[0]) if on_the_record() else None)
    for split, cached in (("val", False), ("test", True), ("test", False), ("val", True)):
        if not cached:
            model.bank_cache.clear()
        seen.clear()
        paradigm.evaluate(model, bundle, split)
        n = len(bundle.splits[split][1])
        assert len(recorder.take()) == math.ceil(n / 64), (split, cached)
        assert seen == [min(64, n - i) for i in range(0, n, 64)], (split, cached)  # this split's batches, in order
    recorder.close()


def test_lightly_views_draw_on_the_generators_device_and_a_cpu_generator_draws_as_before(monkeypatch):
    """LightlyViews draws its seed on the generator's device (a CUDA generator cannot fill a CPU tensor: fit/loss on
    CUDA with data.views=lightly), and a CPU generator gives the seed and the views it gave before."""
    from PIL import Image

    imgs = (torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    views = LightlyViews(ViewSpec(size=12), (0.5,) * 3, (0.25,) * 3)
    got = views(imgs, torch.Generator().manual_seed(3))
    # the draw as the code made it before (no device: a CPU tensor), then lightly's transform seeded with it
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(3)))
    assert seed == 740_111_726
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        ref = [views.transform(Image.fromarray(a)) for a in imgs.permute(0, 2, 3, 1).numpy()]
    assert all(torch.equal(got[i], torch.stack([r[i] for r in ref])) for i in range(2))
    devices = []
    real = torch.randint

    def spy(*args, **kwargs):
        if kwargs.get("generator") is not None:  # ours (lightly's transforms draw from the seeded global RNG)
            devices.append((kwargs.get("device"), kwargs["generator"].device))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "randint", spy)
    views(imgs, torch.Generator().manual_seed(3))
    assert devices and all(d is not None and torch.device(d) == g for d, g in devices)


@pytest.mark.gpu
def test_lightly_views_score_the_training_split_on_cuda():
    """data.views=lightly with train.score_train on CUDA: the fit's generator lives on the GPU, and so do its draws."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    paradigm = SSLParadigm({**DIGITS, "views": "lightly", "knn_bank_size": 64}, {**TINY, "method": "byol"},
                           torch.device("cuda"), seed=0, batch_size=16)
    bundle = paradigm.build_data()
    model = paradigm.build_model(bundle, BlockSpec.from_dict(dict(mode="tied", depth=2)))
    assert math.isfinite(paradigm.evaluate(model, bundle, "train")["train/loss"])


def test_byol_target_normalises_each_view_on_its_own():
    """The BYOL target runs once per view, as the online heads do: its BatchNorm sees batches of one view's size."""
    torch.manual_seed(0)
    paradigm, bundle, model = make("byol")
    norms = [m for m in model.target.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    seen = []
    for m in norms:
        m.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    view0, view1 = next(iter(bundle.train_batches(torch.Generator().manual_seed(0))))
    paradigm.training_step(model, (view0, view1))
    assert seen == [len(view0)] * (2 * len(norms))


def test_byol_target_unrolls_while_the_online_deq_warms_up():
    """The engine's DEQ warm-up sets warmup_depth on the model's blocks; the target (outside the module tree) follows
    its online twin at every step and in the training-split fit: it unrolls while the online network unrolls and
    solves when it solves."""
    torch.manual_seed(0)
    paradigm, bundle, model = make("byol", block=CONTRACT_BLOCKS["deq_fixed_point_onestep"])
    depths = []
    (target_block,) = [m for m in model.target.modules() if isinstance(m, Block)]
    target_block.register_forward_pre_hook(lambda module, args: depths.append(module.warmup_depth))
    batch = next(iter(bundle.train_batches(torch.Generator().manual_seed(0))))
    for depth in (3, 3, 0):
        model.backbone.block.warmup_depth = depth  # as the engine's _set_warmup does before a step
        depths.clear()
        paradigm.training_step(model, batch)
        assert depths == [depth, depth], depth  # one target call per view
    model.backbone.block.warmup_depth = 3
    depths.clear()
    paradigm.evaluate(model, bundle, "train")  # the training-split fit runs the target too
    assert depths and set(depths) == {3}


def test_the_random_init_baseline_is_not_recomputed_when_the_same_weights_are_reloaded():
    """The engine's probes reload the model's extra state after each measurement (version counters move, weights do
    not): the random-init baseline stays cached, computed once per split and run; other weights still recompute it
    (the bank test above)."""
    from tiedlab.paradigms.engine import _restored

    torch.manual_seed(0)
    paradigm, bundle, model = make("simclr")
    calls = []
    model.initial_backbone.register_forward_hook(lambda *args: calls.append(1))
    first = paradigm.evaluate(model, bundle, "val")
    assert calls
    with _restored(model):
        pass
    model.load_state_dict(model.state_dict())
    calls.clear()
    assert paradigm.evaluate(model, bundle, "val") == first
    assert not calls
