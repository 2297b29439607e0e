"""Video, image and audio augmentations with the official VATT numbers (spec §1).

Videos are channels-last tensors, one video `[T, H, W, C]` or a batch `[B, T, H, W, C]`, uint8 (0..255)
or float. Random functions take a `torch.Generator`, draw their parameters once per video (every
frame of a video gets the same crop, flip and colour change, as in DMVR) and independently per video
of a batch. Same generator state, same output.

The official pipeline is DMVR's (`dmvr/processors.py`, `dmvr/modalities.py`) plus VATT's additions
(`vatt/data/processing.py`, `dataloaders.py`); the order of operations follows it:
- pre-training (VGG style): scale jitter -> resize smallest side -> random crop -> random flip ->
  normalise to [-1, 1] -> colour jitter;
- evaluation: resize smallest side -> centre crop -> normalise;
- fine-tuning (Inception style): random crop with area/aspect jitter -> resize -> flip -> normalise;
- multi-view test: resize smallest side -> 3 crops along the longer side -> normalise.
Resizes are bilinear without antialiasing, as `tf.image.resize` does (`antialias=True` is offered;
it is not the official computation); see `resize` for the one rounding difference on uint8 frames.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 224  # official crop size and `min_resize`


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def _check_video(x: torch.Tensor, name: str = "video") -> bool:
    """True if `x` is a batch [B, T, H, W, C], False if a single video [T, H, W, C]."""
    if x.dim() not in (4, 5):
        raise ValueError(f"{name} must be [T, H, W, C] or [B, T, H, W, C], got shape {tuple(x.shape)}")
    return x.dim() == 5


def _uniform(rng: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=rng, dtype=torch.float64).item()


def _randint(rng: torch.Generator | None, high_inclusive: int) -> int:
    return int(torch.randint(0, high_inclusive + 1, (), generator=rng).item())


def _per_video(fn, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Apply a one-video function to each video of a batch (own random draws) and stack."""
    if not _check_video(x):
        return fn(x, *args, **kwargs)
    outs = [fn(v, *args, **kwargs) for v in x]
    shapes = {tuple(o.shape) for o in outs}
    if len(shapes) > 1:
        raise ValueError(f"{fn.__name__} gave videos of different shapes {sorted(shapes)} in one batch; "
                         "apply it per video and crop to a common size before stacking")
    return torch.stack(outs)


def resize(x: torch.Tensor, height: int, width: int, antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of `[..., H, W, C]` frames to (height, width), keeping the dtype.

    Float frames match `tf.image.resize(method=BILINEAR)` (half-pixel centres, no antialias). uint8
    frames go through torch's uint8 kernel, about 10x faster on CPU: fixed point, rounded, within one
    level of the exact float result, where TF's float resize + `tf.cast` truncates it (deviation
    kept for speed; data loading is the bottleneck of video training).
    """
    *lead, h, w, c = x.shape
    if (h, w) == (height, width):
        return x
    flat = x.reshape(-1, h, w, c)
    if x.dtype == torch.uint8:
        # [N, H, W, C] viewed as [N, C, H, W] is channels_last, the layout torch's uint8 kernel wants.
        y = F.interpolate(flat.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                          align_corners=False, antialias=antialias)
    else:
        # The float kernel is ~3x faster on contiguous [N, C, H, W] than on channels_last.
        y = F.interpolate(flat.permute(0, 3, 1, 2).contiguous(), size=(height, width), mode="bilinear",
                          align_corners=False, antialias=antialias)
    return y.permute(0, 2, 3, 1).contiguous().reshape(*lead, height, width, c)


# --------------------------------------------------------------------------------------------------
# Geometric ops
# --------------------------------------------------------------------------------------------------

def resize_smallest(x: torch.Tensor, size: int = IMAGE_SIZE, antialias: bool = False) -> torch.Tensor:
    """Resize so that min(H, W) == size (DMVR `resize_smallest`, its integer arithmetic included)."""
    _check_video(x)
    h, w = x.shape[-3], x.shape[-2]
    out_h = max(size, (h * size) // w)
    out_w = max(size, (w * size) // h)
    return resize(x, out_h, out_w, antialias)


def scale_jitter(x: torch.Tensor, rng: torch.Generator | None, scale_range: tuple[float, float] = (0.8, 1.2),
                 prob: float = 0.8, antialias: bool = False) -> torch.Tensor:
    """With probability `prob`, scale H and W by independent factors from U[scale_range].

    DMVR `scale_jitter_augm` (VATT pre-training, p=0.8). New sizes are int(factor * size). On a batch
    each video draws its own factors, so the sizes differ: use it per video (see
    `pretrain_video_transform`).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")

    def one(v):
        h_scale = _uniform(rng, *scale_range)
        w_scale = _uniform(rng, *scale_range)
        coin = _uniform(rng, 0.0, 1.0)
        if coin >= prob:
            return v
        h, w = v.shape[-3], v.shape[-2]
        return resize(v, int(h_scale * h), int(w_scale * w), antialias)

    return _per_video(one, x)


