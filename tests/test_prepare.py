"""Frame preparation: sampling, crops, resize, and the sector mask on videos with burned-in text."""
from __future__ import annotations

import numpy as np

from embedstore.datasets.phantom import fan_mask, make_phantom
from embedstore.video.prepare import (apply_mask, center_crop_square, resize, sample_even, sample_period,
                                      sector_mask, zoom_center)
from embedstore.video.read import read_video


def test_sampling_and_crops_pick_the_right_frames_and_pixels():
    frames = np.arange(10)[:, None, None, None] * np.ones((10, 6, 8, 3), dtype=np.uint8)
    assert sample_period(frames, 4)[:, 0, 0, 0].tolist() == [0, 4, 8]
    assert sample_period(frames, 2, length=2, start=1)[:, 0, 0, 0].tolist() == [1, 3]
    assert sample_even(frames, 4)[:, 0, 0, 0].tolist() == [0, 3, 6, 9]
    grid = np.arange(6 * 8).reshape(1, 6, 8, 1).repeat(3, axis=-1).astype(np.uint8)
    square = center_crop_square(grid)
    assert square.shape == (1, 6, 6, 3) and square[0, 0, 0, 0] == 1  # one column cut each side
    assert zoom_center(np.zeros((1, 10, 10, 3)), 0.8).shape == (1, 8, 8, 3)
    out = resize(np.full((2, 20, 30, 3), 100, np.uint8), 16)
    assert tuple(out.shape) == (2, 3, 16, 16) and np.allclose(out.numpy(), 100, atol=0.5)


def test_sector_mask_keeps_the_fan_and_blanks_burned_in_text(tmp_path):
    info = make_phantom(tmp_path, patients=6, videos_per_patient=2, seed=4, frames=48)
    assert info["with_overlay"], "the cohort should draw burned-in text on some videos"
    video = read_video(info["videos_dir"] / f"{info['with_overlay'][0]}.avi")
    fan = fan_mask(video.height, *info["sectors"][info["with_overlay"][0]])  # this study's sector
    outside = ~fan
    # The overlay really is there: bright static pixels outside the fan.
    assert (video.frames[..., 0].max(axis=0)[outside] > 100).sum() > 20

    mask = sector_mask(video.frames)
    kept = (mask & fan).sum() / fan.sum()
    assert kept >= 0.98, f"sector mask keeps only {kept:.1%} of the true fan"
    cleaned = apply_mask(video.frames, mask)
    assert (cleaned[..., 0].max(axis=0)[outside & ~mask] == 0).all()
    assert (cleaned[..., 0].max(axis=0)[outside] > 100).sum() <= 5, "burned-in text survived the mask"


def test_sector_mask_finds_nothing_in_a_still_video():
    still = np.repeat(np.random.default_rng(0).integers(0, 255, (1, 40, 40, 3), dtype=np.uint8), 5, axis=0)
    assert not sector_mask(still).any()
    assert not sector_mask(still[:1]).any()


def test_apply_mask_blanks_outside_in_a_copy_or_in_place():
    frames = np.random.default_rng(0).integers(1, 255, (3, 8, 10, 3), dtype=np.uint8)
    mask = np.zeros((8, 10), bool)
    mask[2:6, 3:7] = True
    mask[3, 4] = False  # a hole (text over the fan)
    kept = apply_mask(frames, mask)
    assert kept is not frames and frames.min() > 0, "the decoded frames stay as they are"
    assert (kept[:, mask] == frames[:, mask]).all() and not kept[:, ~mask].any()
    same = apply_mask(frames, mask, in_place=True)
    assert same is frames and np.array_equal(same, kept)
