"""Multi-view augmentation for self-supervised learning, two ways.

- :func:`tensor_views`: the SimCLR recipe (random resized crop, horizontal flip, colour jitter,
  random grayscale) as batched tensor ops on whatever device the images live on. Every image draws
  its own crop box, flip, jitter factors and grayscale decision, all from the ``torch.Generator``
  passed in (in a fixed order), so an epoch's views are a function of that generator alone.
- :class:`LightlyViews`: lightly's own ``SimCLRTransform`` (PIL, one image at a time on the CPU),
  with torch's, numpy's and Python's global RNGs seeded from the generator inside a forked state, so
  it is just as reproducible (and leaves the global RNGs untouched).

Both follow torchvision's semantics: crop boxes are integer boxes drawn as ``RandomResizedCrop``
draws them (10 tries, then the central box), ``ColorJitter`` factors are uniform in
``[max(0, 1 - s), 1 + s]`` (hue in ``[-s, s]``), hue is shifted in HSV. Differences of the tensor
path: the four jitter operations run in a fixed order (brightness, contrast, saturation, hue) rather
than a random permutation, and resizing is bilinear without antialiasing (crops are mostly upscaled).
Gaussian blur is not part of either path (lightly's CIFAR-10 benchmarks turn it off for 32x32 images).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tiedlab.paradigms.vision.augment import normalize

__all__ = ["ViewSpec", "VIEW_BACKENDS", "tensor_views", "LightlyViews", "sample_crop_boxes", "resized_crop",
           "color_jitter", "random_grayscale", "rgb_to_hsv", "hsv_to_rgb", "grayscale"]

VIEW_BACKENDS = ("tensor", "lightly")
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL use
_CROP_TRIES = 10


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation.

    Attributes:
        size: side of the square output view in pixels (<= the image's height and width).
        scale: range of the crop's area as a fraction of the image's area.
        ratio: range of the crop's aspect ratio (width / height).
        hflip_prob: probability of a horizontal flip.
        jitter_prob: probability that colour jitter is applied (all four factors together).
        brightness / contrast / saturation / hue: ColorJitter strengths (0 turns one off).
        gray_prob: probability of converting to grayscale (a no-op on 1-channel images).
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_prob: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"view size={self.size!r} must be an integer >= 1")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop scale={self.scale!r} must satisfy 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio={self.ratio!r} must satisfy 0 < min <= max")
        for name in ("hflip_prob", "jitter_prob", "gray_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p!r} must be in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue!r} must be in [0, 0.5]")

    def check_fits(self, image_shape: Sequence[int]) -> None:
        """Raise if the view does not fit images of shape (C, H, W).

        Raises:
            ValueError: the output size exceeds the image, naming both and the option to change.
        """
        _, h, w = (int(v) for v in image_shape)
        if self.size > min(h, w):
            raise ValueError(
                f"data.crop_size={self.size} does not fit the {h}x{w} images: a view cannot be larger than the "
                f"image; choose data.crop_size <= {min(h, w)} (or null for the image size)")


# ----------------------------------------------------------------------------------------- geometry


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer crop boxes drawn as torchvision's ``RandomResizedCrop.get_params`` draws them, for n images.

    Each image gets 10 tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first that
    fits is kept, else the central box with the aspect ratio clamped into ``ratio``.

    Shapes: -> (n, 4) float (top, left, box_height, box_width), on the generator's device
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    area = float(height * width)
    fracs = torch.empty(n, _CROP_TRIES, device=dev).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(n, _CROP_TRIES, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                             generator=generator)
    offsets = torch.rand(n, 2, generator=generator, device=dev)
    aspect = logr.exp()
    bw = torch.round(torch.sqrt(area * fracs * aspect))
    bh = torch.round(torch.sqrt(area * fracs / aspect))
    fits = (bw > 0) & (bw <= width) & (bh > 0) & (bh <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    bw = bw.gather(1, first).squeeze(1)
    bh = bh.gather(1, first).squeeze(1)
    any_fit = fits.any(dim=1)
    # fallback: torchvision's central crop
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    bw = torch.where(any_fit, bw, torch.full_like(bw, fw))
    bh = torch.where(any_fit, bh, torch.full_like(bh, fh))
    top = torch.floor(offsets[:, 0] * (height - bh + 1)).clamp_max(height - bh)
    left = torch.floor(offsets[:, 1] * (width - bw + 1)).clamp_max(width - bw)
    top = torch.where(any_fit, top, torch.div(height - bh, 2, rounding_mode="floor"))
    left = torch.where(any_fit, left, torch.div(width - bw, 2, rounding_mode="floor"))
    return torch.stack([top, left, bh, bw], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box, resize it to size x size (bilinear) and optionally mirror it, in one
    ``grid_sample``. A box as large as the output is copied exactly (pixel centres land on pixel centres).

    Shapes: x: (B, C, H, W) float; boxes: (B, 4) (top, left, height, width) in pixels;
    flip: (B,) bool or None -> (B, C, size, size)
    """
    b, c, h, w = x.shape
    boxes = boxes.to(device=x.device, dtype=x.dtype)
    top, left, bh, bw = boxes.unbind(dim=1)
    sx = bw / w
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------------------- colour


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (1-channel images are returned as they are).

    Shapes: (B, C, H, W) with C in {1, 3} -> (B, 1, H, W)
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of a turn), as torchvision computes it.

    Shapes: (B, 3, H, W) -> (B, 3, H, W)
    """
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    chroma = maxc - minc
    flat = chroma == 0
    one = torch.ones_like(maxc)
    sat = chroma / torch.where(flat, one, maxc)
    div = torch.where(flat, one, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    hue = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    hue = torch.remainder(hue / 6.0 + 1.0, 1.0)
    return torch.stack([hue, sat, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`.

    Shapes: (B, 3, H, W) -> (B, 3, H, W)
    """
    h, s, v = x.unbind(dim=1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # per sector (0..5) which of v, q, p, t each channel takes
    table = torch.stack([
        torch.stack([v, q, p, p, t, v], dim=1),
        torch.stack([t, v, v, q, p, p], dim=1),
        torch.stack([p, p, t, v, v, q], dim=1),
    ], dim=1)  # (B, 3, 6, H, W)
    idx = sector.unsqueeze(1).unsqueeze(2).expand(-1, 3, 1, -1, -1)
    return table.gather(2, idx).squeeze(2)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * a + (1 - factor) * b clamped to [0, 1]; factor (B,) broadcast per image."""
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                 hue: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue with per-image factors,
    in that order. Saturation and hue leave 1-channel images unchanged (as torchvision does).

    Shapes: x: (B, C, H, W) float in [0, 1]; factors: (B,) -> (B, C, H, W)
    """
    x = _blend(x, torch.zeros_like(x), brightness)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = _blend(x, mean.expand_as(x), contrast)
    if x.shape[1] == 3:
        x = _blend(x, grayscale(x).expand_as(x), saturation)
        hsv = rgb_to_hsv(x)
        hsv = torch.cat([torch.remainder(hsv[:, :1] + hue.view(-1, 1, 1, 1), 1.0), hsv[:, 1:]], dim=1)
        x = hsv_to_rgb(hsv)
    return x


def random_grayscale(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Images where ``apply`` is true replaced by their luma in every channel.

    Shapes: x: (B, C, H, W); apply: (B,) bool -> (B, C, H, W)
    """
    if x.shape[1] == 1:
        return x
    return torch.where(apply.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def _factors(n: int, strength: float, generator: torch.Generator | None, dev: torch.device) -> torch.Tensor:
    return torch.empty(n, device=dev).uniform_(max(0.0, 1.0 - strength), 1.0 + strength, generator=generator)


def one_view(images: torch.Tensor, spec: ViewSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of every image (values in [0, 1], not yet standardised).

    Draws, in this order: crop boxes, flips, jitter on/off, brightness, contrast, saturation, hue,
    grayscale on/off; all from ``generator`` (on its device) and moved to the images' device.

    Shapes: images: (B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32
    """
    b, c, h, w = images.shape
    spec.check_fits((c, h, w))
    dev = images.device
    gdev = generator.device if generator is not None else torch.device("cpu")
    x = images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images.to(torch.float32)
    boxes = sample_crop_boxes(b, h, w, spec.scale, spec.ratio, generator)
    flip = torch.rand(b, generator=generator, device=gdev) < spec.hflip_prob
    jitter = torch.rand(b, generator=generator, device=gdev) < spec.jitter_prob
    ones = torch.ones(b, device=gdev)
    fb = _factors(b, spec.brightness, generator, gdev)
    fc = _factors(b, spec.contrast, generator, gdev)
    fs = _factors(b, spec.saturation, generator, gdev)
    fh = torch.empty(b, device=gdev).uniform_(-spec.hue, spec.hue, generator=generator)
    gray = torch.rand(b, generator=generator, device=gdev) < spec.gray_prob
    x = resized_crop(x, boxes, spec.size, flip)
    if spec.jitter_prob > 0:
        fb, fc, fs = (torch.where(jitter, f, ones) for f in (fb, fc, fs))
        fh = torch.where(jitter, fh, torch.zeros_like(fh))
        x = color_jitter(x, fb.to(dev), fc.to(dev), fs.to(dev), fh.to(dev))
    if spec.gray_prob > 0:
        x = random_grayscale(x, gray.to(dev))
    return x


def tensor_views(images: torch.Tensor, spec: ViewSpec, mean: Sequence[float], std: Sequence[float],
                 generator: torch.Generator | None = None, n_views: int = 2) -> list[torch.Tensor]:
    """``n_views`` independent standardised views of a batch, on the images' device.

    Shapes: images: (B, C, H, W) uint8 -> n_views tensors of (B, C, size, size) float32
    """
    return [normalize(one_view(images, spec, generator), mean, std) for _ in range(n_views)]


# ----------------------------------------------------------------------------------------- lightly (PIL)


class LightlyViews:
    """lightly's ``SimCLRTransform`` over a uint8 batch, image by image on the CPU (the reference path).

    Randomness: one seed drawn from the generator (on its device) seeds torch's, numpy's and Python's
    RNGs inside a forked state (lightly's transforms draw from all three), so the views depend on the
    generator alone and the global RNG states are unchanged afterwards.

    Shapes: images (B, C, H, W) uint8 -> n_views tensors of (B, C, size, size) float32 on images' device
    """

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float]):
        from lightly.transforms import SimCLRTransform

        if spec.ratio != (3 / 4, 4 / 3) or spec.scale[1] != 1.0:
            raise ValueError(f"the lightly view backend supports only scale=(min, 1.0) and ratio=(3/4, 4/3), "
                             f"got scale={spec.scale}, ratio={spec.ratio}; use data.views='tensor'")
        self.spec = spec
        self.transform = SimCLRTransform(
            input_size=spec.size, cj_prob=spec.jitter_prob, cj_strength=1.0, cj_bright=spec.brightness,
            cj_contrast=spec.contrast, cj_sat=spec.saturation, cj_hue=spec.hue, min_scale=spec.scale[0],
            random_gray_scale=spec.gray_prob, gaussian_blur=0.0, hf_prob=spec.hflip_prob,
            normalize={"mean": list(mean), "std": list(std)})

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        from PIL import Image

        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"LightlyViews expects (B, C, H, W) uint8, got {images.dtype} {tuple(images.shape)}")
        self.spec.check_fits(images.shape[1:])
        device = generator.device if generator is not None else None  # a CUDA generator draws on its device
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        mode = "L" if arrays.shape[-1] == 1 else "RGB"
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed)
                random.seed(seed)
                views = [self.transform(Image.fromarray(a.squeeze(-1) if mode == "L" else a))
                         for a in arrays]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        n_views = len(views[0])
        return [torch.stack([v[i] for v in views]).to(images.device) for i in range(n_views)]
