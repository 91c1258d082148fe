"""Batched, device-resident image augmentation and batching (no per-image Python loops, no DataLoader).

Everything here works on whole batches on whatever device the tensors live on; randomness comes
from an optional ``torch.Generator`` (on any device; draws are moved to the data's device).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..base import check_int

__all__ = ["normalize", "random_crop_flip", "iterate_batches"]


def _device_of(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale uint8 images to [0, 1] and standardise per channel: ``(x / 255 - mean) / std``.

    Floating-point input is taken to be in [0, 1] already (only the standardisation is applied).

    Shapes:
        x: (B, C, H, W) uint8 or float; mean, std: length C; returns (B, C, H, W) float32
        (or x's dtype if it is already floating).
    """
    if x.ndim != 4:
        raise ValueError(f"normalize expects (B, C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(
            f"mean/std have {len(mean)}/{len(std)} entries but the images have {c} channels "
            f"(shape {tuple(x.shape)})"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if x.dtype == torch.uint8:
        out = x.to(torch.float32).div_(255.0)
    elif x.is_floating_point():
        out = x
    else:
        raise TypeError(f"normalize expects uint8 or floating images, got dtype {x.dtype}")
    m = torch.as_tensor(mean, dtype=out.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=out.dtype, device=x.device).view(1, c, 1, 1)
    return (out - m) / s


def random_crop_flip(
    x: torch.Tensor,
    *,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image random crop (zero-pad by ``padding``, crop back to H x W) and horizontal flip (p=0.5).

    Every image draws its own offsets and flip decision; the work is one pad and one gather.
    ``padding=0, flip=False`` returns ``x`` itself.

    Shapes:
        x: (B, C, H, W), any dtype; returns (B, C, H, W) with the same dtype and device.
    """
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip expects (B, C, H, W), got shape {tuple(x.shape)}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    if padding == 0 and not flip:
        return x
    b, c, h, w = x.shape
    if b == 0:
        return x.clone()
    dev = x.device
    gdev = _device_of(generator, dev)
    span = 2 * padding + 1
    # one draw for all offsets (rows, cols) and one for the flips, always in the same order
    offsets = torch.randint(0, span, (2, b), generator=generator, device=gdev).to(dev)
    flips = (
        torch.rand(b, generator=generator, device=gdev).to(dev) < 0.5
        if flip
        else torch.zeros(b, dtype=torch.bool, device=dev)
    )
    hp, wp = h + 2 * padding, w + 2 * padding
    src = F.pad(x, (padding, padding, padding, padding)) if padding else x
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[0, :, None] + ar_h  # (B, H)
    cols = offsets[1, :, None] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # (B, W)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    out = torch.gather(src.reshape(b, c, hp * wp), 2, flat)
    return out.view(b, c, h, w)


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` from tensors already on their device: one randperm per call.

    Without ``shuffle`` the batches are views (slices); with it they are ``index_select`` copies.

    Shapes:
        x: (N, ...); y: (N, ...); yields (B, ...) pairs with B = batch_size (the last may be shorter
        unless ``drop_last``).
    """
    check_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    if shuffle:
        perm = torch.randperm(n, generator=generator, device=_device_of(generator, x.device)).to(x.device)
        for i in range(0, stop, batch_size):
            idx = perm[i : i + batch_size]
            yield x.index_select(0, idx), y.index_select(0, idx.to(y.device))
    else:
        for i in range(0, stop, batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
