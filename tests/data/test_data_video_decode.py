"""Frame sampling, resize modes and the decoders (decord, PyAV) on real H.264 clips."""
from __future__ import annotations

import math

import numpy as np
import pytest

from meltr_ray.data.synthetic import encode_mp4, make_clip, read_frame_code, write_audio_only_mp4
from meltr_ray.data.video import (DecodeError, decode_size, describe_error, finish_frames, get_decoder,
                                  make_sampler, normalize, random_segment_indices, sample_clip, uniform_indices,
                                  window_frames)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    path = str(tmp_path_factory.mktemp("clip") / "c.mp4")
    frames, _ = make_clip(7, 30, "circle", "red", "right", 64)
    encode_mp4(frames, path)
    return open(path, "rb").read()


def test_uniform_indices_are_segment_centres_and_repeat_short_clips():
    assert uniform_indices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert uniform_indices(1, 4).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


def test_random_segment_indices_stay_in_their_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = random_segment_indices(20, 4, rng)
        assert all(5 * i <= v < 5 * (i + 1) for i, v in enumerate(idx))
    assert random_segment_indices(2, 4, rng).tolist() == [0, 0, 1, 1]


def test_window_frames_maps_seconds_to_frames():
    assert window_frames(100, 10.0, math.nan, math.nan) == (0, 100)
    assert window_frames(100, 10.0, 2.0, 4.05) == (20, 41)
    assert window_frames(100, 10.0, 50.0, 60.0) == (99, 100)


def test_min_frames_rejects_short_windows():
    with pytest.raises(DecodeError, match="too short: 3 frames < min_frames 4"):
        make_sampler("uniform", 8, min_frames=4)(3)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
@pytest.mark.parametrize("size,mode,sampling", [(64, "stretch", "uniform"), (32, "pad", "random"),
                                                (24, "crop", "random")])
def test_decoded_frames_are_the_sampled_ones(clip, decoder, size, mode, sampling):
    frames, idx = sample_clip(get_decoder(decoder), clip, num_frames=6, image_size=size, sampling=sampling,
                              resize_mode=mode, width=64, height=64, rng=np.random.default_rng(1))
    assert frames.dtype == np.uint8 and frames.shape == (6, size, size, 3)
    assert [read_frame_code(f) for f in frames] == [(int(i), 7) for i in idx]


def test_clip_window_restricts_sampling(clip):
    _, idx = sample_clip(get_decoder("decord"), clip, num_frames=4, image_size=32, fps=16.0, window=(1.0, 1.5))
    assert all(16 <= i < 24 for i in idx)


def test_pad_mode_zero_pads_centred_and_crop_mode_crops(tmp_path):
    frames = [np.full((32, 64, 3), 200, np.uint8)] * 4           # 64 wide, 32 high
    encode_mp4(frames, str(tmp_path / "wide.mp4"))
    data = open(tmp_path / "wide.mp4", "rb").read()
    assert decode_size(64, 32, 32, "pad") == (16, 32) and decode_size(64, 32, 32, "crop") == (32, 64)
    padded, _ = sample_clip(get_decoder("decord"), data, num_frames=2, image_size=32, resize_mode="pad",
                            width=64, height=32)
    assert padded.shape == (2, 32, 32, 3)
    assert padded[:, :8].max() == 0 and padded[:, 24:].max() == 0 and abs(int(padded[:, 12:20].mean()) - 200) < 6
    cropped, _ = sample_clip(get_decoder("decord"), data, num_frames=2, image_size=32, resize_mode="crop",
                             width=64, height=32)
    assert cropped.shape == (2, 32, 32, 3) and cropped.min() > 180


def test_finish_frames_centre_crops():
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    assert (finish_frames(frames, 4) == frames[:, :, 1:5]).all()


def test_normalize_works_on_numpy():
    out = normalize(np.full((1, 2, 2, 3), 255, np.uint8))
    assert out.shape == (1, 2, 2, 3) and np.allclose(out[..., 0], (1 - 0.485) / 0.229)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_bad_bytes_raise_with_short_reasons(tmp_path, clip, decoder):
    write_audio_only_mp4(str(tmp_path / "a.mp4"))
    cases = {"no video stream": open(tmp_path / "a.mp4", "rb").read(),
             "not a readable video (invalid data)": b"not a video at all " * 30,
             "empty video bytes": b""}
    for reason, data in cases.items():
        with pytest.raises(Exception) as info:
            get_decoder(decoder).read(data, make_sampler("uniform", 4), (32, 32))
        assert describe_error(info.value) == reason
    with pytest.raises(Exception) as info:
        get_decoder(decoder).read(clip[:len(clip) // 2], make_sampler("uniform", 4), (32, 32))
    assert describe_error(info.value)


def test_unknown_decoder_is_an_error():
    with pytest.raises(ValueError, match="unknown decoder"):
        get_decoder("nope")
