"""Bilingual captions for synthetic scenes: English, Chinese and code-switched ("mixed").

Captions come from many paraphrase templates and word orders, and every caption is true of its scene
(the layout guarantees positions and relations). About 20% of the templates of each language and kind
are held out (`TEMPLATE_SPLITS`): training uses `split="train"`, evaluation of unseen phrasings uses
`split="heldout"`. The style may be named in words too, since it is also a numeric control.

Template slots: {A} {B} indefinite noun phrases ("a small red circle", "一颗黄色的小星星"),
{DA} {DB} definite ones ("the red circle", "红色的圆形"), {P} {PA} {PB} positions, {BG} background
colour, {R} relation of A to B, {RI} relation of B to A.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from .scenes import INVERSE_RELATION, Scene, SceneObject, attributes  # noqa: F401  (attributes re-exported)

LANGS: tuple[str, ...] = ("en", "zh", "mixed")
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
HELDOUT_FRACTION = 0.2

# ------------------------------------------------------------------------------------------ vocabulary
EN_COLOUR: dict[str, tuple[str, ...]] = {
    "red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
    "blue": ("blue",), "purple": ("purple", "violet"), "pink": ("pink",), "white": ("white",),
    "black": ("black",), "brown": ("brown",), "grey": ("grey", "gray"),
}
ZH_COLOUR: dict[str, tuple[str, ...]] = {
    "red": ("红色",), "orange": ("橙色", "橘色"), "yellow": ("黄色",), "green": ("绿色",),
    "blue": ("蓝色",), "purple": ("紫色",), "pink": ("粉色", "粉红色"), "white": ("白色",),
    "black": ("黑色",), "brown": ("棕色", "褐色", "咖啡色"), "grey": ("灰色",),
}
EN_SHAPE: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"), "square": ("square",), "triangle": ("triangle",),
    "star": ("star", "five-pointed star"), "heart": ("heart", "heart shape"),
    "ring": ("ring", "donut", "hoop"), "diamond": ("diamond", "rhombus"), "cross": ("cross", "plus sign"),
    "moon": ("crescent", "crescent moon", "moon"), "hexagon": ("hexagon",), "fish": ("fish",),
}
# (noun, measure word): 颗 for stars and hearts, 条 for fish, 弯 for a crescent, 个 otherwise.
ZH_SHAPE: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("圆形", "个"), ("圆", "个"), ("圆盘", "个")),
    "square": (("正方形", "个"), ("方块", "个"), ("方形", "个")),
    "triangle": (("三角形", "个"), ("三角", "个")),
    "star": (("星星", "颗"), ("五角星", "颗"), ("星形", "个")),
    "heart": (("爱心", "颗"), ("心形", "个")),  # not a bare 心: "小心" means "careful"
    "ring": (("圆环", "个"), ("环形", "个")),
    "diamond": (("菱形", "个"),),
    "cross": (("十字", "个"), ("十字形", "个"), ("加号", "个")),
    "moon": (("月牙", "弯"), ("弯月", "弯"), ("新月", "弯")),
    "hexagon": (("六边形", "个"), ("六角形", "个")),
    "fish": (("鱼", "条"),),
}
EN_SIZE: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "big": ("big", "large")}
ZH_SIZE: dict[str, tuple[str, ...]] = {"small": ("小",), "big": ("大",)}
ZH_SIZE_REDUP: dict[str, str] = {"small": "小小的", "big": "大大的"}

# Prepositional position phrases (English) and bare location words (Chinese, also used after 在/位于).
EN_POSITION: dict[str, tuple[str, ...]] = {
    "top-left": ("in the top-left corner", "at the top left", "in the upper left", "in the upper-left corner"),
    "top": ("at the top", "near the top", "at the top centre", "at the top center"),
    "top-right": ("in the top-right corner", "at the top right", "in the upper right", "in the upper-right corner"),
    "left": ("on the left", "on the left side", "at the left", "on the left-hand side"),
    "centre": ("in the centre", "in the center", "in the middle", "at the centre"),
    "right": ("on the right", "on the right side", "at the right", "on the right-hand side"),
    "bottom-left": ("in the bottom-left corner", "at the bottom left", "in the lower left",
                    "in the lower-left corner"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom centre", "at the bottom center"),
    "bottom-right": ("in the bottom-right corner", "at the bottom right", "in the lower right",
                     "in the lower-right corner"),
}
EN_POSITION_BARE: dict[str, tuple[str, ...]] = {
    "top-left": ("top left", "top-left", "upper left"),
    "top": ("top", "top centre", "top middle"),
    "top-right": ("top right", "top-right", "upper right"),
    "left": ("left", "left side"),
    "centre": ("centre", "center", "middle"),
    "right": ("right", "right side"),
    "bottom-left": ("bottom left", "bottom-left", "lower left"),
    "bottom": ("bottom", "bottom centre", "bottom middle"),
    "bottom-right": ("bottom right", "bottom-right", "lower right"),
}
ZH_POSITION: dict[str, tuple[str, ...]] = {
    "top-left": ("左上角", "左上方"),
    "top": ("上方", "顶部", "上方正中"),
    "top-right": ("右上角", "右上方"),
    "left": ("左边", "左侧"),
    "centre": ("中间", "中央", "正中间"),
    "right": ("右边", "右侧"),
    "bottom-left": ("左下角", "左下方"),
    "bottom": ("下方", "底部", "下方正中"),
    "bottom-right": ("右下角", "右下方"),
}
EN_RELATION: dict[str, tuple[str, ...]] = {
    "above": ("above", "over"), "below": ("below", "under", "beneath"),
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
}
ZH_RELATION: dict[str, tuple[str, ...]] = {
    "above": ("上方", "上面", "上边"), "below": ("下方", "下面", "下边"),
    "left_of": ("左边", "左侧", "左方"), "right_of": ("右边", "右侧", "右方"),
}
EN_STYLE: dict[str, tuple[str, ...]] = {
    "plain": ("flat colours", "flat vector style", "minimalist flat illustration", "clip art"),
    "anime": ("anime style", "in anime style", "anime art", "cel-shaded cartoon", "cartoon style with bold outlines"),
    "photo": ("photo", "photograph", "photorealistic", "realistic photo", "studio photo with soft shadows"),
    "art": ("oil painting", "painterly style", "impressionist painting", "in the style of an oil painting",
            "visible brush strokes"),
}
EN_STYLE_PREFIX: dict[str, tuple[str, ...]] = {
    "plain": ("a flat illustration of", "clip art of", "a minimalist drawing of"),
    "anime": ("an anime drawing of", "an anime illustration of", "a cartoon of"),
    "photo": ("a photo of", "a photograph of", "a realistic photo of"),
    "art": ("an oil painting of", "a painting of", "an impressionist painting of"),
}
ZH_STYLE: dict[str, tuple[str, ...]] = {
    "plain": ("简约扁平风格", "扁平插画", "纯色简笔画", "极简图形"),
    "anime": ("动漫风格", "二次元风格", "日系动画风格", "卡通风格"),
    "photo": ("照片", "摄影风格", "写实照片", "真实感摄影"),
    "art": ("油画风格", "艺术绘画风格", "印象派油画", "笔触感油画"),
}


# ------------------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class Template:
    id: str
    lang: str  # "en" | "zh" | "mixed"
    kind: str  # "one" (one object) | "two" (two objects and a relation)
    frame: str  # "en" | "zh": the language of the literal words, which decides slot grammar
    text: str

    @property
    def np_initial(self) -> bool:
        """Starts with an indefinite noun phrase, so "a photo of …" can be put in front."""
        return self.frame == "en" and self.text.startswith("{A}")


_EN_ONE = (
    "{A} {P} on a {BG} background",
    "{A} {P}, {BG} background",
    "a {BG} background with {A} {P}",
    "{P}, there is {A} on a {BG} background",
    "there is {A} {P} against a {BG} backdrop",
    "{A} placed {P} of a solid {BG} canvas",
    "image of {A}, {PN}, {BG} background",
    "{BG} background, {A} {P}",
    "{A} sits {P}; the background is {BG}",
    "{PN}: {A}. background: {BG}",
    "draw {A} {P} on a {BG} background",
    "{A} that appears {P}, with a {BG} background",
    "the picture shows {A} {P} over a uniform {BG} background",
    "{BG} backdrop; {A} located {P}",
    "{A} {P}",
    "you can see {A} {P} of the frame",
)
_EN_TWO = (
    "{A} {R} {B} on a {BG} background",
    "{A} {R} {B}, {BG} background",
    "{B} {RI} {A}, on a {BG} background",
    "a {BG} background with {A} {R} {B}",
    "there is {A} {R} {B}",
    "{A} and {B}; {DA} is {R} {DB}. background: {BG}",
    "two shapes on a {BG} background: {A} and {B}, with {DA} {R} {DB}",
    "{A} placed {R} {B} against a {BG} backdrop",
    "{B} with {A} {R} it, {BG} background",
    "{A} {PA} and {B} {PB} on a {BG} background",
    "{BG} background; {A} is {R} {B}",
    "draw {A} {PA} and {B} {PB}; {DA} is {R} {DB}",
)
_ZH_ONE = (
    "{BG}背景上，{P}有{A}",
    "{A}位于画面{P}，背景是{BG}",
    "在{BG}的背景上，{P}画着{A}",
    "画面{P}有{A}，{BG}背景",
    "{BG}底色，{A}在{P}",
    "{P}是{A}，背景为{BG}",
    "一张{BG}背景的图片，{P}有{A}",
    "{A}，位于{P}，{BG}背景",
    "在画面的{P}画{A}，背景涂成{BG}",
    "背景是{BG}的，{A}出现在{P}",
    "{BG}背景，{P}，{A}",
    "{A}在{BG}背景的{P}",
    "请画{A}在{P}，{BG}背景",
    "{P}有{A}",
    "{A}放在画面{P}",
    "画面中，{A}位于{P}，底色是{BG}",
)
_ZH_TWO = (
    "{BG}背景上，{DB}的{R}有{A}",
    "{DA}在{DB}的{R}，背景是{BG}",
    "{DB}的{R}是{A}，{BG}背景",
    "{A}位于{B}的{R}",
    "画面中有{A}和{B}，{DA}在{DB}{R}",
    "{PA}是{A}，{PB}是{B}，背景为{BG}",
    "{BG}背景上画着{A}，它的{RI}有{B}",
    "在{B}的{R}画{A}，{BG}底色",
    "{DA}和{DB}，前者在后者的{R}，底色为{BG}",
    "{BG}的背景，{A}在{PA}，{B}在{PB}",
)
_MIXED_ONE = (
    ("en", "{A} {P} on {BG}"),
    ("zh", "{A}在{P}"),
    ("en", "{A} {P}, {BG}"),
    ("zh", "{BG}上有{A}，在{P}"),
    ("en", "there is {A} {P} on {BG}"),
    ("zh", "{P}有{A}，{BG}"),
    ("en", "{BG}, {A} {P}"),
    ("zh", "{A}位于{P}，{BG}"),
    ("en", "draw {A} {P}, {BG}"),
    ("zh", "在{BG}上画{A}，放在{P}"),
    ("en", "{A} on {BG}, {PN}"),
    ("zh", "画面{P}：{A}，{BG}"),
    ("en", "{PN}: {A} on {BG}"),
    ("zh", "{BG}，{A}出现在{P}"),
    ("en", "a picture of {A} {P} on {BG}"),
    ("zh", "{P}画着{A}，底色是{BG}"),
)
_MIXED_TWO = (
    ("en", "{A} {R} {B} on {BG}"),
    ("zh", "{DA}在{DB}的{R}，{BG}"),
    ("en", "{B} {RI} {A}, {BG}"),
    ("zh", "{BG}上，{DB}的{R}有{A}"),
    ("en", "{A} and {B} on {BG}, {DA} {R} {DB}"),
    ("zh", "{PA}是{A}，{PB}是{B}"),
    ("en", "{A} {PA}, {B} {PB}, {BG}"),
    ("zh", "{A}位于{B}的{R}，{BG}"),
    ("en", "on {BG}: {A} is {R} {B}"),
    ("zh", "画面中{A}和{B}，{DA}在{DB}{R}"),
)


def _build_templates() -> dict[str, Template]:
    templates: dict[str, Template] = {}
    for lang, kind, texts in (("en", "one", _EN_ONE), ("en", "two", _EN_TWO),
                              ("zh", "one", _ZH_ONE), ("zh", "two", _ZH_TWO)):
        for i, text in enumerate(texts):
            tid = f"{lang}-{kind}-{i:02d}"
            templates[tid] = Template(tid, lang, kind, lang, text)
    for kind, entries in (("one", _MIXED_ONE), ("two", _MIXED_TWO)):
        for i, (frame, text) in enumerate(entries):
            tid = f"mixed-{kind}-{i:02d}"
            templates[tid] = Template(tid, "mixed", kind, frame, text)
    return templates


TEMPLATES: dict[str, Template] = _build_templates()


def _heldout_ids() -> set[str]:
    """≈20% of each (language, kind), picked by a fixed hash of the template text: deterministic across
    runs and machines, and independent of the order templates are listed in."""
    heldout: set[str] = set()
    for lang in LANGS:
        for kind in ("one", "two"):
            group = [t for t in TEMPLATES.values() if t.lang == lang and t.kind == kind]
            group.sort(key=lambda t: hashlib.sha256(t.text.encode()).hexdigest())
            heldout.update(t.id for t in group[: max(1, round(HELDOUT_FRACTION * len(group)))])
    return heldout


_HELDOUT = _heldout_ids()
TEMPLATE_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    lang: {
        "train": tuple(t.id for t in TEMPLATES.values() if t.lang == lang and t.id not in _HELDOUT),
        "heldout": tuple(t.id for t in TEMPLATES.values() if t.lang == lang and t.id in _HELDOUT),
    }
    for lang in LANGS
}


# ----------------------------------------------------------------------------------------------- filling
def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


class _Words:
    """Per-caption lexical choices for one object, kept consistent across its slots."""

    def __init__(self, obj: SceneObject, rng: np.random.Generator, mixed: bool) -> None:
        self.obj = obj
        self.colour_lang = _pick(rng, ("en", "zh")) if mixed else None
        self.shape_lang = _pick(rng, ("en", "zh")) if mixed else None
        self.en_colour = _pick(rng, EN_COLOUR[obj.colour])
        self.zh_colour = _pick(rng, ZH_COLOUR[obj.colour])
        self.en_shape = _pick(rng, EN_SHAPE[obj.shape])
        self.zh_shape, self.measure = _pick(rng, ZH_SHAPE[obj.shape])
        self.with_size = rng.random() < 0.8
        self.en_size = _pick(rng, EN_SIZE[obj.size])
        self.zh_size = _pick(rng, ZH_SIZE[obj.size])
        self.zh_form = int(rng.integers(4))  # Chinese noun-phrase word order
        self.zh_de = rng.random() < 0.6  # "红色的圆形" vs "红色圆形"

    def _lang(self, frame: str, which: str) -> str:
        chosen = self.colour_lang if which == "colour" else self.shape_lang
        return chosen or frame

    def noun_phrase(self, frame: str, definite: bool) -> str:
        colour_lang, shape_lang = self._lang(frame, "colour"), self._lang(frame, "shape")
        colour = self.en_colour if colour_lang == "en" else self.zh_colour
        shape = self.en_shape if shape_lang == "en" else self.zh_shape
        if frame == "en":
            words = ([self.en_size] if self.with_size else []) + [colour, shape]
            body = " ".join(words)
            if definite:
                return "the " + body
            return ("an " if body[0] in "aeiou" else "a ") + body
        # Chinese grammar: [一 + measure] + colour(+的) + size + noun, in a few natural orders.
        de = "的" if colour_lang == "zh" and self.zh_de else " "
        size = self.zh_size if self.with_size else ""
        if not self.with_size or self.zh_form <= 1:  # 一颗黄色的小星星 / 红色的大圆形
            body = f"{colour}{de}{size}{shape}"
        elif self.zh_form == 2:  # 一个大的红色圆形
            body = f"{size}的{colour} {shape}"
        else:  # 一个小小的红色圆形
            body = f"{ZH_SIZE_REDUP[self.obj.size]}{colour} {shape}"
        if definite:
            return body
        measure = self.measure if shape_lang == "zh" else "个"
        return f"一{measure}{body}"


class _Filler:
    def __init__(self, scene: Scene, template: Template, rng: np.random.Generator) -> None:
        self.scene, self.template, self.rng = scene, template, rng
        self.mixed = template.lang == "mixed"
        self.words = [_Words(obj, rng, self.mixed) for obj in scene.objects]

    def slot_lang(self) -> str:
        """Mixed captions switch language slot by slot; others stay in the frame's language."""
        return _pick(self.rng, ("en", "zh")) if self.mixed else self.template.frame

    def position(self, obj: SceneObject, bare: bool) -> str:
        frame, lang, region = self.template.frame, self.slot_lang(), obj.region
        if lang == "zh":
            word = _pick(self.rng, ZH_POSITION[region])
            return word if bare or frame == "zh" else "在" + word  # "a red circle 在左边"
        if frame == "zh":  # "一个红色圆形在 top left"
            return f" {_pick(self.rng, EN_POSITION_BARE[region])} "
        return _pick(self.rng, EN_POSITION_BARE[region] if bare else EN_POSITION[region])

    def background(self) -> str:
        frame, name = self.template.frame, self.scene.background
        if not self.mixed:
            return _pick(self.rng, EN_COLOUR[name] if frame == "en" else ZH_COLOUR[name])
        # Mixed templates name the background as a whole phrase ("蓝色背景", "a blue background").
        en, zh = _pick(self.rng, EN_COLOUR[name]), _pick(self.rng, ZH_COLOUR[name])
        if self.slot_lang() == "en":
            return f"a {en} background" if frame == "en" else f" {en} background "
        options = (f"{zh}背景", f"{zh}的背景") + ((f"{zh} background",) if frame == "en" else ())
        return _pick(self.rng, options)

    def relation(self, relation: str) -> str:
        # Relation words carry the frame's grammar ("A 在 B 的上方", "A above B"): keep them in its language.
        table = EN_RELATION if self.template.frame == "en" else ZH_RELATION
        return _pick(self.rng, table[relation])

    def fill(self) -> str:
        frame, words, objects = self.template.frame, self.words, self.scene.objects
        slots = {
            "A": words[0].noun_phrase(frame, definite=False),
            "DA": words[0].noun_phrase(frame, definite=True),
        }
        if len(objects) == 1:
            slots["P"] = self.position(objects[0], bare=frame == "zh")
            slots["PN"] = self.position(objects[0], bare=True)
        else:
            slots["B"] = words[1].noun_phrase(frame, definite=False)
            slots["DB"] = words[1].noun_phrase(frame, definite=True)
            slots["PA"] = self.position(objects[0], bare=frame == "zh")
            slots["PB"] = self.position(objects[1], bare=frame == "zh")
            slots["R"] = self.relation(self.scene.relation)
            slots["RI"] = self.relation(INVERSE_RELATION[self.scene.relation])
        slots["BG"] = self.background()
        return self.template.text.format(**slots)


