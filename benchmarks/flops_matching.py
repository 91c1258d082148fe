"""The compute behind the studies' matched-compute comparisons (the ``flops`` and ``flops/*`` ids): distinct masks
at width w and density d against the dense tied model at width about w * sqrt(d), which the study files label "the
same nonzeros and FLOPs" (per layer of the cell). This counts what each arm's model computes, to say how near that is.

    python benchmarks/flops_matching.py [--studies quick,masks,...] [--out FILE.md]

For each such comparison of each study, each arm's first run (seed 0) is built from the study's grid exactly as
the runner would compose it, and one training batch's forward pass is counted with ``torch.utils.flop_counter``
(a multiply-add is 2 FLOPs; elementwise work such as activations and norms is not counted, as is usual). The
count is split three ways:

- ``block weights``: the matrix products and convolutions inside the weight-tied block, scaled by the block's
  ``nonzero / dense`` parameter ratio (what a kernel that skips masked entries would do; 1 for a dense arm);
- ``block other``: the block's products that no mask touches: attention's QK^T and AV (``scaled_dot_product``
  priced as PyTorch prices it, causal masking not discounted) and graph message passing (a scatter-add priced
  as a sparse matrix product, 2 FLOPs per aggregated feature);
- ``outside``: the stem, embedding, pooling and head, which each arm has at its own width (a sparse input stem
  priced at 2 FLOPs per stored feature and output column).

It prints, and with ``--out`` writes, a Markdown table: the arms' ``params/nonzero``, the three parts in MFLOP per
training batch, and the masked arm's excess over the dense one for the block and for the whole model.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

WEIGHT_OPS = ("aten.mm", "aten.addmm", "aten.convolution", "aten._convolution")


def _message_passing_flops(self_shape, dim, index_shape, src_shape, *args, out_shape=None, **kwargs) -> int:
    """A scatter-add of ``src`` (messages, one row per edge): 2 FLOPs per element, as the sparse matrix product
    A @ X it computes would count."""
    return 2 * math.prod(src_shape)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash kernel of scaled_dot_product_attention, priced as PyTorch prices the others."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sparse_addmm_flops(bias, sparse, dense, *args, out_shape=None, **kwargs) -> int:
    """``torch.sparse.mm`` (a sparse input stem: Planetoid's bag-of-words features): 2 FLOPs per stored entry and
    output column."""
    return 2 * int(sparse._nnz()) * int(dense.shape[-1])


_sparse_addmm_flops._get_raw = True  # FlopCounterMode passes the tensors, not their shapes: nnz is needed


def counter() -> Any:
    """A FlopCounterMode that also prices message passing, sparse-times-dense products and the CPU attention
    kernel (it prices none of them)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten.scatter_add_: _message_passing_flops, aten.scatter_add: _message_passing_flops,
               aten.index_add_: _message_passing_flops, aten.index_add: _message_passing_flops,
               aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
               aten._sparse_addmm: _sparse_addmm_flops}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def weight_density(block: Any) -> tuple[float, list[str]]:
    """(the fraction of the cell's masked weight entries its layers keep, averaged over the layers: 1 without
    masks; the cell's matrix and convolution weights that no mask covers, whose products are not thinned)."""
    masks = block.masks
    names = list(masks.names) if masks.num_masks else []
    weights = [n for n, p in block.cells[0].named_parameters() if p.dim() >= 2]
    unmasked = [n for n in weights if not any(n == m or n.endswith("." + m) or m.endswith("." + n) for m in names)]
    if not names:
        return 1.0, unmasked
    total = sum(masks.mask(0, n).numel() for n in names)
    kept = [sum(int(masks.mask(i, n).count_nonzero()) for n in names) for i in range(block.layers)]
    return sum(kept) / (total * block.layers), unmasked


