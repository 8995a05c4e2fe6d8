from __future__ import annotations

from pathlib import Path

import pytest

from pangu_cli.errors import UsageError
from pangu_cli.presets import (
    STYLE_BRANCHES,
    Preset,
    get_preset,
    load_presets,
    parse_preset,
    parse_style_spec,
    resolve_styles,
    user_preset_dir,
)

PACKAGED_DIR = Path(__file__).resolve().parents[1] / "pangu_cli" / "presets"


@pytest.fixture
def empty_user_dir(tmp_path):
    folder = tmp_path / "user-presets"
    folder.mkdir()
    return folder


@pytest.fixture
def presets(empty_user_dir):
    return load_presets(empty_user_dir)


def write(folder: Path, filename: str, text: str) -> Path:
    path = folder / filename
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# Packaged presets


def test_packaged_presets_load_and_are_valid(presets):
    assert {"anime", "art", "photo", "none", "illustration"} <= set(presets)
    assert len(presets) == len(list(PACKAGED_DIR.glob("*.toml")))
    for name, preset in presets.items():
        assert name == preset.name
        assert set(preset.styles) == set(STYLE_BRANCHES)
        assert all(scale >= 0 for scale in preset.styles.values())
        assert preset.description.get("en") and preset.description.get("zh")
        assert preset.source.endswith(".toml")


def test_packaged_scales(presets):
    assert presets["art"].styles == {"art": 4.0, "anime": 0.0, "photo": 0.0}  # the reference default
    assert presets["anime"].styles == {"art": 0.0, "anime": 4.0, "photo": 0.0}
    assert presets["photo"].styles == {"art": 0.0, "anime": 0.0, "photo": 4.0}
    assert presets["none"].styles == {"art": 0.0, "anime": 0.0, "photo": 0.0}
    illustration = presets["illustration"].styles
    assert sum(1 for scale in illustration.values() if scale > 0) >= 2  # a blend


def test_branch_triggers_are_the_reference_characters():
    assert STYLE_BRANCHES == {"art": "\u7fa9 ", "anime": "\u9945 ", "photo": "\u9719 "}
    assert list(STYLE_BRANCHES) == ["art", "anime", "photo"]  # the reference's branch order


@pytest.mark.parametrize(
    "alias, name",
    [("anime", "anime"), ("ANIME", "anime"), ("动漫", "anime"), ("Cartoon", "anime"), ("摄影", "photo"),
     ("Aesthetic", "art"), ("艺术", "art"), ("插画", "illustration"), ("无", "none"), (" photo ", "photo")],
)  # fmt: skip
def test_aliases_resolve_case_insensitively(presets, alias, name):
    assert get_preset(alias, presets).name == name


def test_unknown_preset_lists_the_available_names(presets):
    with pytest.raises(UsageError) as info:
        get_preset("anim", presets)
    assert "'anim'" in info.value.message
    assert "did you mean 'anime'" in info.value.hint
    for name in presets:
        assert name in info.value.hint


def test_default_user_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_preset_dir() == tmp_path / "pangu" / "presets"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_preset_dir() == tmp_path / "home" / ".config" / "pangu" / "presets"


def test_load_presets_reads_the_default_user_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    folder = tmp_path / "pangu" / "presets"
    folder.mkdir(parents=True)
    write(folder, "ink.toml", 'name = "ink"\n[styles]\nart = 1.5\n')
    assert load_presets()["ink"].styles["art"] == 1.5
    assert get_preset("ink").name == "ink"


def test_missing_user_dir_is_fine(tmp_path):
    assert "anime" in load_presets(tmp_path / "does-not-exist")


# ---------------------------------------------------------------------------------------------------------
# User presets


def test_user_preset_overrides_packaged_one(empty_user_dir):
    write(
        empty_user_dir,
        "my-anime.toml",
        'name = "anime"\naliases = ["漫画"]\nguidance = 5.0\nnegative = "photo"\n[styles]\nanime = 2.5\n',
    )
    presets = load_presets(empty_user_dir)
    anime = presets["anime"]
    assert anime.styles["anime"] == 2.5 and anime.guidance == 5.0 and anime.negative == "photo"
    assert anime.source == str(empty_user_dir / "my-anime.toml")
    assert get_preset("漫画", presets) is anime
    with pytest.raises(UsageError):  # the packaged preset's aliases went with it
        get_preset("动漫", presets)


