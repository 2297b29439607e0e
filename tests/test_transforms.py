"""Tests of vatt.data.transforms against the official numbers (spec §1, DMVR / VATT code)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vatt.data import transforms as T


def coded_video(t: int = 4, h: int = 60, w: int = 80) -> torch.Tensor:
    """[T, H, W, 3] float video whose pixel values say where they are (row, column, frame)."""
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(t, h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(t, h, w)
    frames = torch.arange(t, dtype=torch.float32).view(t, 1, 1).expand(t, h, w)
    return torch.stack([rows, cols, frames], dim=-1)


def random_video(t=4, h=40, w=56, seed=0, dtype=torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (t, h, w, 3), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype)


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Normalisation and resizing
# --------------------------------------------------------------------------------------------------

def test_normalize_frames_maps_0_255_to_minus1_1():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    y = T.normalize_frames(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([-1.0, 51 * 2 / 255 - 1, 1.0]))
    xf = x.float()
    T.normalize_frames(xf)
    assert torch.equal(xf, x.float())  # input not modified


@pytest.mark.parametrize("hw,expected", [((272, 640), (224, 527)), ((720, 1280), (224, 398)),
                                         ((640, 360), (398, 224)), ((224, 300), (224, 300)),
                                         ((144, 176), (224, 273))])
def test_resize_smallest_uses_dmvr_integer_arithmetic(hw, expected):
    x = torch.zeros(2, *hw, 3, dtype=torch.uint8)
    assert T.resize_smallest(x, 224).shape == (2, *expected, 3)


def test_resize_matches_bilinear_half_pixel_and_uint8_is_within_one_level():
    x = random_video(h=30, w=50, dtype=torch.float32)
    y = T.resize(x, 20, 35)
    ref = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(20, 35), mode="bilinear",
                                          align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(y, ref)
    yu = T.resize(x.to(torch.uint8), 20, 35)
    # torch's uint8 kernel (fixed point, rounding) stays within one level of the exact float result.
    assert yu.dtype == torch.uint8 and (yu.float() - ref).abs().max() <= 1.01


# --------------------------------------------------------------------------------------------------
# Crops and flips
# --------------------------------------------------------------------------------------------------

def test_eval_transform_is_centre_crop_224_in_range():
    x = random_video(t=3, h=256, w=340)
    y = T.eval_video_transform(x)
    assert y.shape == (3, 224, 224, 3) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1
    # centre crop offsets: (H - 224) // 2, (W - 224) // 2
    c = coded_video(h=240, w=300)
    crop = T.center_crop(c, 224)
    assert crop[0, 0, 0, 0] == (240 - 224) // 2 and crop[0, 0, 0, 1] == (300 - 224) // 2


def test_random_crop_covers_all_offsets_and_keeps_frames_aligned():
    c = coded_video(t=3, h=10, w=12)
    g = gen(0)
    tops, lefts = set(), set()
    for _ in range(300):
        crop = T.random_crop(c, g, size=8)
        assert crop.shape == (3, 8, 8, 3)
        top, left = int(crop[0, 0, 0, 0]), int(crop[0, 0, 0, 1])
        tops.add(top)
        lefts.add(left)
        # Same offset in every frame; contiguous window.
        assert torch.equal(crop[..., :2], c[:, top:top + 8, left:left + 8, :2])
    assert tops == {0, 1, 2} and lefts == {0, 1, 2, 3, 4}


def test_random_flip_probability_and_content():
    x = coded_video(t=2, h=4, w=6)
    g = gen(1)
    flips = 0
    for _ in range(400):
        y = T.random_flip(x, g)
        if torch.equal(y, x.flip(-2)):
            flips += 1
        else:
            assert torch.equal(y, x)
    assert 160 < flips < 240  # p = 0.5


def test_scale_jitter_bounds_and_probability():
    x = torch.zeros(1, 100, 200, 3, dtype=torch.uint8)
    g = gen(2)
    jittered, hs, ws = 0, [], []
    for _ in range(400):
        y = T.scale_jitter(x, g)
        if y.shape != x.shape:
            jittered += 1
        h, w = y.shape[1], y.shape[2]
        assert 80 <= h <= 120 and 160 <= w <= 240  # int(U[0.8, 1.2] * size)
        hs.append(h / 100)
        ws.append(w / 200)
    assert 290 < jittered < 350  # p = 0.8
    hs, ws = np.array(hs), np.array(ws)
    moved = (hs != 1) | (ws != 1)
    assert abs(np.corrcoef(hs[moved], ws[moved])[0, 1]) < 0.2  # h and w drawn independently
    assert hs.min() < 0.82 and hs.max() > 1.18


def test_inception_box_follows_tf_sampler():
    g = gen(3)
    areas, aspects = [], []
    for _ in range(2000):
        top, left, ch, cw = T.sample_inception_box(256, 340, g)
        assert 0 <= top and top + ch <= 256 and 0 <= left and left + cw <= 340
        areas.append(ch * cw / (256 * 340))
        aspects.append(cw / ch)
    areas, aspects = np.array(areas), np.array(aspects)
    # min_object_covered=0.1 rejects crops under 10% even though the area range starts at 0.08.
    assert areas.min() >= 0.1 and areas.max() <= 1.0 and areas.min() < 0.13 and areas.max() > 0.9
    assert aspects.min() >= 0.5 - 0.02 and aspects.max() <= 2.0 + 0.02
    assert aspects.min() < 0.6 and aspects.max() > 1.6


def test_finetune_transform_shape_flip_and_determinism():
    x = random_video(t=4, h=128, w=170)
    a = T.finetune_video_transform(x, gen(4), size=64)
    b = T.finetune_video_transform(x, gen(4), size=64)
    assert a.shape == (4, 64, 64, 3) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_three_crop_start_centre_end_along_longer_side():
    land = coded_video(t=1, h=224, w=300)
    crops = T.three_crop(land, 224)
    assert crops.shape == (3, 1, 224, 224, 3)
    assert [int(crops[i, 0, 0, 0, 1]) for i in range(3)] == [0, round(300 / 2 - 112), 300 - 224]
    port = coded_video(t=1, h=398, w=224)
    crops = T.three_crop(port, 224)
    assert [int(crops[i, 0, 0, 0, 0]) for i in range(3)] == [0, round(398 / 2 - 112), 398 - 224]


def test_multi_view_transform_gives_12_views():
    windows = random_video(t=2, h=120, w=160).unsqueeze(0).repeat(4, 1, 1, 1, 1)  # [K=4, T, H, W, C]
    windows[1] = 0  # window 1 black: its views are c*4 + 1
    views = T.multi_view_transform(windows, size=112)
    assert views.shape == (12, 2, 112, 112, 3)
    black = [v for v in range(12) if bool((views[v] == -1).all())]
    assert black == [1, 5, 9]  # crop-major order, as the official concatenation


def test_image_to_clip_tiles_in_time():
    img = random_video(t=1)[0]
    clip = T.image_to_clip(img, 4)
    assert clip.shape == (4, *img.shape) and all(torch.equal(f, img) for f in clip)
    assert T.image_to_clip(img.unsqueeze(0).repeat(2, 1, 1, 1), 4).shape == (2, 4, *img.shape)


# --------------------------------------------------------------------------------------------------
# Colour jitter (checked against TF's HSV kernels, written out plainly here)
# --------------------------------------------------------------------------------------------------

def tf_rgb_to_hsv(r, g, b):
    v = max(r, g, b)
    rng = v - min(r, g, b)
    s = rng / v if v > 0 else 0.0
    norm = 1.0 / (6.0 * rng) if rng > 0 else 0.0
    if r == v:
        h = norm * (g - b)
    elif g == v:
        h = norm * (b - r) + 2.0 / 6.0
    else:
        h = norm * (r - g) + 4.0 / 6.0
    if rng <= 0:
        h = 0.0
    if h < 0:
        h += 1
    return h, s, v


def tf_hsv_to_rgb(h, s, v):
    c = s * v
    m = v - c
    dh = h * 6
    cat = int(dh)
    fmodu = dh
    while fmodu <= 0:
        fmodu += 2
    while fmodu >= 2:
        fmodu -= 2
    x = c * (1 - abs(fmodu - 1))
    rgb = {0: (c, x, 0), 1: (x, c, 0), 2: (0, c, x), 3: (0, x, c), 4: (x, 0, c), 5: (c, 0, x)}.get(cat, (0, 0, 0))
    return [ch + m for ch in rgb]


def tf_adjust_saturation(px, f):
    h, s, v = tf_rgb_to_hsv(*px)
    return tf_hsv_to_rgb(h, min(1.0, max(0.0, s * f)), v)


def tf_adjust_hue(px, d):
    h, s, v = tf_rgb_to_hsv(*px)
    h += d
    while h < 0:
        h += 1
    while h >= 1:
        h -= 1
    return tf_hsv_to_rgb(h, s, v)


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4, 3.0])
def test_saturation_matches_tf_kernel(factor):
    px = torch.rand(300, 3, generator=gen(5)) * 1.2 - 0.1  # include values outside [0, 1]
    px[:5] = torch.tensor([0.5, 0.5, 0.5])  # grey
    ours = T.adjust_saturation(px.view(1, 1, 300, 3), factor).view(300, 3)
    ref = torch.tensor([tf_adjust_saturation(p.tolist(), factor) for p in px], dtype=torch.float32)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("delta", [-0.2, -0.05, 0.13, 0.2])
def test_hue_matches_tf_kernel(delta):
    px = torch.rand(300, 3, generator=gen(6))
    ours = T.adjust_hue(px.view(1, 1, 300, 3), delta).view(300, 3)
    ref = torch.tensor([tf_adjust_hue(p.tolist(), delta) for p in px], dtype=torch.float32)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_contrast_keeps_per_frame_channel_mean():
    x = torch.rand(3, 8, 8, 3, generator=gen(7))
    y = T.adjust_contrast(x, 1.4)
    torch.testing.assert_close(y.mean(dim=(1, 2)), x.mean(dim=(1, 2)))
    torch.testing.assert_close(y - y.mean(dim=(1, 2), keepdim=True), 1.4 * (x - x.mean(dim=(1, 2), keepdim=True)))


def test_color_jitter_brightness_bound_and_probability():
    x = T.normalize_frames(torch.full((2, 4, 4, 3), 128, dtype=torch.uint8))
    g = gen(8)
    changed, deltas = 0, []
    for _ in range(400):
        y = T.color_jitter(x, g, saturation=(1.0, 1.0), contrast=(1.0, 1.0), hue=0.0)
        d = (y - x) / 2  # back to the [0, 1] scale where brightness is defined
        assert torch.allclose(d, d.flatten()[0].expand_as(d), atol=1e-6)  # one shift for the whole video
        if d.abs().max() > 0:
            changed += 1
            deltas.append(float(d.flatten()[0]))
    assert 290 < changed < 350  # p = 0.8
    assert max(np.abs(deltas)) <= 32 / 255 + 1e-6 and max(np.abs(deltas)) > 30 / 255


def test_color_jitter_output_range_and_order_on_real_range():
    x = T.normalize_frames(random_video(t=3, h=16, w=16))
    y = T.color_jitter(x, gen(9), prob=1.0)
    assert y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)
    # The composite equals the four steps in DMVR's order, then the clip.
    g = gen(9)
    _, b, s, c, h = (T._uniform(g, 0, 1), T._uniform(g, -32 / 255, 32 / 255), T._uniform(g, 0.6, 1.4),
                     T._uniform(g, 0.6, 1.4), T._uniform(g, -0.2, 0.2))
    z = (x + 1) / 2
    z = T.adjust_hue(T.adjust_contrast(T.adjust_saturation(T.adjust_brightness(z, b), s), c), h)
    torch.testing.assert_close(y, z.clamp(0, 1) * 2 - 1, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        T.color_jitter(random_video(), gen(0))  # uint8: must normalise first


# --------------------------------------------------------------------------------------------------
# The pre-training composite
# --------------------------------------------------------------------------------------------------

def test_pretrain_transform_shapes_range_and_determinism():
    x = random_video(t=4, h=90, w=160)
    a = T.pretrain_video_transform(x, gen(10), size=64)
    b = T.pretrain_video_transform(x, gen(10), size=64)
    c = T.pretrain_video_transform(x, gen(11), size=64)
    assert a.shape == (4, 64, 64, 3) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pretrain_transform_batch_draws_per_video():
    x = random_video(t=2, h=90, w=160)
    batch = torch.stack([x, x, x])
    y = T.pretrain_video_transform(batch, gen(12), size=64)
    assert y.shape == (3, 2, 64, 64, 3)
    assert not torch.equal(y[0], y[1]) or not torch.equal(y[1], y[2])


def test_pretrain_without_augmentation_is_resize_and_crop():
    # With jitter, flip and colour off, the output is a 224 crop of the resized video.
    x = random_video(t=2, h=256, w=340)
    y = T.pretrain_video_transform(x, gen(13), scale_jitter_prob=0.0, flip_prob=0.0, color_prob=0.0)
    resized = T.normalize_frames(T.resize_smallest(x, 224))  # [2, 224, 297, 3]
    matches = [torch.equal(y, resized[:, :, o:o + 224]) for o in range(resized.shape[2] - 223)]
    assert sum(matches) >= 1


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------

def test_gaussian_noise_sigma_is_one_percent_of_peak():
    g = gen(14)
    x = torch.zeros(2, 200000)
    x[0, 0], x[1, 0] = 0.5, 2.0
    y = T.add_gaussian_noise(x, g)
    noise = (y - x)[:, 1:]
    assert noise[0].std().item() == pytest.approx(0.005, rel=0.02)
    assert noise[1].std().item() == pytest.approx(0.02, rel=0.02)
    assert torch.equal(T.add_gaussian_noise(x, gen(14)), y)
    single = T.add_gaussian_noise(x[0], gen(15))
    assert single.shape == x[0].shape


def test_mixup_beta_5_5_mixes_waveforms_and_labels():
    b = 4000
    x = torch.arange(b, dtype=torch.float32).view(b, 1).repeat(1, 3)
    labels = torch.nn.functional.one_hot(torch.arange(b) % 10, 10).float()
    mx, ml = T.mixup(x, labels, gen(16))
    mx2, ml2 = T.mixup(x, labels, gen(16))
    assert torch.equal(mx, mx2) and torch.equal(ml, ml2)
    torch.testing.assert_close(ml.sum(dim=1), torch.ones(b))
    # Each example keeps weight lambda on its own class (partners of another class show it exactly);
    # Beta(5, 5): mean 0.5, variance 1/44.
    own = ml[torch.arange(b), torch.arange(b) % 10]
    lam = own[own < 1]
    assert lam.min() > 0 and lam.max() < 1
    assert lam.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lam.var().item() == pytest.approx(1 / 44, rel=0.15)
    # The waveforms mix with the same lambda and partner: x_i = i, so the partner index comes back.
    rows = torch.nonzero(own < 1).squeeze(1)
    partner = (mx[rows, 0] - own[rows] * rows) / (1 - own[rows])
    assert torch.allclose(partner, partner.round(), atol=0.05)
    partner_class = partner.round().long() % 10
    torch.testing.assert_close(ml[rows, partner_class], 1 - own[rows])


def test_color_jitter_gives_the_same_floats_as_the_previous_implementation():
    from bench.color_jitter import reference_color_jitter
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 24, 20, 3, generator=g) * 2 - 1
    # edge pixels: black, white, greys (spread 0), channel ties (the hue's red-first / green-next order),
    # and near-black pixels that a negative brightness delta takes to v <= 0
    x[0, :4, :4] = -1.0
    x[0, 4:8, :4] = 1.0
    x[1, :4, :4] = torch.tensor([0.2, 0.2, 0.2])
    x[1, 4:8, :4] = torch.tensor([0.5, 0.5, -0.3])
    x[1, 8:12, :4] = torch.tensor([-0.3, 0.5, 0.5])
    x[2, :4, :4] = torch.tensor([-0.98, -0.99, -0.97])
    batch = torch.stack([x, x.flip(1)])
    for seed in range(12):
        for prob in (1.0, 0.8):
            new = T.color_jitter(batch, torch.Generator().manual_seed(seed), prob=prob)
            old = reference_color_jitter(batch, torch.Generator().manual_seed(seed), prob=prob)
            assert torch.equal(new, old), f"seed {seed}: max difference {(new - old).abs().max().item():.3g}"


def _edge_clip(frames: int, seed: int) -> torch.Tensor:
    x = torch.rand(frames, 12, 10, 3, generator=gen(seed)) * 2 - 1
    x[0, :2, :2] = -1.0  # black
    x[-1, :2, :2] = torch.tensor([0.5, 0.5, -0.3])  # red and green tie at the maximum
    return x


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 7])
def test_color_jitter_same_floats_for_clips_around_its_frame_step(frames):
    # color_jitter works a few frames at a time in reused buffers; a short last step must not mix in
    # the previous step's values.
    from bench.color_jitter import reference_color_jitter
    x = _edge_clip(frames, 20 + frames)
    for seed in range(3):
        new = T.color_jitter(x, torch.Generator().manual_seed(seed), prob=1.0)
        old = reference_color_jitter(x, torch.Generator().manual_seed(seed), prob=1.0)
        assert torch.equal(new, old)


def test_color_jitter_on_0_1_frames_gives_the_previous_floats():
    # zero_centered=False: the same steps on [0, 1] frames, without the affine maps at both ends.
    from bench.color_jitter import _reference_hue, _reference_saturation
    x = (_edge_clip(5, 30) + 1) / 2
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        _, b, s, c, h = (T._uniform(g, 0, 1), T._uniform(g, -32 / 255, 32 / 255), T._uniform(g, 0.6, 1.4),
                         T._uniform(g, 0.6, 1.4), T._uniform(g, -0.2, 0.2))
        old = torch.stack([_reference_hue(T._contrast_planes(_reference_saturation(T._planes(f).add_(b), s), c), h)
                           .clamp_(0.0, 1.0).movedim(0, -1) for f in x])
        new = T.color_jitter(x, torch.Generator().manual_seed(seed), prob=1.0, zero_centered=False)
        assert torch.equal(new, old)


def test_color_jitter_same_floats_as_the_previous_code_on_real_decoded_clips():
    # Real pictures (skin, sky, saturated and dark areas), as training feeds them: decoded, resized and
    # cropped to 224, normalised.
    from bench.color_jitter import reference_color_jitter
    from tests.conftest import shared_path
    from vatt.data.decoding import decode_clip
    d = shared_path("data", "real-video-clips")
    for i, name in enumerate(("big_buck_bunny.mp4", "street_bicycles.mp4")):
        frames = decode_clip(d / name, 1.0, num_frames=3, decode_audio=False).frames
        x = T.normalize_frames(T.random_crop(T.resize_smallest(frames, 224), gen(i), 224))
        for seed in range(2):
            new = T.color_jitter(x, torch.Generator().manual_seed(seed), prob=1.0)
            assert torch.equal(new, reference_color_jitter(x, torch.Generator().manual_seed(seed), prob=1.0))


def test_color_jitter_in_float64_follows_the_same_steps():
    # Work planes and constants take the frames' dtype (the device: tests/test_cuda.py).
    x = _edge_clip(3, 40).double()
    y = T.color_jitter(x, gen(1), prob=1.0)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, T.color_jitter(x.float(), gen(1), prob=1.0).double(), atol=1e-5, rtol=0)
