"""Coop-Diffusion recipes: parsing and the one-line errors that name the recipe field, the step plan of
an ensemble (who runs which step, at which size, at what cost), and the default split it reproduces."""

from __future__ import annotations

import json

import pytest

from pangu_cli.ensemble import (Ensemble, MemberSpec, default_ensemble, ensemble_from_dict, from_flags,
                                load_recipe, plan_ensemble)
from pangu_cli.errors import UsageError
from pangu_cli.models.registry import ModelSpec

TWO = {"members": [{"name": "structure", "t": [500, 1000], "scale": 0.5}, {"name": "texture", "t": [0, 500]}]}


def spec(name="m", two_stage=True, vae=True, buckets=((32, 32), (48, 24)), structure_scale=None, shift=None):
    manifest = {"name": name, "checkpoints": {"texture": "t.safetensors"},
                "unet": {"in_channels": 4 if vae else 3, "channel_mult": [1, 2]},
                "vae": {"ddconfig": {"ch_mult": [1, 2]}} if vae else None,
                "buckets": [list(b) for b in buckets], "sampling": {}}
    if two_stage:
        manifest["checkpoints"]["structure"] = "s.safetensors"
    if structure_scale:
        manifest["sampling"]["structure_scale"] = structure_scale
    if shift:
        manifest["schedule"] = {"snr_shift": shift}
    return ModelSpec(name, __import__("pathlib").Path("/nonexistent") / name, manifest, "path")


def error(data) -> str:
    with pytest.raises(UsageError) as info:
        ensemble_from_dict(data, "recipe r.toml")
    return info.value.one_line()


def test_parse_round_trips_through_the_png_form():
    ensemble = ensemble_from_dict({"mode": "fuse", "members": [
        {"name": "a", "model": "other", "t": [0.0, 1.0], "weight": 2, "guidance": 4, "size": "64x32"},
        {"name": "b", "unet": "structure", "t": [0, 1000], "weight": 0.5, "scale": 0.25}]})
    assert ensemble.mode == "fuse" and ensemble.members[0].t == (0, 1000)  # fractions are scaled
    assert ensemble.members[0].size == (64, 32) and ensemble.members[1].unet_role() == "structure"
    again = ensemble_from_dict(json.loads(json.dumps(ensemble.to_dict())))
    assert again == ensemble


@pytest.mark.parametrize("data, fragments", [
    ({"members": []}, ["members", "no members"]),
    ({"mode": "blend", **TWO}, ["mode", "'blend'", "switch, fuse"]),
    ({"members": [{"t": [0, 1000]}]}, ["members[0].name", "missing"]),
    ({"members": [{"name": "a", "t": [0, 1000], "colour": 1}]}, ["members[0].colour", "unknown field"]),
    ({"members": [{"name": "a", "t": [0, 600]}, {"name": "b", "t": [500, 1000]}]},
     ["member 'b'.t [500, 1000]", "overlaps member 'a'.t [0, 600]", "fuse"]),
    ({"members": [{"name": "a", "t": [0, 400]}, {"name": "b", "t": [500, 1000]}]},
     ["no member covers timesteps [400, 500)"]),
    ({"mode": "fuse", "members": [{"name": "a", "weight": 1}, {"name": "b", "weight": -1}]},
     ["members 'a', 'b'", "weights sum to 0"]),
    ({"members": [{"name": "a", "t": [800, 200]}]}, ["members[0] 'a'.t", "t_min < t_max"]),
    ({"members": [{"name": "a", "t": "all"}]}, ["members[0] 'a'.t", "pair"]),
    ({"members": [{"name": "a", "weight": "heavy"}]}, ["members[0] 'a'.weight", "finite number"]),
    ({"members": [{"name": "a", "unet": "middle"}]}, ["members[0] 'a'.unet", "structure, texture"]),
    ({"members": [{"name": "a", "scale": 0}]}, ["members[0] 'a'.scale", "out of range"]),
    ({"members": [{"name": "a", "size": "big"}]}, ["members[0] 'a'.size"]),
    ({"members": [{"name": "a", "t": [0, 500]}, {"name": "a", "t": [500, 1000]}]}, ["'a' is used twice"]),
    ({"lag": "false", "members": [{"name": "a"}]}, ["lag", "true or false"]),
])
def test_bad_recipes_name_the_field(data, fragments):
    line = error(data)
    assert line.startswith("recipe r.toml") and " — " in line
    for fragment in fragments:
        assert fragment in line, line