def test_user_preset_adds_to_packaged_ones(empty_user_dir):
    write(empty_user_dir, "watercolor.toml", 'name = "watercolor"\naliases = ["水彩"]\n[styles]\nart = 3\n')
    write(empty_user_dir, "notes.txt", "not a preset")
    presets = load_presets(empty_user_dir)
    assert "watercolor" in presets and "anime" in presets
    assert get_preset("水彩", presets).styles == {"art": 3.0, "anime": 0.0, "photo": 0.0}


def test_a_bom_is_accepted(empty_user_dir):
    (empty_user_dir / "bom.toml").write_bytes('\ufeffname = "bom"\n'.encode("utf-8"))
    assert "bom" in load_presets(empty_user_dir)


# ---------------------------------------------------------------------------------------------------------
# Malformed presets: every error names the file and the field (or the line)

MALFORMED = [
    ("syntax", 'name = "x"\n[styles]\nart = \n', "line 3"),
    ("syntax-eof", 'name = "x"\naliases = ["a",\n', "end of file"),
    ("unknown-field", 'name = "x"\ncolour = "red"\n', "'colour'"),
    ("missing-name", "[styles]\nart = 1.0\n", "'name'"),
    ("name-type", "name = 3\n", "'name'"),
    ("name-with-comma", 'name = "a,b"\n', "'name'"),
    ("aliases-type", 'name = "x"\naliases = "y"\n', "'aliases'"),
    ("alias-type", 'name = "x"\naliases = ["ok", 4]\n', "'aliases[1]'"),
    ("styles-type", 'name = "x"\nstyles = 3\n', "'styles'"),
    ("unknown-branch", 'name = "x"\n[styles]\nwatercolor = 1.0\n', "'styles.watercolor'"),
    ("negative-scale", 'name = "x"\n[styles]\nanime = -1.0\n', "'styles.anime'"),
    ("string-scale", 'name = "x"\n[styles]\nphoto = "high"\n', "'styles.photo'"),
    ("bool-scale", 'name = "x"\n[styles]\nart = true\n', "'styles.art'"),
    ("nan-scale", 'name = "x"\n[styles]\nart = nan\n', "'styles.art'"),
    ("guidance-type", 'name = "x"\nguidance = "6"\n', "'guidance'"),
    ("guidance-negative", 'name = "x"\nguidance = -2.0\n', "'guidance'"),
    ("guidance-huge", 'name = "x"\nguidance = 500.0\n', "'guidance'"),
    ("negative-type", 'name = "x"\nnegative = ["blurry"]\n', "'negative'"),
    ("description-type", 'name = "x"\ndescription = "hi"\n', "'description'"),
    ("description-lang", 'name = "x"\n[description]\nfr = "bonjour"\n', "'description.fr'"),
    ("description-value", 'name = "x"\n[description]\nen = 3\n', "'description.en'"),
]


@pytest.mark.parametrize("case, text, field", MALFORMED, ids=[case for case, _, _ in MALFORMED])
def test_malformed_preset_names_file_and_field(empty_user_dir, case, text, field):
    path = write(empty_user_dir, f"{case}.toml", text)
    with pytest.raises(UsageError) as info:
        load_presets(empty_user_dir)
    assert str(path) in info.value.message
    assert field in info.value.message
    assert info.value.hint
    assert "\n" not in info.value.message


def test_non_utf8_file_is_named(empty_user_dir):
    path = empty_user_dir / "gbk.toml"
    path.write_bytes('name = "国画"\n'.encode("gbk"))
    with pytest.raises(UsageError) as info:
        load_presets(empty_user_dir)
    assert str(path) in info.value.message and "UTF-8" in info.value.message


def test_duplicate_names_in_one_folder(empty_user_dir):
    write(empty_user_dir, "a.toml", 'name = "ink"\n')
    write(empty_user_dir, "b.toml", 'name = "INK"\n')
    with pytest.raises(UsageError) as info:
        load_presets(empty_user_dir)
    assert "b.toml" in info.value.message and "a.toml" in info.value.message


def test_alias_clash_names_both_files(empty_user_dir):
    path = write(empty_user_dir, "manga.toml", 'name = "manga"\naliases = ["动漫"]\n[styles]\nanime = 3.0\n')
    with pytest.raises(UsageError) as info:
        load_presets(empty_user_dir)
    assert str(path) in info.value.message and "'aliases'" in info.value.message
    assert "anime.toml" in info.value.message


def test_parse_preset_fills_missing_branches():
    preset = parse_preset('name = "soft"\n[styles]\nart = 1\n', "soft.toml")
    assert preset == Preset(name="soft", styles={"art": 1.0, "anime": 0.0, "photo": 0.0}, source="soft.toml")
    assert isinstance(preset.styles["art"], float)


