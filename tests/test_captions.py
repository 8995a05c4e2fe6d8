"""Bilingual captions: truthful words in each language, code-switching, template splits."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pangu_cli.training import captions as C
from pangu_cli.training.scenes import Scene, SceneObject, sample_scene

# Small independent word tables (what a reader of the caption would look for).
EN_COLOURS = {"red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "blue": "blue",
              "purple": "purple", "violet": "purple", "pink": "pink", "white": "white", "black": "black",
              "brown": "brown", "grey": "grey", "gray": "grey"}
EN_SHAPES = {"circle": "circle", "disc": "circle", "square": "square", "triangle": "triangle", "star": "star",
             "heart": "heart", "ring": "ring", "donut": "ring", "hoop": "ring", "diamond": "diamond",
             "rhombus": "diamond", "cross": "cross", "plus": "cross", "crescent": "moon", "moon": "moon",
             "hexagon": "hexagon", "fish": "fish"}
EN_STYLES = {"flat": "plain", "minimalist": "plain", "clip": "plain", "anime": "anime", "cartoon": "anime",
             "cel": "anime", "photo": "photo", "photograph": "photo", "photorealistic": "photo",
             "painting": "art", "painterly": "art", "brush": "art"}
ZH_COLOURS = {"红色": "red", "橙色": "orange", "橘色": "orange", "黄色": "yellow", "绿色": "green",
              "蓝色": "blue", "紫色": "purple", "粉色": "pink", "粉红色": "pink", "白色": "white",
              "黑色": "black", "棕色": "brown", "褐色": "brown", "咖啡色": "brown", "灰色": "grey"}
ZH_SHAPES = {"圆形": "circle", "圆": "circle", "圆盘": "circle", "正方形": "square", "方块": "square",
             "方形": "square", "三角形": "triangle", "三角": "triangle", "星星": "star", "五角星": "star",
             "星形": "star", "爱心": "heart", "心形": "heart", "心": "heart", "圆环": "ring", "环形": "ring",
             "菱形": "diamond", "十字": "cross", "十字形": "cross", "加号": "cross", "月牙": "moon",
             "弯月": "moon", "新月": "moon", "六边形": "hexagon", "六角形": "hexagon", "鱼": "fish"}
ZH_MEASURES = {"星星": "颗", "五角星": "颗", "爱心": "颗", "心": "颗", "鱼": "条", "月牙": "弯", "弯月": "弯",
               "新月": "弯"}
ZH_STYLES = {"简约": "plain", "扁平": "plain", "简笔画": "plain", "极简": "plain", "动漫": "anime",
             "二次元": "anime", "动画": "anime", "卡通": "anime", "照片": "photo", "摄影": "photo",
             "油画": "art", "绘画": "art"}
ZH_POSITIONS = {"左上角": "top-left", "左上方": "top-left", "上方": "top", "顶部": "top", "上方正中": "top",
                "右上角": "top-right", "右上方": "top-right", "左边": "left", "左侧": "left",
                "中间": "centre", "中央": "centre", "正中间": "centre", "右边": "right", "右侧": "right",
                "左下角": "bottom-left", "左下方": "bottom-left", "下方": "bottom", "底部": "bottom",
                "下方正中": "bottom", "右下角": "bottom-right", "右下方": "bottom-right"}


def _en_labels(text: str, table: dict[str, str]) -> list[str]:
    return [table[w] for w in re.findall(r"[a-z]+", text.lower()) if w in table]


def _zh_labels(text: str, table: dict[str, str]) -> list[str]:
    """Longest-match scan, so 圆环 is a ring and not a circle, 粉红色 pink and not red."""
    found = []
    words = sorted(table, key=len, reverse=True)
    i = 0
    while i < len(text):
        for word in words:
            if text.startswith(word, i):
                found.append(table[word])
                i += len(word)
                break
        else:
            i += 1
    return found


def _labels(text: str, en: dict[str, str], zh: dict[str, str]) -> list[str]:
    return _en_labels(text, en) + _zh_labels(text, zh)


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_template_counts_and_splits():
    for lang in C.LANGS:
        for kind, minimum in (("one", 12), ("two", 8)):
            assert len(C.template_ids(lang, kind, "train")) >= minimum, (lang, kind)
        train, heldout = set(C.TEMPLATE_SPLITS[lang]["train"]), set(C.TEMPLATE_SPLITS[lang]["heldout"])
        everything = {t.id for t in C.TEMPLATES.values() if t.lang == lang}
        assert not train & heldout and train | heldout == everything
        assert 0.15 <= len(heldout) / len(everything) <= 0.25
        for kind in ("one", "two"):
            assert C.template_ids(lang, kind, "heldout"), (lang, kind)
    assert C._heldout_ids() == C._HELDOUT  # deterministic: recomputing gives the same split


@pytest.mark.parametrize("lang", ["en", "zh", "mixed"])
def test_captions_name_the_right_colours_shapes_and_styles(lang):
    rng = np.random.default_rng(1)
    for scene in _scenes(400):
        text = C.caption(scene, lang, rng, style_prob=0.5)
        colours = _labels(text, EN_COLOURS, ZH_COLOURS)
        shapes = _labels(text, EN_SHAPES, ZH_SHAPES)
        styles = _labels(text, EN_STYLES, ZH_STYLES)
        true_colours = {scene.background} | {o.colour for o in scene.objects}
        assert set(colours) <= true_colours, text
        assert {o.colour for o in scene.objects} <= set(colours), text
        assert set(shapes) == {o.shape for o in scene.objects}, text
        assert set(styles) <= {scene.style}, text
        if lang == "en":
            assert not re.search(r"[\u3400-\u9fff]", text), text
        if lang == "zh":
            assert not re.search(r"[A-Za-z ]", text), text
        if lang == "mixed":
            assert re.search(r"[\u3400-\u9fff]", text) and re.search(r"[A-Za-z]", text), text
    for scene in _scenes(40, seed=2):  # asked to, the style is always named, in the right words
        text = C.caption(scene, lang, rng, style_prob=1.0)
        assert set(_labels(text, EN_STYLES, ZH_STYLES)) == {scene.style}, text


def test_english_positions_are_true():
    rng = np.random.default_rng(3)
    for scene in (s for s in _scenes(600) if len(s.objects) == 1):
        text = C.caption(scene, "en", rng, split="all", style_prob=0.0).lower()
        words = set(re.findall(r"[a-z]+", text))
        horizontal = "left" if "left" in words else "right" if "right" in words else ""
        vertical = "top" if words & {"top", "upper"} else "bottom" if words & {"bottom", "lower"} else ""
        expected = "-".join(p for p in (vertical, horizontal) if p) or "centre"
        assert expected == scene.objects[0].region, text
        if expected == "centre":
            assert words & {"centre", "center", "middle"}, text


def test_chinese_positions_and_measure_words_are_true():
    rng = np.random.default_rng(4)
    measures_seen = set()
    for scene in _scenes(600):
        text = C.caption(scene, "zh", rng, split="all", style_prob=0.0)
        if len(scene.objects) == 1:
            positions = set(_zh_labels(text, ZH_POSITIONS))
            assert positions == {scene.objects[0].region}, text
        for measure, rest in re.findall(r"一([个颗条弯])(\S+)", text):
            shape_words = [w for w in sorted(ZH_SHAPES, key=len, reverse=True) if w in rest]
            first = min(shape_words, key=lambda w: (rest.index(w), -len(w)))
            assert ZH_MEASURES.get(first, "个") == measure, text
            measures_seen.add(measure)
    assert measures_seen == {"个", "颗", "条", "弯"}


def test_relations_are_stated_in_the_right_direction():
    rng = np.random.default_rng(5)
    for scene in (s for s in _scenes(400) if s.relation is not None):
        inverse = C.INVERSE_RELATION[scene.relation]
        # "{A} {R} {B} on a {BG} background": A's shape word, then R, then B's shape word
        text, _ = C.caption_with_template(scene, "en", rng, style_prob=0.0, template_id="en-two-00")
        shapes = [(m.start(), EN_SHAPES[m.group()]) for m in re.finditer(r"[a-z]+", text.lower())
                  if m.group() in EN_SHAPES]
        (pos_a, shape_a), (pos_b, shape_b) = shapes[0], shapes[-1]
        middle = text.lower()[pos_a:pos_b]
        assert (shape_a, shape_b) == (scene.objects[0].shape, scene.objects[1].shape), text
        assert any(phrase in middle for phrase in C.EN_RELATION[scene.relation]), text
        assert not any(re.search(rf"\b{p}\b", middle) for p in C.EN_RELATION[inverse]), text
        # "{DA}在{DB}的{R}，背景是{BG}": relation word after 的
        text, _ = C.caption_with_template(scene, "zh", rng, style_prob=0.0, template_id="zh-two-01")
        words = "|".join(w for ws in C.ZH_RELATION.values() for w in ws)
        word = re.search(rf"的({words})，", text).group(1)
        assert word in C.ZH_RELATION[scene.relation], text


def _alternation(words) -> str:
    return "(?:" + "|".join(re.escape(re.sub(r"\s+", "", w)) for w in sorted(set(words), key=len, reverse=True)) + ")"


def _slot_patterns() -> dict[str, str]:
    """What each slot can hold (whitespace removed), from the caption vocabulary."""
    colour = _alternation([w for table in (C.EN_COLOUR, C.ZH_COLOUR) for ws in table.values() for w in ws])
    shape = _alternation([w for ws in C.EN_SHAPE.values() for w in ws]
                         + [w for ws in C.ZH_SHAPE.values() for w, _ in ws])
    size = _alternation([w for table in (C.EN_SIZE, C.ZH_SIZE) for ws in table.values() for w in ws]
                        + list(C.ZH_SIZE_REDUP.values()))
    noun_phrase = rf"(?:an?|the|一[个颗条弯])?(?:{size}的?)?{colour}的?{size}?{shape}"
    position = "在?" + _alternation([w for table in (C.EN_POSITION, C.EN_POSITION_BARE, C.ZH_POSITION)
                                     for ws in table.values() for w in ws])
    background = rf"a?{colour}(?:background|的?背景)?"
    relation = _alternation([w for table in (C.EN_RELATION, C.ZH_RELATION) for ws in table.values() for w in ws])
    return {"A": noun_phrase, "B": noun_phrase, "DA": noun_phrase, "DB": noun_phrase, "P": position,
            "PN": position, "PA": position, "PB": position, "BG": background, "R": relation, "RI": relation}


SLOTS = _slot_patterns()


def _frame_regex(template: C.Template) -> re.Pattern:
    """Whitespace-free regex of a template: its literal words exactly, each slot what it can hold."""
    pieces = re.split(r"\{([A-Z]+)\}", template.text)
    body = "".join(SLOTS[piece] if i % 2 else re.escape(re.sub(r"\s+", "", piece)) for i, piece in enumerate(pieces))
    return re.compile(body, re.IGNORECASE)


def _bare(text: str) -> str:
    return re.sub(r"\s+", "", text).rstrip(".。")


def test_heldout_templates_never_appear_in_train_captions():
    rng = np.random.default_rng(6)
    heldout = {lang: [C.TEMPLATES[t] for t in C.TEMPLATE_SPLITS[lang]["heldout"]] for lang in C.LANGS}
    for scene in _scenes(300):
        for lang in C.LANGS:
            text, tid = C.caption_with_template(scene, lang, rng, split="train", style_prob=0.0)
            assert tid in C.TEMPLATE_SPLITS[lang]["train"]
            bare = _bare(text)
            assert _frame_regex(C.TEMPLATES[tid]).fullmatch(bare), (tid, text)  # the regex test is live
            for template in heldout[lang]:
                assert not _frame_regex(template).fullmatch(bare), (template.id, tid, text)
            text, tid = C.caption_with_template(scene, lang, rng, split="heldout", style_prob=0.0)
            assert tid in C.TEMPLATE_SPLITS[lang]["heldout"]
            assert _frame_regex(C.TEMPLATES[tid]).fullmatch(_bare(text)), (tid, text)


def test_examples_from_the_issue_are_reachable():
    """Natural phrasings the issue asks for can actually be produced."""
    star = Scene("blue", (SceneObject("star", "yellow", "small", (0.16, 0.16), 0.11),), None, "plain")
    circle = Scene("blue", (SceneObject("circle", "red", "big", (0.16, 0.5), 0.2),), None, "plain")
    produced = set()
    rng = np.random.default_rng(7)
    for _ in range(3000):
        produced.add(C.caption(star, "zh", rng, split="all", style_prob=0.0).rstrip("。"))
        produced.add(C.caption(circle, "mixed", rng, split="all", style_prob=0.0))
    assert "一颗黄色的小星星位于画面左上角，背景是蓝色" in produced
    assert any(text.startswith("一个 red circle 在左边") for text in produced)
    assert any("蓝色背景" in text and "a red 圆形" in text for text in produced)


def test_captions_are_deterministic_and_validate_input():
    scene = _scenes(1, seed=9)[0]
    for lang in C.LANGS:
        a = C.caption(scene, lang, np.random.default_rng(1))
        assert a == C.caption(scene, lang, np.random.default_rng(1))
    with pytest.raises(ValueError):
        C.caption(scene, "fr", np.random.default_rng(0))
    with pytest.raises(ValueError):
        C.caption(scene, "en", np.random.default_rng(0), split="test")
    labels = C.attributes(scene)
    assert labels["background"] == scene.background


def test_tidy_spacing():
    assert C.tidy("一个red circle在左边") == "一个 red circle 在左边"
    assert C.tidy("a red 圆形 on 蓝色 背景 ，  anime style") == "a red 圆形 on 蓝色背景，anime style"
