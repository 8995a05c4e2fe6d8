"""Scene sampling and rendering: sizes, determinism, layout truth, style signatures, low-quality variant."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pangu_cli.training.scenes import (
    ASPECT_RATIOS,
    COLOURS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    STYLES,
    Scene,
    SceneObject,
    attributes,
    bucket_size,
    object_masks,
    position_name,
    render,
    render_low_quality,
    sample_scene,
)

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[name] for name in PALETTE_NAMES], np.float64)


def _nearest_colour(rgb: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def _with_style(scene: Scene, style: str) -> Scene:
    return dataclasses.replace(scene, style=style)


def test_every_shape_colour_style_and_ratio_renders_with_right_size_and_dtype():
    colours = list(COLOURS)
    ratios = list(ASPECT_RATIOS)
    for i, shape in enumerate(SHAPES):
        for j, style in enumerate(STYLES):
            colour = colours[(i + j) % len(colours)]
            background = colours[(i + j + 3) % len(colours)]
            obj = SceneObject(shape, colour, "big", (0.5, 0.5), 0.22, 5.0)
            scene = Scene(background, (obj,), None, style)
            for pixels in (32 * 32, 64 * 64):
                width, height = bucket_size(ratios[(i + j) % len(ratios)], pixels)
                image = render(scene, width, height, np.random.default_rng(0))
                assert image.shape == (height, width, 3) and image.dtype == np.uint8
                mask = object_masks(scene, width, height)[0]
                inside = image[mask > 0.95].astype(np.float64)
                assert len(inside) > 10, (shape, style, width, height)
                assert _nearest_colour(np.median(inside, axis=0)) == colour, (shape, style)
    for ratio in ratios:  # odd sizes too, and every style at every ratio
        for style in STYLES:
            scene = sample_scene(np.random.default_rng(len(ratio)), styles=(style,))
            rw, rh = ASPECT_RATIOS[ratio]
            width, height = 15 * rw, 15 * rh
            image = render(scene, width, height, np.random.default_rng(1))
            assert image.shape == (height, width, 3) and image.dtype == np.uint8
            low = render_low_quality(scene, width, height, 3.0, np.random.default_rng(1))
            assert low.shape == (height, width, 3) and low.dtype == np.uint8


def test_bucket_sizes_match_ratio_and_area():
    for ratio, (rw, rh) in ASPECT_RATIOS.items():
        for pixels in (32 * 32, 64 * 64, 128 * 128):
            width, height = bucket_size(ratio, pixels)
            assert width % 8 == 0 and height % 8 == 0
            assert abs(np.log(width / height) - np.log(rw / rh)) < 0.2, (ratio, width, height)
            assert 0.6 < width * height / pixels < 1.5
    assert bucket_size("1:1", 64 * 64) == (64, 64)


def test_render_is_deterministic_for_scene_and_seed():
    scenes = [sample_scene(np.random.default_rng(seed), styles=(style,))
              for seed, style in enumerate(STYLES * 3)]
    for scene in scenes:
        a = render(scene, 48, 40, np.random.default_rng(7))
        b = render(scene, 48, 40, np.random.default_rng(7))
        assert a.tobytes() == b.tobytes()
        assert render(scene, 48, 40).tobytes() == render(scene, 48, 40).tobytes()
        lo_a = render_low_quality(scene, 48, 40, 4, np.random.default_rng(3))
        lo_b = render_low_quality(scene, 48, 40, 4, np.random.default_rng(3))
        assert lo_a.tobytes() == lo_b.tobytes()
        if scene.style in ("photo", "art"):  # these draw grain/strokes from the rng
            assert a.tobytes() != render(scene, 48, 40, np.random.default_rng(8)).tobytes()
    first = [sample_scene(np.random.default_rng(11)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


def test_sampling_covers_the_vocabulary_and_keeps_invariants():
    rng = np.random.default_rng(0)
    seen = {"shape": set(), "colour": set(), "style": set(), "position": set(), "relation": set(),
            "size": set(), "background": set()}
    for _ in range(3000):
        scene = sample_scene(rng)
        colours = [scene.background] + [obj.colour for obj in scene.objects]
        assert len(set(colours)) == len(colours)  # background and objects all distinct
        assert (scene.relation is None) == (len(scene.objects) == 1)
        for obj in scene.objects:
            cx, cy = obj.position
            assert obj.radius <= cx <= 1 - obj.radius and obj.radius <= cy <= 1 - obj.radius
            seen["shape"].add(obj.shape)
            seen["colour"].add(obj.colour)
            seen["size"].add(obj.size)
            seen["position"].add(obj.region)
        seen["style"].add(scene.style)
        seen["relation"].add(scene.relation)
        seen["background"].add(scene.background)
        labels = attributes(scene)
        assert labels["style"] == scene.style and len(labels["objects"]) == len(scene.objects)
    assert seen["shape"] == set(SHAPES) and seen["colour"] == set(COLOURS)
    assert seen["style"] == set(STYLES) and seen["position"] == set(POSITIONS)
    assert seen["relation"] == set(RELATIONS) | {None} and seen["size"] == {"small", "big"}
    assert seen["background"] == set(COLOURS)
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8
    one = sample_scene(np.random.default_rng(1), max_objects=1)
    assert len(one.objects) == 1


def test_invalid_scenes_are_rejected():
    obj = SceneObject("circle", "red", "big", (0.5, 0.5), 0.2)
    with pytest.raises(ValueError):
        Scene("mauve", (obj,))
    with pytest.raises(ValueError):
        Scene("blue", (obj,), "above")
    with pytest.raises(ValueError):
        Scene("blue", (obj,), None, "cubist")
    with pytest.raises(ValueError):
        sample_scene(np.random.default_rng(0), max_objects=3)


def _colour_pixels(image: np.ndarray, colour: str, tolerance: int = 10) -> np.ndarray:
    """(x, y) centres of the pixels of exactly that colour (plain style), eroded by a 4-neighbour cross
    so that anti-aliased edges which happen to blend into it (white + black = grey) are not counted."""
    match = np.abs(image.astype(np.int16) - np.array(COLOURS[colour], np.int16)).sum(axis=2) < tolerance
    core = match.copy()
    core[1:] &= match[:-1]
    core[:-1] &= match[1:]
    core[:, 1:] &= match[:, :-1]
    core[:, :-1] &= match[:, 1:]
    if core.sum() < 4:  # thin shapes (a small ring) have no core: keep the plain match
        core = match
    ys, xs = np.nonzero(core)
    return np.stack([xs + 0.5, ys + 0.5], axis=1)


def test_rendered_objects_are_where_the_labels_say():
    """Found by their colour in the pixels, not from the scene: the centroid lies in the labelled third,
    and two related objects are fully apart along the relation's axis."""
    rng = np.random.default_rng(123)
    ratios = list(ASPECT_RATIOS)
    checked_one = checked_two = 0
    for i in range(300):
        scene = sample_scene(rng, styles=("plain",))
        width, height = bucket_size(ratios[i % len(ratios)], 64 * 64)
        image = render(scene, width, height, rng)
        found = [_colour_pixels(image, obj.colour) for obj in scene.objects]
        for obj, pixels in zip(scene.objects, found):
            assert len(pixels) >= 4, (scene, width, height)
            cx, cy = pixels.mean(axis=0) / (width, height)
            assert position_name(cx, cy) == obj.region, (scene, width, height, cx, cy)
            expected = attributes(scene)["objects"][scene.objects.index(obj)]["position"]
            assert expected == obj.region
        if scene.relation is None:
            checked_one += 1
            continue
        a, b = found
        if scene.relation == "above":
            assert a[:, 1].max() < b[:, 1].min()
        elif scene.relation == "below":
            assert a[:, 1].min() > b[:, 1].max()
        elif scene.relation == "left_of":
            assert a[:, 0].max() < b[:, 0].min()
        else:
            assert a[:, 0].min() > b[:, 0].max()
        checked_two += 1
    assert checked_one > 100 and checked_two > 100


