"""Coop-Diffusion from the command line: `--recipe`, the short flags, `--dry-run`'s step plan, a pixel-space
model and a latent-space model denoising one image together, one-stage super-resolution, and the recipe
recorded in the PNG and re-run by `--from`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_cli import (  # noqa: F401  (fixtures)
    TESTS, assert_error, isolated_config, recipe_of, run_cli, tiny_model, tiny_model_folder)


@pytest.fixture(scope="module")
def pixel_model(ms, tmp_path_factory):
    """A second tiny model in another latent space: pixels (no autoencoder), its own buckets."""
    import sys

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from tiny_model import make_tiny_model, pixel_space_overrides

    return make_tiny_model(tmp_path_factory.mktemp("pix") / "tinypix", seed=3, **pixel_space_overrides())


def write_recipe(path, pixel_model, mode="switch", extra=""):
    path.write_text(f'''mode = "{mode}"
[[members]]
name = "layout"
model = "{pixel_model}"
unet = "structure"
t = [500, 1000]
size = "16x16"
{extra}
[[members]]
name = "detail"
t = [0, 500]
''', encoding="utf-8")
    return path


def test_dry_run_prints_who_runs_each_step_and_the_cost(tiny_model, tmp_path):
    run = run_cli("draw", "a red cat", "--model", tiny_model, "--steps", "4", "--dry-run", "--style-scale", "0",
                  "--out", tmp_path)
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    steps = [line.split() for line in lines if line.strip()[:1].isdigit()]
    # The lag rule: step i goes by step i-1's timestep (999, 749, 499 → structure, structure, structure)
    assert [row[3] for row in steps] == ["structure", "structure", "structure", "texture"]
    assert [row[2] for row in steps] == ["999", "749", "499", "249"]
    assert {row[4] for row in steps} == {"32x32"}
    assert any(line.strip().startswith("texture: model tiny (texture UNet) at 32x32, 1 step,") for line in lines)
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
    as_json = run_cli("draw", "a red cat", "--model", tiny_model, "--steps", "4", "--dry-run", "--json",
                      "--style-scale", "0", "--guidance", "5", "--out", tmp_path)
    plan = as_json.records()[0]["plan"]
    assert [s["lead"] for s in plan["steps"]] == ["structure", "structure", "structure", "texture"]
    # latent 16x16, 2 branches (unconditional + conditional)
    assert plan["members"]["texture"] == {"model": "tiny", "unet": "texture", "size": [32, 32], "steps": 1,
                                          "evaluations": 2, "mpx_evals": 2 * 16 * 16 / 1e6}


def test_two_latent_spaces_draw_one_image_and_from_repeats_it(tiny_model, pixel_model, tmp_path):
    recipe = write_recipe(tmp_path / "coop.toml", pixel_model)
    plan = run_cli("draw", "a red cat", "--model", tiny_model, "--recipe", recipe, "--steps", "4", "--dry-run",
                   "--style-scale", "0", "--out", tmp_path / "o")
    assert plan.code == 0, plan
    rows = [line.split() for line in plan.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[3], r[4]) for r in rows] == [("layout", "16x16")] * 2 + [("detail", "32x32")] * 2

    out = tmp_path / "a.png"
    run = run_cli("draw", "a red cat", "--model", tiny_model, "--recipe", recipe, "--steps", "4", "--seed", "3",
                  "--style-scale", "0", "--out", out)
    assert run.code == 0, run
    with Image.open(out) as image:
        assert image.size == (32, 32)
        first = np.asarray(image)
    stored = recipe_of(out)["ensemble"]
    assert [m["name"] for m in stored["members"]] == ["layout", "detail"]
    assert stored["members"][0]["model"] == str(pixel_model)
    again = tmp_path / "b.png"
    rerun = run_cli("draw", "--from", out, "--model", tiny_model, "--out", again)
    assert rerun.code == 0, rerun
    with Image.open(again) as image:
        np.testing.assert_array_equal(np.asarray(image), first)
    # Without the recipe the same seed gives another image: the pixel model's steps really ran.
    plain = tmp_path / "c.png"
    assert run_cli("draw", "a red cat", "--model", tiny_model, "--steps", "4", "--seed", "3", "--style-scale", "0",
                   "--out", plain).code == 0
    with Image.open(plain) as image:
        assert not np.array_equal(np.asarray(image), first)


def test_fused_members_run_together(tiny_model, pixel_model, tmp_path):
    recipe = tmp_path / "fuse.toml"
    recipe.write_text(f'''mode = "fuse"
[[members]]
name = "main"
t = [0, 1000]
[[members]]
name = "helper"
model = "{pixel_model}"
t = [0, 700]
weight = 0.5
guidance = 1.0
''', encoding="utf-8")
    run = run_cli("draw", "a red cat", "--model", tiny_model, "--recipe", recipe, "--steps", "3", "--json",
                  "--dry-run", "--style-scale", "0", "--out", tmp_path / "o")
    plan = run.records()[0]["plan"]
    assert [s["active"] for s in plan["steps"]] == [["main"], ["main", "helper"], ["main", "helper"]]
    made = run_cli("draw", "a red cat", "--model", tiny_model, "--recipe", recipe, "--steps", "3",
                   "--style-scale", "0", "--out", tmp_path / "f.png")
    assert made.code == 0, made
    with Image.open(tmp_path / "f.png") as image:
        assert image.size == (32, 32)


def test_short_flags_and_super_resolution(tiny_model, pixel_model, tmp_path):
    run = run_cli("draw", "a cat", "--model", tiny_model, "--structure-model", pixel_model, "--switch", "0.5",
                  "--structure-size", "12x12", "--steps", "4", "--dry-run", "--json", "--style-scale", "0",
                  "--out", tmp_path)
    assert run.code == 0, run
    record = run.records()[0]
    assert record["ensemble"]["members"][0] == {"name": "structure", "model": str(pixel_model), "t": [500, 1000],
                                                "size": "12x12"}
    assert record["plan"]["members"]["structure"]["unet"] == "structure"
    # 64x64 = 2 × the 32x32 bucket: the large-noise steps at the bucket size, the rest at 64x64, one pass.
    sr = run_cli("draw", "a cat", "--model", tiny_model, "--size", "64x64", "--steps", "4", "--dry-run", "--json",
                 "--style-scale", "0", "--out", tmp_path)
    assert sr.code == 0, sr
    members = sr.records()[0]["plan"]["members"]
    assert members["structure"]["size"] == [32, 32] and members["texture"]["size"] == [64, 64]
    made = run_cli("draw", "a cat", "--model", tiny_model, "--size", "64x64", "--steps", "2", "--style-scale", "0",
                   "--out", tmp_path / "sr.png")
    assert made.code == 0, made
    with Image.open(tmp_path / "sr.png") as image:
        assert image.size == (64, 64)
    assert_error(run_cli("draw", "a cat", "--model", tiny_model, "--size", "160x160", "--out", tmp_path), 2,
                 "160x160 is not a size", "up to 4×")


@pytest.mark.parametrize("extra, fragments", [
    ('weight = "x"', ["members[0] 'layout'.weight", "finite number"]),
    ("t = [500, 900]", None),  # replaced below: a gap
])
def test_bad_recipe_is_one_line_naming_the_field(tiny_model, pixel_model, tmp_path, extra, fragments):
    recipe = write_recipe(tmp_path / "r.toml", pixel_model, extra=extra if fragments else "")
    if fragments is None:
        recipe.write_text(recipe.read_text(encoding="utf-8").replace("t = [500, 1000]", "t = [600, 1000]"),
                          encoding="utf-8")
        fragments = ["recipe r.toml", "no member covers timesteps [500, 600)"]
    out = tmp_path / "o"
    assert_error(run_cli("draw", "a cat", "--model", tiny_model, "--recipe", recipe, "--out", out), 2, *fragments)
    assert not out.exists()


def test_recipe_errors_before_any_model_loads(tiny_model, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[members]]\nname = "a"\nmodel = "no-such-model"\n', encoding="utf-8")
    assert_error(run_cli("draw", "a cat", "--model", tiny_model, "--recipe", recipe, "--out", tmp_path / "o"), 2,
                 "members[0] 'a'.model", "unknown model 'no-such-model'")
    recipe.write_text('[[members]]\nname = "a"\n', encoding="utf-8")
    assert_error(run_cli("draw", "a cat", "--model", tiny_model, "--recipe", recipe, "--switch", "300",
                         "--out", tmp_path / "o"), 2, "--switch does not apply to a recipe")
    assert_error(run_cli("draw", "a cat", "--model", tiny_model, "--recipe", recipe, "--structure-model", "x",
                         "--out", tmp_path / "o"), 2, "--recipe and --structure-model both given")
    assert_error(run_cli("draw", "a cat", "--model", tiny_model, "--recipe", tmp_path / "none.toml",
                         "--out", tmp_path / "o"), 2, "none.toml does not exist")


def test_batch_with_a_recipe_makes_new_images_and_checks_it_once(tiny_model, pixel_model, tmp_path):
    source = tmp_path / "p.txt"
    source.write_text("a red cat\na blue dog\n", encoding="utf-8")
    out = tmp_path / "out"
    plain = run_cli("batch", source, "--model", tiny_model, "--out", out, "--steps", "2", "--style-scale", "0")
    assert plain.code == 0, plain
    recipe = write_recipe(tmp_path / "r.toml", pixel_model)
    coop = run_cli("batch", source, "--model", tiny_model, "--out", out, "--steps", "2", "--style-scale", "0",
                   "--recipe", recipe)
    assert coop.code == 0, coop
    assert len([p for p in out.glob("*.png")]) == 4  # the recipe asks for other images, not the finished ones
    assert {bool(recipe_of(p).get("ensemble")) for p in out.glob("*.png")} == {True, False}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[members]]\nname = "a"\nmodel = "no-such"\n', encoding="utf-8")
    assert_error(run_cli("batch", source, "--model", tiny_model, "--out", out, "--recipe", bad), 2,
                 "members[0] 'a'.model", "unknown model 'no-such'")
