"""The attribute labels of the text towers' auxiliary head: colour-bound, order-free, complete."""

from __future__ import annotations

import numpy as np

from pangu_cli.training.attributes import INDEX, LABELS, attribute_targets, scene_labels
from pangu_cli.training.scenes import Scene, SceneObject, sample_scene


def test_labels_bind_each_attribute_to_the_object_colour():
    a = SceneObject("star", "red", "big", (0.1, 0.1), 0.2)
    b = SceneObject("ring", "blue", "small", (0.85, 0.9), 0.1)
    scene = Scene("yellow", (a, b), "above", "plain")
    assert sorted(scene_labels(scene)) == sorted([
        "bg:yellow", "count:2", "red:star", "red@top-left", "red:big", "blue:ring", "blue@bottom-right",
        "blue:small"])
    swapped = Scene("yellow", (b, a), "below", "anime")
    np.testing.assert_array_equal(attribute_targets(scene), attribute_targets(swapped))  # order-free
    target = attribute_targets(scene)
    assert target.shape == (len(LABELS),) and target.sum() == 8
    assert target[INDEX["red:star"]] == 1 and target[INDEX["blue:star"]] == 0 and target[INDEX["bg:red"]] == 0


def test_every_sampled_scene_maps_onto_known_labels():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng)
        target = attribute_targets(scene)
        assert target.sum() == 2 + 3 * len(scene.objects)  # distinct colours: no two labels collide
    assert len(set(LABELS)) == len(LABELS)