def test_styles_draw_each_object_in_its_labelled_third():
    """What a style adds to the empty background sits in the object's third, at every ratio."""
    rng = np.random.default_rng(321)
    ratios = list(ASPECT_RATIOS)
    for i in range(120):
        scene = sample_scene(rng, styles=(STYLES[1 + i % 3],), max_objects=1)
        width, height = bucket_size(ratios[i % len(ratios)], (32 * 32, 64 * 64)[i % 2])
        seed = int(rng.integers(1 << 30))
        image = render(scene, width, height, np.random.default_rng(seed)).astype(np.float64)
        empty = render(dataclasses.replace(scene, objects=()), width, height, np.random.default_rng(seed))
        change = np.abs(image - empty).sum(axis=2)
        change[change < 30] = 0  # grain and strokes are redrawn identically, but ignore rounding noise
        ys, xs = np.nonzero(change)
        weights = change[ys, xs]
        cx = ((xs + 0.5) * weights).sum() / weights.sum() / width
        cy = ((ys + 0.5) * weights).sum() / weights.sum() / height
        assert position_name(cx, cy) == scene.objects[0].region, (scene, width, height, cx, cy)


@pytest.mark.parametrize("size,min_accuracy", [(64, 0.97), (32, 0.9)])
def test_every_style_keeps_colours_nameable(size, min_accuracy):
    """The median pixel of each object / of the background is nearest to its palette colour."""
    rng = np.random.default_rng(5)
    right = total = 0
    for i in range(240):
        scene = sample_scene(rng, styles=(STYLES[i % 4],))
        image = render(scene, size, size, rng).astype(np.float64)
        masks = object_masks(scene, size, size)
        for obj, mask in zip(scene.objects, masks):
            right += _nearest_colour(np.median(image[mask > 0.95], axis=0)) == obj.colour
            total += 1
        background = image[masks.sum(axis=0) < 0.01]
        right += _nearest_colour(np.median(background, axis=0)) == scene.background
        total += 1
    assert right / total >= min_accuracy, right / total