def arm_flops(overrides: list[str]) -> dict[str, float]:
    """One training batch's forward FLOPs of the model ``overrides`` configure, split as the module says, and
    its ``params/nonzero``."""
    from tiedlab.core import Block, model_param_counts
    from tiedlab.paradigms.base import get_paradigm
    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.config import validate
    from tiedlab.paradigms.engine import as_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = as_config(compose_config([*overrides, f"run_dir={tmp}"]))
    spec = validate(cfg)
    torch.manual_seed(0)
    paradigm = get_paradigm(cfg.paradigm)(cfg.data, cfg.model, torch.device("cpu"), seed=0,
                                          batch_size=int(cfg.train.batch_size))
    data = paradigm.build_data()
    model = paradigm.build_model(data, spec)
    model.train()
    blocks = [(f"{type(model).__name__}.{name}", m) for name, m in model.named_modules() if isinstance(m, Block)]
    if len(blocks) != 1:
        raise ValueError(f"{cfg.paradigm}: expected one Block in the model, found {len(blocks)}")
    (block_name, block), = blocks
    density, unmasked = weight_density(block)
    batch = next(iter(data.train_batches(torch.Generator().manual_seed(0))))
    flops = counter()
    with flops, torch.no_grad():
        paradigm.training_step(model, batch)
    by_module = {name: {str(op): n for op, n in ops.items()} for name, ops in flops.get_flop_counts().items()}
    inside = by_module.get(block_name, {})
    weights = sum(n for op, n in inside.items() if op in WEIGHT_OPS)
    total = float(flops.get_total_flops())
    return {"nonzero": float(model_param_counts(model)["params/nonzero"]), "density": density,
            "block_weights": weights * density, "block_other": float(sum(inside.values()) - weights),
            "outside": total - sum(inside.values()),
            "ops": ", ".join(f"{op} {n / 1e6:.3g}M" for op, n in sorted(inside.items()))
                   + (f"; weights no mask covers: {', '.join(unmasked)}" if unmasked and density < 1 else "")}


def comparisons(study_name: str) -> list[tuple[str, str, list[str], str, list[str]]]:
    """(id, arm a's title, its overrides, arm b's title, its overrides) of the study's ``flops/*`` comparisons,
    each arm's first run as the runner composes it."""
    from tiedlab.paradigms import launch
    from tiedlab.paradigms.study import load_study
    from tiedlab.reports.primary import load_primaries, run_values

    spec = load_study(study_name)
    names = [g["name"] for g in spec["grids"]]
    runs = [r for g in spec["grids"] for r in launch.grid_runs(study_name, g, Path("runs"), [])]
    out = []
    for comparison in load_primaries(spec):
        if comparison.id != "flops" and not comparison.id.startswith("flops/"):
            continue
        arms = []
        for arm in (comparison.a, comparison.b):
            members = [r for r in runs if arm.matches(r.name, names)]
            if not members:
                raise ValueError(f"{study_name}: {comparison.id}: arm {arm.title()} has no runs in the study file")
            first = min(members, key=lambda r: int(run_values(r.name).get("seed", 0)))
            arms.append((arm.title(), list(first.overrides)))
        out.append((comparison.id, arms[0][0], arms[0][1], arms[1][0], arms[1][1]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default="quick,masks,masks_capacity,masks_graph,masks_head,masks_language,"
                                              "masks_ssl", help="comma-separated study names")
    parser.add_argument("--out", default=None, help="write the table (Markdown) here as well")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    header = ("| study: comparison | arm | params/nonzero | block weights | block other | outside | "
              "block: masked / dense | model: masked / dense |")
    lines = [header, "|" + "---|" * 8]
    for study_name in args.studies.split(","):
        for cid, title_a, over_a, title_b, over_b in comparisons(study_name):
            a, b = arm_flops(over_a), arm_flops(over_b)
            masked, dense = (a, b) if a["density"] < b["density"] else (b, a)
            ratio_block = (masked["block_weights"] + masked["block_other"]) / (dense["block_weights"]
                                                                               + dense["block_other"])
            ratio_model = sum(masked[k] for k in ("block_weights", "block_other", "outside")) / sum(
                dense[k] for k in ("block_weights", "block_other", "outside"))
            for i, (title, m) in enumerate(((title_a, a), (title_b, b))):
                lines.append(f"| {study_name}: {cid if i == 0 else ''} | {title} (density {m['density']:.3g}) | "
                             f"{m['nonzero']:,.0f} | {m['block_weights'] / 1e6:.1f} | {m['block_other'] / 1e6:.1f} | "
                             f"{m['outside'] / 1e6:.1f} | "
                             + (f"{ratio_block:.2f} | {ratio_model:.2f} |" if i == 0 else " | |"))
                print(lines[-1], flush=True)
                print(f"    block ops: {m['ops']}", file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
