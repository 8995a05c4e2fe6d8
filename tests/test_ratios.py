from __future__ import annotations

import math

import pytest

from pangu_cli.errors import UsageError
from pangu_cli.ratios import (
    BASE_SIZE_LIST,
    HIGH_SOLUTION_BASE_SIZE_LIST,
    Bucket,
    bucket_for_size,
    crop_to_ratio,
    make_buckets,
    nearest_bucket,
    parse_ratio,
    parse_size,
    ratio_label,
    scale_buckets,
)


def test_reference_lists():
    assert len(BASE_SIZE_LIST) == 11 and len(HIGH_SOLUTION_BASE_SIZE_LIST) == 10
    assert BASE_SIZE_LIST[5] == (512, 512) and HIGH_SOLUTION_BASE_SIZE_LIST[5] == (1024, 1024)
    for w, h in BASE_SIZE_LIST:
        assert 0.24 <= w * h / 1e6 <= 0.27 and w % 64 == 0 and h % 64 == 0
    ratios = [w / h for w, h in HIGH_SOLUTION_BASE_SIZE_LIST]
    assert ratios == sorted(ratios)


# ratio → (expected BASE_SIZE_LIST bucket, expected HIGH_SOLUTION_BASE_SIZE_LIST bucket)
EXPECTED = {
    "16:9": ((640, 384), (1536, 768)),  # the high list has no 16:9: 2:1 is nearest
    "4:3": ((576, 448), (1280, 960)),
    "2:1": ((640, 384), (1536, 768)),  # base: 5:3 and 12:5 tie exactly, same area → the less extreme
    "1:1": ((512, 512), (1024, 1024)),
    "3:4": ((448, 576), (960, 1280)),
    "9:16": ((384, 640), (864, 1536)),
    "1:2": ((384, 640), (768, 1536)),
    "21:9": ((768, 320), (1536, 768)),
    "4:1": ((1024, 256), (2048, 512)),
    "1:4": ((256, 1024), (512, 2048)),
}


@pytest.mark.parametrize("text", EXPECTED)
def test_common_ratios_map_to_the_expected_buckets(text):
    base, high = EXPECTED[text]
    chosen_base = nearest_bucket(BASE_SIZE_LIST, parse_ratio(text))
    chosen_high = nearest_bucket(HIGH_SOLUTION_BASE_SIZE_LIST, text)
    assert (chosen_base.width, chosen_base.height) == base
    assert (chosen_high.width, chosen_high.height) == high
    assert BASE_SIZE_LIST[chosen_base.index] == base
    assert HIGH_SOLUTION_BASE_SIZE_LIST[chosen_high.index] == high


def test_every_bucket_is_nearest_to_its_own_ratio():
    for sizes in (BASE_SIZE_LIST, HIGH_SOLUTION_BASE_SIZE_LIST):
        for bucket in make_buckets(sizes):
            assert nearest_bucket(sizes, bucket.ratio) == bucket


def test_ties_go_to_the_larger_area():
    tie = math.sqrt(2 * 4)  # geometrically halfway between 2:1 and 4:1
    buckets = [(200, 100), (800, 200)]  # 2:1 small, 4:1 large
    assert nearest_bucket(buckets, tie).index == 1
    buckets = [(400, 200), (400, 100)]  # 2:1 larger, 4:1 smaller
    assert nearest_bucket(buckets, tie).index == 0


@pytest.mark.parametrize(
    "text, value",
    [
        ("16:9", 16 / 9),
        ("16/9", 16 / 9),
        (" 16 : 9 ", 16 / 9),
        ("16：9", 16 / 9),
        ("2.35:1", 2.35),
        ("1.78", 1.78),
        ("1", 1.0),
        ("square", 1.0),
        ("Square", 1.0),
        ("方形", 1.0),
        ("landscape", 4 / 3),
        ("portrait", 3 / 4),
        ("横版", 4 / 3),
        ("竖版", 3 / 4),
        ("wide", 16 / 9),
    ],
)
def test_parse_ratio(text, value):
    assert parse_ratio(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text", ["16:0", "0:9", "-1:2", "abc", "", "16:9:2", "nan", "inf:1", "1:0.0", "100:1", "0"]
)
def test_parse_ratio_rejects(text):
    with pytest.raises(UsageError) as info:
        parse_ratio(text)
    assert "16:9" in info.value.hint  # the hint shows examples
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["1024x576", "1024X576", "1024×576", "1024*576", " 1024 x 576 "])
def test_parse_size(text):
    assert parse_size(text) == (1024, 576)