def test_styles_have_their_signatures_at_32_and_64():
    rng = np.random.default_rng(9)
    for size in (32, 64):
        for _ in range(12):
            base = sample_scene(rng, max_objects=1)
            base = dataclasses.replace(base, objects=(dataclasses.replace(base.objects[0], size="big", radius=0.22),))
            images = {style: render(_with_style(base, style), size, size, np.random.default_rng(1)).astype(np.float64)
                      for style in STYLES}
            mask = object_masks(base, size, size)[0]
            outside = mask == 0
            far = object_masks(dataclasses.replace(
                base, objects=(dataclasses.replace(base.objects[0], radius=0.36),)), size, size)[0] == 0
            # plain: exactly flat background
            assert images["plain"][outside].std(axis=0).max() == 0
            # anime: a dark outline ring just outside the shape
            ring = (mask == 0) & ~far
            background_luma = images["plain"][ring].mean()
            if base.background != "black":  # a dark line on black does not show, by design
                assert np.percentile(images["anime"][ring].mean(axis=1), 10) < 0.6 * background_luma
            # photo: lit from the top, grain everywhere
            photo = images["photo"]
            top, bottom = photo[: size // 6][far[: size // 6]], photo[-size // 6:][far[-size // 6:]]
            if len(top) and len(bottom):
                assert top.mean() > bottom.mean()
            assert np.abs(np.diff(photo, axis=1))[far[:, 1:] & far[:, :-1]].mean() > 2
            # art: brush strokes along x on the ground: pixels vary more down a column than along a row
            art = images["art"]
            region = far[1:, 1:] & far[:-1, 1:] & far[1:, :-1]
            along_x = np.abs(art[1:, 1:] - art[1:, :-1])[region].mean()
            along_y = np.abs(art[1:, 1:] - art[:-1, 1:])[region].mean()
            assert along_y > along_x
            # all four differ clearly from one another around the object
            near = ~far
            for i, s in enumerate(STYLES):
                for t in STYLES[i + 1:]:
                    assert np.abs(images[s] - images[t])[near].mean() > 5, (s, t, size)


def test_supersampling_anti_aliases_edges():
    scene = Scene("blue", (SceneObject("circle", "red", "big", (0.5, 0.5), 0.22),), None, "plain")
    hard = render(scene, 32, 32, supersample=1)
    smooth = render(scene, 32, 32, supersample=4)
    assert len(np.unique(hard.reshape(-1, 3), axis=0)) == 2
    assert len(np.unique(smooth.reshape(-1, 3), axis=0)) > 6


def _high_frequency_energy(image: np.ndarray) -> float:
    spectrum = np.abs(np.fft.fft2(image.astype(np.float64).mean(axis=2) - image.mean())) ** 2
    fy = np.abs(np.fft.fftfreq(image.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(image.shape[1]))[None, :]
    return float(spectrum[np.maximum(fx, fy) > 0.15].sum() / spectrum.sum())


def test_low_quality_variant_is_blurrier():
    rng = np.random.default_rng(2)
    for i in range(24):
        scene = sample_scene(rng, styles=(STYLES[i % 4],))
        width, height = bucket_size(list(ASPECT_RATIOS)[i % 7], 64 * 64)
        seed = int(rng.integers(1 << 30))
        high = render(scene, width, height, np.random.default_rng(seed))
        low = render_low_quality(scene, width, height, 4, np.random.default_rng(seed))
        assert _high_frequency_energy(low) < 0.5 * _high_frequency_energy(high), (scene.style, width, height)
        # same picture though: the colours and layout survive
        assert np.abs(low.astype(np.int16) - high.astype(np.int16)).mean() < 30