_CJK = r"\u3400-\u9fff"
_CJK_PUNCT = r"\u3000-\u303f\uff00-\uffef"


def tidy(text: str) -> str:
    """Normalise spacing of (possibly code-switched) text: a space between Latin and Han words, none
    between Han characters or around full-width punctuation, single spaces elsewhere."""
    text = re.sub(rf"([{_CJK}])(?=[A-Za-z0-9])", r"\1 ", text)
    text = re.sub(rf"([A-Za-z0-9])(?=[{_CJK}])", r"\1 ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(rf"(?<=[{_CJK}{_CJK_PUNCT}]) (?=[{_CJK}{_CJK_PUNCT}])", "", text)
    text = re.sub(rf" (?=[{_CJK_PUNCT}])|(?<=[{_CJK_PUNCT}]) ", "", text)
    return re.sub(r" ([,.;:])", r"\1", text)


def _with_style(text: str, scene: Scene, template: Template, rng: np.random.Generator) -> str:
    """Name the style in words: in front ("a photo of …", "动漫风格，…") or after the description."""
    style = scene.style
    lang = template.frame if template.lang != "mixed" else _pick(rng, ("en", "zh"))
    comma = ", " if template.frame == "en" else "，"
    if lang == "en":
        if template.np_initial and rng.random() < 0.4:
            return f"{_pick(rng, EN_STYLE_PREFIX[style])} {text}"
        if template.frame == "en" and rng.random() < 0.3:
            return f"{_pick(rng, EN_STYLE[style])}: {text}"
        return f"{text}{comma}{_pick(rng, EN_STYLE[style])}"
    words = _pick(rng, ZH_STYLE[style])
    return f"{words}{comma}{text}" if rng.random() < 0.3 else f"{text}{comma}{words}"


def _finish(text: str, template: Template, rng: np.random.Generator) -> str:
    text = tidy(text)
    if template.frame == "en":
        if rng.random() < 0.5:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.3:
            text += "."
    elif rng.random() < 0.3:
        text += "。"
    return text


def template_ids(lang: str, kind: str, split: str = "train") -> tuple[str, ...]:
    """Template ids usable for a language, scene kind ("one"/"two") and split."""
    if lang not in LANGS or split not in SPLITS:
        raise ValueError(f"lang must be one of {LANGS} and split one of {SPLITS}")
    pool = TEMPLATE_SPLITS[lang]["train"] + TEMPLATE_SPLITS[lang]["heldout"] if split == "all" \
        else TEMPLATE_SPLITS[lang][split]
    return tuple(tid for tid in pool if TEMPLATES[tid].kind == kind)


def caption_with_template(
    scene: Scene,
    lang: str = "en",
    rng: np.random.Generator | None = None,
    split: str = "train",
    style_prob: float = 0.4,
    template_id: str | None = None,
) -> tuple[str, str]:
    """(caption, id of the template used). template_id forces one template (it must fit the scene)."""
    rng = rng if rng is not None else np.random.default_rng()
    kind = "one" if len(scene.objects) == 1 else "two"
    if len(scene.objects) not in (1, 2) or (kind == "two" and scene.relation is None):
        raise ValueError("captions cover scenes with one object, or two objects and a relation")
    if template_id is None:
        template_id = _pick(rng, template_ids(lang, kind, split))
    template = TEMPLATES[template_id]
    if template.kind != kind:
        raise ValueError(f"template {template_id} is for {template.kind}-object scenes")
    text = _Filler(scene, template, rng).fill()
    if template.lang == "mixed":
        text = _ensure_both_scripts(text, scene, template, rng)
    if rng.random() < style_prob:
        text = _with_style(text, scene, template, rng)
    return _finish(text, template, rng), template_id


def _has_han(text: str) -> bool:
    return re.search(rf"[{_CJK}]", text) is not None


def _has_latin(text: str) -> bool:
    return re.search(r"[A-Za-z]", text) is not None


def _ensure_both_scripts(text: str, scene: Scene, template: Template, rng: np.random.Generator) -> str:
    """Redraw slot languages until a mixed caption really switches scripts (rarely needs more than 2)."""
    for _ in range(64):
        if _has_han(text) and _has_latin(text):
            return text
        text = _Filler(scene, template, rng).fill()
    # Fall back to a guaranteed switch: the first object's shape in the other script.
    filler = _Filler(scene, template, rng)
    filler.words[0].shape_lang = "zh" if template.frame == "en" else "en"
    filler.words[0].colour_lang = filler.words[0].shape_lang
    return filler.fill()


def caption(
    scene: Scene,
    lang: str = "en",
    rng: np.random.Generator | None = None,
    split: str = "train",
    style_prob: float = 0.4,
) -> str:
    """A caption of the scene in "en", "zh" or "mixed" (code-switched), from the split's templates."""
    return caption_with_template(scene, lang, rng, split, style_prob)[0]
