"""The preprocessing contract: every op, real PNG/JPEG decoding, batch semantics and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgefleet.bundle import Preprocess
from edgefleet.bundle._preprocess import STEP_TYPES
from edgefleet.errors import PreprocessError


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
def rgb(rng) -> np.ndarray:
    # smooth gradient + mild noise: JPEG-friendly, yet not constant
    yy, xx = np.mgrid[0:24, 0:32]
    base = np.stack([xx * 7, yy * 9, (xx + yy) * 4], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


# --- decoding ------------------------------------------------------------------------------------


def test_decode_png_is_lossless(rgb):
    out = Preprocess([{"op": "decode_image"}]).apply_one(_png(rgb))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_decode_jpeg_is_close(rgb):
    out = Preprocess([{"op": "decode_image", "mode": "RGB"}]).apply_one(_jpeg(rgb))
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4  # lossy, but the same picture


def test_decode_converts_mode(rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 200, np.uint8)], axis=-1)
    out = Preprocess([{"op": "decode_image", "mode": "RGB"}]).apply_one(_png(rgba))
    np.testing.assert_array_equal(out, rgb)
    gray = Preprocess([{"op": "decode_image", "mode": "L"}]).apply_one(_png(rgb))
    assert gray.shape == rgb.shape[:2]
    np.testing.assert_array_equal(gray, np.asarray(Image.fromarray(rgb).convert("L")))


def test_decode_accepts_uint8_array_of_bytes(rgb):
    data = np.frombuffer(_png(rgb), dtype=np.uint8)
    np.testing.assert_array_equal(Preprocess([{"op": "decode_image"}]).apply_one(data), rgb)


def test_decode_garbage_names_step_and_sample(rgb):
    p = Preprocess([{"op": "to_float"}, {"op": "decode_image"}][1:])
    with pytest.raises(PreprocessError, match=r"step 0 \(decode_image\) failed on sample 1: cannot decode"):
        p.apply([_png(rgb), b"definitely not an image"])


def test_decode_refuses_too_many_pixels(rgb):
    p = Preprocess([{"op": "decode_image", "max_pixels": 100}])
    with pytest.raises(PreprocessError, match="max_pixels=100"):
        p.apply_one(_png(rgb))


# --- geometry -----------------------------------------------------------------------------------------


def test_resize_fixed_and_shorter_side(rgb):
    out = Preprocess([{"op": "resize", "size": [12, 16], "method": "nearest"}]).apply_one(rgb)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb[1::2, 1::2])  # nearest halving samples pixel centres
    short = Preprocess([{"op": "resize", "size": 12}]).apply_one(rgb)  # 24x32 -> 12x16 (aspect kept)
    assert short.shape == (12, 16, 3)


def test_resize_float_multichannel(rgb):
    f = rgb.astype(np.float32) / 255
    out = Preprocess([{"op": "resize", "size": [24, 32]}]).apply_one(f)  # same size: identity
    assert out.dtype == np.float32 and out.shape == f.shape
    np.testing.assert_allclose(out, f, atol=1e-6)


def test_crops(rgb):
    c = Preprocess([{"op": "center_crop", "size": [10, 20]}]).apply_one(rgb)
    np.testing.assert_array_equal(c, rgb[7:17, 6:26])
    box = Preprocess([{"op": "crop", "top": 1, "left": 2, "height": 3, "width": 4}]).apply_one(rgb)
    np.testing.assert_array_equal(box, rgb[1:4, 2:6])
    with pytest.raises(PreprocessError, match=r"step 0 \(center_crop\).*resize first"):
        Preprocess([{"op": "center_crop", "size": 100}]).apply_one(rgb)


def test_grayscale_and_rgb(rgb):
    g = Preprocess([{"op": "grayscale"}]).apply_one(rgb)
    assert g.shape == (24, 32)
    gf = Preprocess([{"op": "to_float"}, {"op": "grayscale", "keep_dims": True}]).apply_one(rgb)
    assert gf.shape == (24, 32, 1)
    # float luma agrees with Pillow's integer luma to rounding
    assert np.abs(gf[:, :, 0] - g.astype(np.float32)).max() <= 1.0
    back = Preprocess([{"op": "rgb"}]).apply_one(g)
    assert back.shape == (24, 32, 3) and (back[:, :, 0] == back[:, :, 2]).all()


# --- arithmetic ---------------------------------------------------------------------------------------


def test_to_float_scale_normalize_cast_clip():
    x = np.array([[0, 128, 255]], dtype=np.uint8).reshape(1, 1, 3)  # one HWC pixel
    steps = [
        {"op": "to_float"},
        {"op": "scale", "factor": 1 / 255},
        {"op": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]},
    ]
    out = Preprocess(steps).apply_one(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [(0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, 0.5], atol=1e-6)
    clipped = Preprocess([*steps, {"op": "clip", "min": -1, "max": 0.25}]).apply_one(x)
    np.testing.assert_allclose(clipped.ravel(), [-1, (128 / 255 - 0.5) / 0.5, 0.25], atol=1e-6)
    cast = Preprocess([{"op": "scale", "factor": 0.5, "offset": 1}, {"op": "cast", "dtype": "int16"}])
    np.testing.assert_array_equal(cast.apply_one(np.array([3, 7])), np.array([2, 4], dtype=np.int16))


def test_normalize_channel_axis_in_chw():
    x = np.ones((2, 3, 3), np.float32) * np.array([1.0, 3.0]).reshape(2, 1, 1)
    out = Preprocess([{"op": "normalize", "mean": [1, 1], "std": [1, 2], "axis": 0}]).apply_one(x)
    np.testing.assert_allclose(out[0], 0)
    np.testing.assert_allclose(out[1], 1)
    # in a batch, axis 0 still means the sample's channel axis
    batch = Preprocess([{"op": "normalize", "mean": [1, 1], "std": [1, 2], "axis": 0}]).apply(
        np.stack([x, x])
    )
    np.testing.assert_allclose(batch, np.stack([out, out]))


def test_layout_ops(rgb):
    chw = Preprocess([{"op": "layout", "transform": "hwc_to_chw"}]).apply_one(rgb)
    assert chw.shape == (3, 24, 32)
    np.testing.assert_array_equal(chw[1], rgb[:, :, 1])
    hwc = Preprocess([{"op": "layout", "transform": "chw_to_hwc"}]).apply_one(chw)
    np.testing.assert_array_equal(hwc, rgb)
    one = Preprocess([{"op": "layout", "transform": "add_batch"}]).apply_one(rgb)
    assert one.shape == (1, 24, 32, 3)
    sq = Preprocess([{"op": "layout", "transform": "squeeze"}]).apply_one(np.zeros((1, 5, 1)))
    assert sq.shape == (5,)


def test_reshape_pad_trim_and_tabular():
    assert Preprocess([{"op": "reshape", "shape": [2, -1]}]).apply_one(np.arange(6)).shape == (2, 3)
    pt = Preprocess([{"op": "pad_or_trim", "length": 5, "value": -1}])
    np.testing.assert_array_equal(pt.apply_one(np.array([1.0, 2.0])), [1, 2, -1, -1, -1])
    np.testing.assert_array_equal(pt.apply_one(np.arange(8.0)), np.arange(5.0))
    tab = Preprocess(
        [
            {"op": "select_columns", "indices": [2, 0]},
            {"op": "standardize_columns", "mean": [10, 1], "std": [2, 4]},
        ]
    )
    np.testing.assert_allclose(tab.apply_one(np.array([1.0, 99.0, 14.0])), [2.0, 0.0])


# --- batch semantics -----------------------------------------------------------------------------------


PIPELINES = [
    [
        {"op": "to_float"},
        {"op": "scale", "factor": 0.5},
        {"op": "normalize", "mean": [1, 2, 3], "std": [1, 2, 3]},
    ],
    [
        {"op": "layout", "transform": "hwc_to_chw"},
        {"op": "cast", "dtype": "float32"},
        {"op": "clip", "min": 20},
    ],
    [{"op": "resize", "size": [6, 8]}, {"op": "grayscale"}, {"op": "reshape", "shape": [-1]}],
    [{"op": "pad_or_trim", "length": 20, "axis": 1}, {"op": "layout", "transform": "squeeze"}],
    [{"op": "select_columns", "indices": [1]}, {"op": "layout", "transform": "squeeze", "axis": 2}],
]


@pytest.mark.parametrize("steps", PIPELINES)
def test_batch_equals_stacked_samples(steps, rng):
    batch = rng.integers(0, 255, size=(4, 12, 16, 3)).astype(np.uint8)
    p = Preprocess(steps)
    as_array = p.apply(batch)  # vectorised path where possible
    as_list = p.apply(list(batch))  # the same samples as a list
    stacked = np.stack([p.apply_one(x) for x in batch])
    np.testing.assert_array_equal(as_array, stacked)
    np.testing.assert_array_equal(as_list, stacked)


def test_add_batch_is_noop_inside_a_batch(rgb):
    p = Preprocess([{"op": "layout", "transform": "hwc_to_chw"}, {"op": "layout", "transform": "add_batch"}])
    assert p.apply_one(rgb).shape == (1, 3, 24, 32)
    assert p.apply([rgb, rgb]).shape == (2, 3, 24, 32)


def test_images_of_different_sizes_need_a_resize(rng):
    imgs = [_png(rng.integers(0, 255, (h, 10, 3)).astype(np.uint8)) for h in (8, 12)]
    with pytest.raises(PreprocessError, match="differ in shape.*resize"):
        Preprocess([{"op": "decode_image"}]).apply(imgs)
    out = Preprocess([{"op": "decode_image"}, {"op": "resize", "size": [8, 8]}]).apply(imgs)
    assert out.shape == (2, 8, 8, 3)


def test_apply_refuses_non_batches():
    p = Preprocess([{"op": "to_float"}])
    with pytest.raises(PreprocessError, match="batch"):
        p.apply(3.0)
    with pytest.raises(PreprocessError, match="empty batch"):
        p.apply([])
    with pytest.raises(PreprocessError, match="decode_image"):
        Preprocess([]).apply([b"png-bytes"])


def test_manifest_round_trip_spells_out_defaults():
    p = Preprocess([{"op": "resize", "size": 8}, {"op": "scale", "factor": 2}])
    steps = p.to_manifest()
    assert steps[0].model_dump() == {"op": "resize", "size": 8, "method": "bilinear"}
    assert Preprocess(steps) == p
    assert Preprocess([s.model_dump() for s in steps]) == p


def test_every_op_is_documented_and_constructible():
    for op, cls in STEP_TYPES.items():
        assert cls.__doc__, op
    assert {
        "decode_image",
        "resize",
        "center_crop",
        "crop",
        "grayscale",
        "rgb",
        "to_float",
        "scale",
        "normalize",
        "layout",
        "cast",
        "clip",
        "pad_or_trim",
        "standardize_columns",
        "select_columns",
        "reshape",
    } <= set(STEP_TYPES)


# --- validation errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "pattern"),
    [
        ([{"op": "blur", "radius": 2}], r"step 0: unknown op 'blur'"),
        ([{"factor": 2}], r"step 0: unknown op None"),
        ([{"op": "scale"}, {"op": "resize"}], r"step 1 \(resize\): size: Field required"),
        ([{"op": "resize", "size": "big"}], r"step 0 \(resize\): size"),
        ([{"op": "resize", "size": [0, 4]}], r"step 0 \(resize\).*positive"),
        ([{"op": "normalize", "mean": [0.5, 0.5], "std": [0.5]}], r"step 0 \(normalize\).*mean has 2 values"),
        ([{"op": "normalize", "mean": [0.5], "std": [0]}], r"step 0 \(normalize\).*non-zero"),
        ([{"op": "scale", "factr": 2}], r"step 0 \(scale\): factr: Extra inputs are not permitted"),
        ([{"op": "clip"}], r"step 0 \(clip\).*give min, max or both"),
        ([{"op": "clip", "min": 2, "max": 1}], r"step 0 \(clip\).*greater than max"),
        ([{"op": "cast", "dtype": "complex128"}], r"step 0 \(cast\): dtype"),
        ([{"op": "layout", "transform": "nhwc"}], r"step 0 \(layout\): transform"),
        ([{"op": "pad_or_trim", "length": -3}], r"step 0 \(pad_or_trim\): length"),
        ([{"op": "reshape", "shape": [-1, -1]}], r"step 0 \(reshape\).*at most one -1"),
        (["scale"], r"step 0 must be an object"),
        ({"op": "scale"}, r"must be a list of steps"),
    ],
)
def test_bad_steps_name_the_step_and_parameter(steps, pattern):
    with pytest.raises(PreprocessError, match=pattern) as ei:
        Preprocess(steps)
    assert ei.value.hint


def test_runtime_errors_name_the_step():
    p = Preprocess([{"op": "scale", "factor": 2}, {"op": "normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}])
    with pytest.raises(PreprocessError, match=r"step 1 \(normalize\).*3 channels"):
        p.apply(np.zeros((2, 5)))
    with pytest.raises(PreprocessError, match=r"step 0 \(select_columns\).*column 9"):
        Preprocess([{"op": "select_columns", "indices": [9]}]).apply(np.zeros((2, 3)))