def test_load_recipe_reports_file_problems(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("mode = \n", encoding="utf-8")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_recipe(bad)
    good = tmp_path / "good.toml"
    good.write_text('mode = "switch"\n[[members]]\nname = "structure"\nt = [500, 1000]\n'
                    '[[members]]\nname = "texture"\nt = [0, 500]\n', encoding="utf-8")
    assert [m.name for m in load_recipe(good).members] == ["structure", "texture"]


def test_flags_make_a_two_member_switch():
    assert from_flags(None, None, 500, None) is None
    ensemble = from_flags("big", None, 300, "16x16")
    structure, texture = ensemble.members
    assert (structure.model, structure.t, structure.size, structure.unet) == ("big", (300, 1000), (16, 16), None)
    assert (texture.model, texture.t, texture.unet) == (None, (0, 300), None)
    assert (structure.unet_role(), texture.unet_role()) == ("structure", "texture")
    with pytest.raises(UsageError, match="--switch"):
        from_flags("big", None, 0, None)


def test_plan_assigns_steps_sizes_and_costs():
    models = {None: spec(structure_scale=0.5)}
    plan = plan_ensemble(ensemble_from_dict(TWO), models, (32, 32), 4)
    assert plan.timesteps == (999, 749, 499, 249)
    structure, texture = plan.members
    assert structure.steps == (0, 1) and texture.steps == (2, 3)
    assert structure.size == (16, 16) and texture.size == (32, 32)  # scale 0.5 of the output
    lo, hi = plan.sigma_range(structure)
    assert hi == float("inf") and plan.sigmas[2] < lo < plan.sigmas[1]
    assert plan.sigma_range(texture) == (0.0, lo)
    rows = plan.rows(branches=2)
    assert [r["lead"] for r in rows] == ["structure"] * 2 + ["texture"] * 2
    # latent = pixels / 2; cost = branches × latent pixels
    assert rows[0]["mpx_evals"] == 2 * 8 * 8 / 1e6 and rows[3]["mpx_evals"] == 2 * 16 * 16 / 1e6
    totals = plan.totals(branches=2)
    assert totals["texture"]["evaluations"] == 4 and totals["structure"]["size"] == [16, 16]


def test_fused_members_are_all_active_and_the_first_leads():
    data = {"mode": "fuse", "members": [{"name": "a", "t": [0, 1000]}, {"name": "b", "t": [0, 600], "weight": 3}]}
    plan = plan_ensemble(ensemble_from_dict(data), {None: spec()}, (32, 32), 4)
    assert [r["active"] for r in plan.rows()] == [["a"], ["a"], ["a", "b"], ["a", "b"]]  # t = 999, 749, 499, 249
    assert {r["lead"] for r in plan.rows()} == {"a"}


def test_default_split_follows_the_reference_lag_rule():
    """The reference hands step i over by step i−1's timestep, and step 0 always goes to the structure
    UNet; a switch outside (0, 1000) leaves one UNet."""
    models = {None: spec(structure_scale=0.25)}

    def split(switch, lag, steps=40):
        plan = plan_ensemble(default_ensemble(models[None], switch, lag), models, (32, 32), steps)
        return {m.spec.name: len(m.steps) for m in plan.members}

    assert split(500, True) == {"structure": 21, "texture": 19}
    assert split(500, False) == {"structure": 20, "texture": 20}
    assert split(1000, True) == {"structure": 1, "texture": 39}
    assert split(0, True) == {"structure": 40}
    # Alone, the structure UNet still runs at its own scale (0.25 of 32x32, on the model's 4-pixel grid).
    alone = plan_ensemble(default_ensemble(models[None], 0, True), models, (32, 32), 4)
    assert [m.size for m in alone.members] == [(8, 8)]
    assert split(500, True, steps=1) == {"structure": 1}
    single = spec(two_stage=False)
    assert [m.role for m in plan_ensemble(default_ensemble(single, 500, True), {None: single}, (32, 32), 3).members] \
        == ["texture"]


def test_super_resolution_runs_the_structure_at_the_bucket_size():
    models = {None: spec(structure_scale=0.5)}
    plan = plan_ensemble(default_ensemble(models[None], 500, False), models, (64, 64), 4)  # 2 × the 32x32 bucket
    assert [m.size for m in plan.members] == [(16, 16), (64, 64)]
    plain = plan_ensemble(default_ensemble(models[None], 500, False), models, (32, 32), 4)
    assert [m.size for m in plain.members] == [(16, 16), (32, 32)]


def test_steps_follow_the_first_members_schedule():
    shifted = spec("shifted", shift=16.0)
    models = {None: spec(), "shifted": shifted}
    data = {"members": [{"name": "s", "model": "shifted", "t": [500, 1000]}, {"name": "t", "t": [0, 500]}]}
    plan = plan_ensemble(ensemble_from_dict(data), models, (32, 32), 2)
    assert plan.sigmas[0] == pytest.approx(4 * 14.6146555, rel=1e-5)


def test_plan_errors_name_the_member():
    single = spec(two_stage=False)
    ensemble = ensemble_from_dict({"members": [{"name": "a", "unet": "structure", "t": [500, 1000]},
                                               {"name": "b", "t": [0, 500]}]})
    with pytest.raises(UsageError, match=r"members\[0\] 'a'.unet: model 'm' has no structure UNet"):
        plan_ensemble(ensemble, {None: single}, (32, 32), 4)
    sized = ensemble_from_dict({"members": [{"name": "a", "size": "30x30", "t": [500, 1000]},
                                            {"name": "b", "t": [0, 500]}]})
    with pytest.raises(UsageError, match=r"members\[0\] 'a'.size: 30x30 is not a multiple of 4"):
        plan_ensemble(sized, {None: spec()}, (32, 32), 4)
    unbridgeable = spec("latent-no-vae", vae=False)
    unbridgeable.manifest["unet"]["in_channels"] = 4
    data = {"members": [{"name": "a", "model": "x", "t": [500, 1000]}, {"name": "b", "t": [0, 500]}]}
    with pytest.raises(UsageError, match=r"members\[0\] 'a'.model: .*no autoencoder"):
        plan_ensemble(ensemble_from_dict(data), {None: spec(), "x": unbridgeable}, (32, 32), 4)


def test_member_spec_defaults():
    assert MemberSpec("texture").unet_role() == "texture" and MemberSpec("structure").unet_role() == "structure"
    assert MemberSpec("expert-3").unet_role() == "texture"
    assert Ensemble((MemberSpec("a"),)).assign([999, 500, 0]) == [[0], [0], [0]]


def test_a_member_at_a_size_its_model_cannot_run_is_named():
    coarse = spec("coarse", buckets=((48, 24),))
    coarse.manifest["unet"]["channel_mult"] = [1, 2, 2, 2, 2]  # latent 2 × 16 levels: sides of 32
    data = {"members": [{"name": "a", "model": "coarse", "t": [500, 1000]}, {"name": "b", "t": [0, 500]}]}
    with pytest.raises(UsageError, match=r"members\[0\] 'a': would run at 48x24, not a multiple of 32"):
        plan_ensemble(ensemble_from_dict(data), {None: spec(buckets=((48, 24),)), "coarse": coarse}, (48, 24), 4)