# ---------------------------------------------------------------------------------------------------------
# --style parsing and resolution


@pytest.mark.parametrize(
    "values, expected",
    [
        (["anime"], {"anime": 1.0}),
        (["anime", "photo=0.3"], {"anime": 1.0, "photo": 0.3}),
        (["anime=0.6,photo=0.3"], {"anime": 0.6, "photo": 0.3}),
        (["anime = 0.6 , photo=0.3,"], {"anime": 0.6, "photo": 0.3}),
        (["动漫=0.5，摄影"], {"anime": 0.5, "photo": 1.0}),  # Chinese alias and full-width comma
        (["ART=2"], {"art": 2.0}),
        (["none"], {"none": 1.0}),
        (["anime=0"], {"anime": 0.0}),
        ([], {}),
    ],
)
def test_parse_style_spec(presets, values, expected):
    spec = parse_style_spec(values, presets)
    assert spec == expected
    assert list(spec) == list(expected)  # order kept


@pytest.mark.parametrize(
    "values, in_message",
    [
        (["anim"], "anim"),
        (["anime=high"], "'high'"),
        (["anime=-1"], "≥ 0"),
        (["anime=nan"], "≥ 0"),
        (["=0.5"], "no style name"),
        ([""], "empty"),
        (["anime", "动漫=0.5"], "twice"),
    ],
)
def test_parse_style_spec_rejects(presets, values, in_message):
    with pytest.raises(UsageError) as info:
        parse_style_spec(values, presets)
    assert in_message in info.value.message
    assert info.value.hint


def test_resolution_arithmetic(presets):
    spec = parse_style_spec(["anime=0.6,photo=0.3", "illustration"], presets)
    resolved = resolve_styles(spec, presets)
    ill = presets["illustration"].styles
    assert resolved.scales == {
        "art": pytest.approx(ill["art"]),
        "anime": pytest.approx(0.6 * 4.0 + ill["anime"]),
        "photo": pytest.approx(0.3 * 4.0),
    }
    assert list(resolved.scales) == ["art", "anime", "photo"]
    half = resolve_styles(spec, presets, style_scale=0.5)
    assert half.scales == {branch: pytest.approx(scale / 2) for branch, scale in resolved.scales.items()}
    assert resolve_styles({"anime": 0.6}, presets).scales["anime"] == 2.4  # no 2.4000000000000004 in metadata


def test_resolution_of_nothing_and_of_none(presets):
    assert resolve_styles({}, presets).scales == {"art": 0.0, "anime": 0.0, "photo": 0.0}
    resolved = resolve_styles({"none": 1.0}, presets)
    assert resolved.active() == []
    assert resolved.guidance is None and resolved.negative is None


def test_active_branches_carry_triggers_in_reference_order(presets):
    resolved = resolve_styles({"photo": 1.0, "art": 0.5}, presets)
    assert resolved.active() == [("art", "義 ", 2.0), ("photo", "霙 ", 4.0)]


def test_guidance_and_negative_precedence(empty_user_dir):
    write(empty_user_dir, "a.toml", 'name = "a"\nguidance = 5.0\nnegative = "blurry"\n[styles]\nart = 1.0\n')
    write(empty_user_dir, "b.toml", 'name = "b"\nguidance = 7.5\nnegative = "lowres"\n[styles]\nanime = 1.0\n')
    write(empty_user_dir, "c.toml", 'name = "c"\nnegative = "blurry"\n[styles]\nphoto = 1.0\n')
    presets = load_presets(empty_user_dir)
    resolved = resolve_styles({"a": 1.0, "b": 1.0, "c": 1.0}, presets)
    assert resolved.guidance == 7.5  # the last preset that sets one
    assert resolved.negative == "blurry, lowres"  # joined in order, duplicates dropped
    assert resolve_styles({"b": 1.0, "a": 1.0}, presets).guidance == 5.0
    weightless = resolve_styles({"a": 1.0, "b": 0.0}, presets)  # weight 0 switches a preset off entirely
    assert weightless.guidance == 5.0 and weightless.negative == "blurry"
    assert weightless.to_dict()["spec"] == {"a": 1.0, "b": 0.0}


def test_resolve_accepts_aliases_and_rejects_bad_scale(presets):
    assert resolve_styles({"动漫": 1.0}, presets).scales["anime"] == 4.0
    with pytest.raises(UsageError):
        resolve_styles({"anime": 1.0}, presets, style_scale=-1.0)
    with pytest.raises(UsageError):
        resolve_styles({"nope": 1.0}, presets)