def _crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    return x[..., top:top + height, left:left + width, :]


def random_crop(x: torch.Tensor, rng: torch.Generator | None, size: int = IMAGE_SIZE) -> torch.Tensor:
    """A size x size crop at a uniformly random offset (DMVR `crop_image(random=True)`)."""
    def one(v):
        h, w = v.shape[-3], v.shape[-2]
        if h < size or w < size:
            raise ValueError(f"cannot crop {size}x{size} from {h}x{w} frames; resize_smallest first")
        top = _randint(rng, h - size)
        left = _randint(rng, w - size)
        return _crop(v, top, left, size, size)

    return _per_video(one, x)


def center_crop(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Central size x size crop, zero-padding a side that is smaller (`tf.image.resize_with_crop_or_pad`)."""
    _check_video(x)
    h, w = x.shape[-3], x.shape[-2]
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        # F.pad pads from the last dim backwards: (C), (W), (H).
        x = F.pad(x, (0, 0, pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h, w = x.shape[-3], x.shape[-2]
    return _crop(x, (h - size) // 2, (w - size) // 2, size, size)


def random_flip(x: torch.Tensor, rng: torch.Generator | None, prob: float = 0.5) -> torch.Tensor:
    """Flip left-right with probability `prob` (DMVR `random_flip_left_right`, p=0.5)."""
    def one(v):
        return v.flip(-2) if _uniform(rng, 0.0, 1.0) < prob else v

    return _per_video(one, x)


def sample_inception_box(height: int, width: int, rng: torch.Generator | None,
                         area_range: tuple[float, float] = (0.08, 1.0),
                         aspect_range: tuple[float, float] = (0.5, 2.0),
                         min_object_covered: float = 0.1, max_attempts: int = 100) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) as `tf.image.sample_distorted_bounding_box` draws it for a
    whole-image box, the call VATT's `random_crop_resize` makes.

    TF's sampler: aspect (w/h) uniform in `aspect_range`, crop height uniform over the integers
    allowed by `area_range`, and a crop is kept only if it covers at least `min_object_covered` of the
    image, so with the official 0.08 lower area bound crops below 10% of the image never occur. After
    `max_attempts` failures the whole image is used.
    """
    image_area = height * width
    min_area, max_area = area_range[0] * image_area, area_range[1] * image_area
    for _ in range(max_attempts):
        aspect = _uniform(rng, *aspect_range)
        crop_h = int(round(math.sqrt(min_area / aspect)))
        max_h = int(round(math.sqrt(max_area / aspect)))
        if round(max_h * aspect) > width:
            max_h = int((width + 0.5 - 1e-7) / aspect)
            if round(max_h * aspect) > width:
                max_h -= 1
        max_h = min(max_h, height)
        crop_h = min(crop_h, max_h)
        if crop_h < max_h:
            crop_h += _randint(rng, max_h - crop_h)
        crop_w = int(round(crop_h * aspect))
        area = crop_w * crop_h
        if area < min_area:
            crop_h += 1
            crop_w = int(round(crop_h * aspect))
            area = crop_w * crop_h
        if area > max_area:
            crop_h -= 1
            crop_w = int(round(crop_h * aspect))
            area = crop_w * crop_h
        if (area < min_area or area > max_area or crop_w > width or crop_h > height
                or crop_w <= 0 or crop_h <= 0):
            continue
        if area < min_object_covered * image_area:
            continue
        top = _randint(rng, height - crop_h - 1) if crop_h < height else 0
        left = _randint(rng, width - crop_w - 1) if crop_w < width else 0
        return top, left, crop_h, crop_w
    return 0, 0, height, width


def inception_crop(x: torch.Tensor, rng: torch.Generator | None, size: int = IMAGE_SIZE,
                   area_range: tuple[float, float] = (0.08, 1.0), aspect_range: tuple[float, float] = (0.5, 2.0),
                   antialias: bool = False) -> torch.Tensor:
    """Inception-style crop (see `sample_inception_box`) resized to size x size (VATT fine-tuning)."""
    def one(v):
        top, left, ch, cw = sample_inception_box(v.shape[-3], v.shape[-2], rng, area_range, aspect_range)
        return resize(_crop(v, top, left, ch, cw), size, size, antialias)

    return _per_video(one, x)


def three_crop(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Crops at the start, centre and end of the longer side: `[3, ..., T, size, size, C]`.

    VATT `multi_crop_image`: along H if H >= W, else along W; centre offset round(L/2 - size//2).
    """
    _check_video(x)
    h, w = x.shape[-3], x.shape[-2]
    if min(h, w) < size:
        raise ValueError(f"cannot take {size}x{size} crops from {h}x{w} frames; resize_smallest first")
    if h >= w:
        tops, lefts = [0, int(round(h / 2 - size // 2)), h - size], [0, 0, 0]
    else:
        tops, lefts = [0, 0, 0], [0, int(round(w / 2 - size // 2)), w - size]
    return torch.stack([_crop(x, t, l, size, size) for t, l in zip(tops, lefts)])


# --------------------------------------------------------------------------------------------------
# Values: normalisation and colour
# --------------------------------------------------------------------------------------------------

def normalize_frames(x: torch.Tensor) -> torch.Tensor:
    """0..255 pixel values -> float32 in [-1, 1] via x * 2/255 - 1 (DMVR `normalize_image`,
    `zero_centering_image=True`; no mean/std). A float input is taken to be on the 0..255 scale."""
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        # Same float32 arithmetic through numpy, about twice as fast on a full clip: numpy asks for
        # huge pages for large buffers, so the fresh 4-byte-per-pixel output (88 MB for 32 frames of
        # 640x360) costs far fewer page faults than torch's allocation.
        y = np.multiply(x.numpy(), np.float32(2.0 / 255.0), dtype=np.float32)
        return torch.from_numpy(np.subtract(y, np.float32(1.0), out=y))
    y = x.to(torch.float32)
    if y is x:
        y = y.clone()  # never modify the caller's tensor in place
    return y.mul_(2.0 / 255.0).sub_(1.0)


# Colour ops work on channel planes `[3, ...]` (contiguous per channel): the same arithmetic on
# interleaved RGB is several times slower. The formulas are TF's HSV kernels
# (adjust_saturation_op.cc, adjust_hue_op.cc) rewritten without branches.

def _planes(x: torch.Tensor) -> torch.Tensor:
    # Always a copy (callers update it in place): [..., 3] -> [3, ...].
    return x.movedim(-1, 0).clone(memory_format=torch.contiguous_format)


def _unplanes(p: torch.Tensor) -> torch.Tensor:
    return p.movedim(0, -1).contiguous()  # [3, ...] -> [..., 3]


def _scratch(p: torch.Tensor, n: int, scratch: torch.Tensor | None) -> torch.Tensor:
    # `n` per-pixel work planes [n, ...] for the planes `p` [3, ...]: given (color_jitter reuses one set
    # for a whole clip) or fresh. Every step below writes into them or into `p`: a fresh tensor per step
    # is a fresh frame-sized allocation, whose page faults cost more than the arithmetic.
    if scratch is None:
        return p.new_empty(n, *p.shape[1:])
    return scratch[:n]


_SATURATION_SCRATCH = 2
_HUE_SCRATCH = 8
# Per output channel (R, G, B): n of the HSV -> RGB formula, and c of its falling ramp c - (h + n).
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0])
_HUE_FALLING = torch.tensor([10.0, 4.0, 4.0])


def _saturation_planes(p: torch.Tensor, factor: float, scratch: torch.Tensor | None = None) -> torch.Tensor:
    # In HSV, channel = v - s * v * w(hue); scaling s by f with s clamped to 1 is therefore
    # channel' = v - (v - channel) * min(f, 1 / s), 1 / s = v / (v - min). v <= 0 means s = 0 in TF's
    # kernel, which returns grey at v: there v / spread <= 0, clamped to a scale of 0. Where spread = 0,
    # v - channel = 0 whatever the (finite) scale. Updates `p` in place; the floats are the formula's,
    # rounding included ((p - v) * scale is -((v - p) * scale) exactly).
    v, scale = _scratch(p, _SATURATION_SCRATCH, scratch)
    torch.amax(p, dim=0, out=v)
    torch.sub(v, torch.amin(p, dim=0, out=scale), out=scale).clamp_min_(1e-12)
    torch.div(v, scale, out=scale).clamp_(0.0, factor)
    return p.sub_(v).mul_(scale).add_(v)


def _hue_planes(p: torch.Tensor, delta: float, out: torch.Tensor | None = None,
                scratch: torch.Tensor | None = None) -> torch.Tensor:
    # Float arithmetic only: bool masks, torch.where and torch.remainder are several times slower than a
    # multiply on CPU. Each step gives the same floats as the textbook form (noted beside it). Uses `p` as
    # work space: its values are lost.
    r, g, b = p[0], p[1], p[2]
    v, spread, norm, is_r, is_g, is_b, h, tmp = _scratch(p, _HUE_SCRATCH, scratch)
    torch.amax(p, dim=0, out=v)
    torch.sub(v, torch.amin(p, dim=0, out=spread), out=spread)
    torch.clamp_min(spread, 1e-12, out=norm).mul_(6.0).reciprocal_()
    # Hue in turns: (g - b) / 6s where red is the maximum, (b - r) / 6s + 2/6 where green is (red first), else
    # (r - g) / 6s + 4/6. The maximum channel as exact 0/1 floats (a comparison written straight into a float
    # tensor: one pass, no bool mask); products with 0/1 and sums with 0 are exact, so h is the same float as the
    # branchy form.
    torch.eq(r, v, out=is_r)
    torch.ne(r, v, out=is_b)  # not red
    torch.eq(g, v, out=is_g).mul_(is_b)  # green and not red
    is_b.sub_(is_g)  # neither
    torch.sub(g, b, out=h).mul_(is_r)
    h.addcmul_(torch.sub(b, r, out=tmp), is_g).addcmul_(torch.sub(r, g, out=tmp), is_b).mul_(norm)
    # + 2/6 and + 4/6 one after the other: one of them is + 0 (as is their sum), the other exact.
    h.add_(is_g, alpha=2.0 / 6.0).add_(is_b, alpha=4.0 / 6.0).add_(delta)
    h.sub_(torch.floor(h, out=tmp)).mul_(6.0)  # torch.remainder(h, 1.0) (exact either way), in sixths
    # HSV -> RGB: channel n (R=5, G=3, B=1) = v - (s v) clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6;
    # s v = spread. With spread = 0 (grey) the hue is irrelevant. v <= 0 is grey at v in TF.
    spread.mul_(torch.sign(v, out=tmp).clamp_(min=0.0))
    # The three channels in one pass per step, in `p` (r, g, b are no longer needed) and `out`.
    shape = (3,) + (1,) * h.dim()
    u = torch.add(h, _HUE_OFFSETS.to(h).view(shape), out=p)  # u = h + n in [n, n + 6): k = u mod 6 is u or u - 6
    out = torch.sub(u, 6.0, out=torch.empty_like(p) if out is None else out).clamp_(0.0, 1.0)  # rising:
    # k = u - 6 >= 0 gives clamp(k, 0, 1). Falling: -u + c is c - u exactly.
    falling = u.neg_().add_(_HUE_FALLING.to(h).view(shape)).clamp_(0.0, 1.0)
    # Red: u in [5, 11), k = u - 6 >= 0 or the ramp is 0; clamp(min(k, 4 - k)) = clamp(k) * clamp(10 - u), never
    # both strictly inside (0, 1), so exact. Green, blue: u in [1, 9), k = u below 6, falling clamp(4 - u); at
    # most one term is non-zero, so their sum is exact.
    out[0].mul_(falling[0])
    out[1:].add_(falling[1:])
    return torch.sub(v, out.mul_(spread), out=out)


def _contrast_planes(p: torch.Tensor, factor: float) -> torch.Tensor:
    # Mean per channel and per frame: p is [3, ..., H, W]. Updates `p` in place.
    mean = p.mean(dim=(-2, -1), keepdim=True)
    return p.sub_(mean).mul_(factor).add_(mean)


# Frames per step of color_jitter: its planes and work planes then stay in the core's cache.
_JITTER_FRAMES = 2


def adjust_brightness(x: torch.Tensor, delta: float) -> torch.Tensor:
    """x + delta on `[..., 3]` frames in [0, 1] (`tf.image.adjust_brightness`; no clipping)."""
    return x + delta


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale HSV saturation by `factor`, clamped to [0, 1] (`tf.image.adjust_saturation`)."""
    return _unplanes(_saturation_planes(_planes(x), factor))


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """(x - mean) * factor + mean, the mean per frame and channel (`tf.image.adjust_contrast`)."""
    return _unplanes(_contrast_planes(_planes(x), factor))


def adjust_hue(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Rotate HSV hue by `delta` (in turns, wrapping; `tf.image.adjust_hue`)."""
    return _unplanes(_hue_planes(_planes(x), delta))


def jitter_draws(rng: torch.Generator | None, prob: float, brightness: float, saturation: tuple[float, float],
                 contrast: tuple[float, float], hue: float) -> tuple[bool, float, float, float, float]:
    """One video's colour-jitter draws, in their order: (whether it applies, brightness delta, saturation
    factor, contrast factor, hue delta). All five are always drawn, so the generator advances alike."""
    coin = _uniform(rng, 0.0, 1.0)
    delta_b = _uniform(rng, -brightness, brightness)
    f_sat = _uniform(rng, *saturation)
    f_con = _uniform(rng, *contrast)
    delta_h = _uniform(rng, -hue, hue)
    return coin < prob, delta_b, f_sat, f_con, delta_h


def color_jitter(x: torch.Tensor, rng: torch.Generator | None, prob: float = 0.8,
                 brightness: float = 32.0 / 255.0, saturation: tuple[float, float] = (0.6, 1.4),
                 contrast: tuple[float, float] = (0.6, 1.4), hue: float = 0.2,
                 zero_centered: bool = True) -> torch.Tensor:
    """DMVR `color_default_augm`: with probability `prob`, brightness (+U[-b, b]), saturation
    (xU[lo, hi]), contrast (xU[lo, hi]) and hue (+U[-h, h]) in that order, then clip to [0, 1].

    Takes float frames in [-1, 1] (`zero_centered=True`, i.e. after `normalize_frames`, where the
    official pipeline applies it) or in [0, 1]; returns the same range. Parameters are drawn once per
    video, and always drawn, so the generator advances the same whether or not the jitter applies.
    """
    if not x.is_floating_point():
        raise ValueError(f"color_jitter needs float frames (after normalize_frames), got {x.dtype}")

    def one(v):
        applies, delta_b, f_sat, f_con, delta_h = jitter_draws(rng, prob, brightness, saturation, contrast, hue)
        if not applies:
            return v
        out = torch.empty_like(v)
        frames, step = v.shape[0], _JITTER_FRAMES
        planes = v.new_empty(3, min(step, frames), *v.shape[1:-1])  # [3, F, H, W], reused for every step
        scratch = v.new_empty(max(_SATURATION_SCRATCH, _HUE_SCRATCH), *planes.shape[1:])
        result = torch.empty_like(planes)
        minus_one = v.new_full((), -1.0)
        delta = v.new_full((), delta_b)
        for t in range(0, frames, step):
            # A few frames at a time: the ~50 elementwise passes then run in cache, and each costs little more
            # than its dispatch. Every step is per frame anyway (contrast's mean included).
            n = min(step, frames - t)
            p, res, work = planes[:, :n], result[:, :n], scratch[:, :n]
            src = v[t:t + n].movedim(-1, 0)  # [3, n, H, W] view of interleaved frames
            if zero_centered:  # (x + 1) / 2 + brightness delta, x read straight from the interleaved frames;
                # the halving is exact, so 0.5 y + delta is one rounding, as (y * 0.5) + delta
                torch.add(delta, torch.add(src, 1.0, out=p), alpha=0.5, out=p)
            else:
                p.copy_(src).add_(delta_b)
            p = _saturation_planes(p, f_sat, work)
            res = _hue_planes(_contrast_planes(p, f_con), delta_h, out=res, scratch=work).clamp_(0.0, 1.0)
            dst = out[t:t + n]
            for c in range(3):  # back to interleaved, one channel at a time (faster than one strided copy)
                if zero_centered:  # 2 x - 1: the product is exact, so one rounding as in x * 2 - 1
                    torch.add(minus_one, res[c], alpha=2.0, out=dst[..., c])
                else:
                    dst[..., c] = res[c]
        return out

    return _per_video(one, x)


# --------------------------------------------------------------------------------------------------
# Official compositions
# --------------------------------------------------------------------------------------------------

def pretrain_video_transform(x: torch.Tensor, rng: torch.Generator | None, size: int = IMAGE_SIZE, *,
                             scale_range: tuple[float, float] = (0.8, 1.2), scale_jitter_prob: float = 0.8,
                             flip_prob: float = 0.5, color_prob: float = 0.8,
                             brightness: float = 32.0 / 255.0, saturation: tuple[float, float] = (0.6, 1.4),
                             contrast: tuple[float, float] = (0.6, 1.4), hue: float = 0.2,
                             antialias: bool = False) -> torch.Tensor:
    """Pre-training video augmentation (VGG style) -> float32 `[..., T, size, size, 3]` in [-1, 1].

    Scale jitter (p=0.8, H and W x U[0.8, 1.2]) -> resize smallest side to `size` -> random crop
    `size` -> random flip -> normalise -> colour jitter (p=0.8). Pass `scale_jitter_prob=0` or
    `color_prob=0` to switch a part off.
    """
    def one(v):
        v = scale_jitter(v, rng, scale_range, scale_jitter_prob, antialias)
        v = resize_smallest(v, size, antialias)
        v = random_crop(v, rng, size)
        v = random_flip(v, rng, flip_prob)
        v = normalize_frames(v)
        return color_jitter(v, rng, color_prob, brightness, saturation, contrast, hue)

    return _per_video(one, x)


def eval_video_transform(x: torch.Tensor, size: int = IMAGE_SIZE, antialias: bool = False) -> torch.Tensor:
    """Evaluation / linear-probe video input: resize smallest side -> centre crop -> normalise."""
    return normalize_frames(center_crop(resize_smallest(x, size, antialias), size))


def finetune_video_transform(x: torch.Tensor, rng: torch.Generator | None, size: int = IMAGE_SIZE, *,
                             area_range: tuple[float, float] = (0.08, 1.0),
                             aspect_range: tuple[float, float] = (0.5, 2.0), flip_prob: float = 0.5,
                             color_prob: float = 0.0, antialias: bool = False) -> torch.Tensor:
    """Video fine-tuning augmentation (Inception style) -> float32 in [-1, 1].

    Inception crop (area 0.08-1, aspect 0.5-2) resized to `size` -> flip -> normalise. The official
    config has `color_augment=True` but `VisionFineTuneLoader` does not pass it to the dataset
    factory, so colour jitter is off by default; `color_prob=0.8` turns it on.
    """
    def one(v):
        v = inception_crop(v, rng, size, area_range, aspect_range, antialias)
        v = random_flip(v, rng, flip_prob)
        v = normalize_frames(v)
        return color_jitter(v, rng, color_prob) if color_prob > 0 else v

    return _per_video(one, x)


def multi_view_transform(windows: torch.Tensor, size: int = IMAGE_SIZE, antialias: bool = False) -> torch.Tensor:
    """Fine-tuned test views: `[K, T, H, W, C]` (K temporal windows, e.g. from
    `sample_start(mode="linspace", num_windows=4)`) -> `[3K, T, size, size, C]` float32 in [-1, 1].

    Each window is resized (smallest side `size`) and cropped at the start, centre and end of the
    longer side. Views are crop-major, view c*K + k = crop c of window k, as the official code
    concatenates them; predictions are averaged over all views.
    """
    if windows.dim() != 5:
        raise ValueError(f"windows must be [K, T, H, W, C], got shape {tuple(windows.shape)}")
    crops = three_crop(resize_smallest(windows, size, antialias), size)  # [3, K, T, size, size, C]
    return normalize_frames(crops.reshape(-1, *crops.shape[2:]))


def image_to_clip(image: torch.Tensor, num_frames: int = 4) -> torch.Tensor:
    """`[H, W, C]` image -> `[num_frames, H, W, C]` by tiling in time (ImageNet fine-tuning: 4 frames,
    one temporal patch). Batched `[B, H, W, C]` -> `[B, num_frames, H, W, C]`."""
    if image.dim() == 3:
        return image.unsqueeze(0).expand(num_frames, *image.shape).contiguous()
    if image.dim() == 4:
        return image.unsqueeze(1).expand(image.shape[0], num_frames, *image.shape[1:]).contiguous()
    raise ValueError(f"image must be [H, W, C] or [B, H, W, C], got shape {tuple(image.shape)}")


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------

def add_gaussian_noise(audio: torch.Tensor, rng: torch.Generator | None, gamma: float = 0.01) -> torch.Tensor:
    """Add N(0, sigma^2) with sigma = gamma * max|x| per waveform (VATT `add_gaussian`, gamma 0.01).

    `[N]` is one waveform; with more dims the first is the batch (`[B, N]`, `[B, N, 1]`).
    """
    x = audio.to(torch.float32)
    if x.dim() == 1:
        peak = x.abs().max()
    else:
        peak = x.abs().reshape(x.shape[0], -1).max(dim=1).values.reshape(-1, *([1] * (x.dim() - 1)))
    noise = torch.randn(x.shape, generator=rng, dtype=torch.float32)
    return x + gamma * peak * noise


def mixup(x: torch.Tensor, labels: torch.Tensor | None, rng: torch.Generator | None,
          alpha: float = 5.0, beta: float = 5.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch mixup (VATT `batched_mixup`): x_i <- l_i x_i + (1 - l_i) x_p(i), same for labels, with a
    random permutation p and l_i ~ Beta(alpha, beta) per example. Audio fine-tuning uses Beta(5, 5).

    `x` is `[B, ...]` (waveforms `[B, N]` or `[B, N, 1]`); `labels` `[B, C]` float (one-/multi-hot).
    """
    b = x.shape[0]
    perm = torch.randperm(b, generator=rng)
    # torch's Beta sampler takes no generator; seed numpy's from ours so the draw stays reproducible.
    seed = int(torch.randint(0, 2**62, (), generator=rng).item())
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, beta, size=b)).to(torch.float32)
    lam_x = lam.reshape(b, *([1] * (x.dim() - 1)))
    mixed = lam_x * x + (1.0 - lam_x) * x[perm]
    if labels is None:
        return mixed, None
    lam_y = lam.reshape(b, *([1] * (labels.dim() - 1)))
    return mixed, lam_y * labels.to(torch.float32) + (1.0 - lam_y) * labels.to(torch.float32)[perm]