@pytest.mark.parametrize(
    "text", ["1024", "1024x", "x576", "1024x576x3", "10.5x20", "0x576", "-5x5", "axb", "１０x１０"]
)
def test_parse_size_rejects(text):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert "1024x576" in info.value.hint


def test_bucket_properties():
    bucket = Bucket(864, 1536, 3)
    assert bucket.ratio == pytest.approx(0.5625)
    assert bucket.label == "9:16"
    assert bucket.megapixels == pytest.approx(1.327104)
    assert bucket.size == "864x1536"
    assert bucket.to_dict() == {
        "index": 3, "width": 864, "height": 1536, "ratio": 0.5625, "label": "9:16", "megapixels": 1.327,
    }  # fmt: skip


def test_labels_match_the_reference_table():
    assert [b.label for b in make_buckets(BASE_SIZE_LIST)] == [
        "1:4", "4:15", "5:12", "3:5", "7:9", "1:1", "9:7", "5:3", "12:5", "15:4", "4:1",
    ]  # fmt: skip
    assert [b.label for b in make_buckets(HIGH_SOLUTION_BASE_SIZE_LIST)] == [
        "1:4", "4:15", "1:2", "9:16", "3:4", "1:1", "4:3", "2:1", "15:4", "4:1",
    ]  # fmt: skip


def test_label_snaps_to_common_ratios_only_when_close():
    assert ratio_label(1366, 768) == "16:9"  # within 0.05%
    assert ratio_label(1920, 1200) == "16:10"
    assert ratio_label(2560, 1080) == "64:27"  # 2.370 vs 21:9 = 2.333 is 1.6% off: the exact fraction
    assert ratio_label(2520, 1080) == "21:9"


def test_bucket_for_size():
    assert bucket_for_size(BASE_SIZE_LIST, 640, 384) == Bucket(640, 384, 7)
    assert bucket_for_size(HIGH_SOLUTION_BASE_SIZE_LIST, 864, 1536).index == 3
    with pytest.raises(UsageError) as info:
        bucket_for_size(HIGH_SOLUTION_BASE_SIZE_LIST, 1536, 864)
    assert "1536x864" in info.value.message
    assert "864x1536" in info.value.hint and "1024x1024" in info.value.hint
    assert "1536x768" in info.value.hint  # names the nearest bucket


@pytest.mark.parametrize("ratio", ["16:9", "21:9", "4:3", "1:1", "9:16", "2.35:1", "1:3", "4:1", "1.9"])
@pytest.mark.parametrize("sizes", [BASE_SIZE_LIST, HIGH_SOLUTION_BASE_SIZE_LIST], ids=["base", "high"])
def test_crop_of_the_nearest_bucket_has_the_exact_ratio(ratio, sizes):
    value = parse_ratio(ratio)
    bucket = nearest_bucket(sizes, value)
    left, top, right, bottom = crop_to_ratio(bucket.width, bucket.height, value)
    width, height = right - left, bottom - top
    assert 0 <= left <= right <= bucket.width and 0 <= top <= bottom <= bucket.height
    assert width == bucket.width or height == bucket.height  # largest box: one side is kept whole
    assert abs(width - height * value) <= 1  # exact within one pixel
    assert abs(left - (bucket.width - right)) <= 1 and abs(top - (bucket.height - bottom)) <= 1  # centred


def test_crop_to_ratio_examples():
    assert crop_to_ratio(640, 384, 16 / 9) == (0, 12, 640, 372)
    assert crop_to_ratio(512, 512, 1.0) == (0, 0, 512, 512)
    assert crop_to_ratio(1536, 768, 16 / 9) == (85, 0, 1450, 768)  # 1365 = round(768 · 16/9)


def test_scale_buckets_for_small_models():
    small = scale_buckets(BASE_SIZE_LIST, 1 / 8)
    assert [(b.width, b.height) for b in small] == [
        (32, 128), (32, 120), (40, 96), (48, 80), (56, 72), (64, 64),
        (72, 56), (80, 48), (96, 40), (120, 32), (128, 32),
    ]  # fmt: skip
    assert [b.index for b in small] == list(range(11))
    for big, little in zip(make_buckets(BASE_SIZE_LIST), small):
        assert little.label == big.label
    assert all(b.width % 16 == 0 and b.height % 16 == 0 for b in scale_buckets(BASE_SIZE_LIST, 0.25, multiple=16))
    assert nearest_bucket(small, "16:9").size == "80x48"


def test_scale_buckets_rejects_merging_and_bad_factors():
    with pytest.raises(ValueError):
        scale_buckets(BASE_SIZE_LIST, 1 / 64)  # everything collapses onto 8x16-ish sizes
    with pytest.raises(ValueError):
        scale_buckets(BASE_SIZE_LIST, 0)
