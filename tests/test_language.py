from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pangu_cli import language
from pangu_cli.errors import UsageError
from pangu_cli.language import Detection, Span, detect, normalize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Keep jieba's dictionary cache out of the real home; start from a cold tokenizer."""
    cache = tmp_path_factory.mktemp("cache")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    language._tokenizer = None
    yield cache
    language._tokenizer = None
    if saved is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = saved


# (input, normalised text, overall lang, [(span text, span lang), ...])
GOLDEN = [
    ("一只猫坐在沙发上", "一只猫坐在沙发上", "zh", [("一只猫坐在沙发上", "zh")]),
    ("a cat sitting on a sofa", "a cat sitting on a sofa", "en", [("a cat sitting on a sofa", "en")]),
    (
        "a red 圆形 on 蓝色背景",
        "a red 圆形 on 蓝色背景",
        "mixed",
        [("a red", "en"), ("圆形", "zh"), ("on", "en"), ("蓝色背景", "zh")],
    ),
    # full-width punctuation is ordinary Chinese punctuation inside a Chinese span: kept
    ("一只猫，坐在沙发上！", "一只猫，坐在沙发上！", "zh", [("一只猫，坐在沙发上！", "zh")]),
    ("ＡＢＣ", "ABC", "en", [("ABC", "en")]),
    # ... and becomes ASCII in a non-Chinese span
    ("ＡＢＣ１２３，ｈｅｌｌｏ！", "ABC123,hello!", "en", [("ABC123,hello!", "en")]),
    ("ＰａｎＧｕ画一只猫", "PanGu画一只猫", "mixed", [("PanGu", "en"), ("画一只猫", "zh")]),
    ("3只猫", "3只猫", "zh", [("3只猫", "zh")]),
    ("一只猫 2 dogs", "一只猫 2 dogs", "mixed", [("一只猫", "zh"), ("2 dogs", "en")]),
    ("🐱 cat", "🐱 cat", "en", [("🐱 cat", "en")]),
    ("猫🐱", "猫🐱", "zh", [("猫🐱", "zh")]),
    ("12345", "12345", "en", [("12345", "en")]),
    ("🎉 🎉", "🎉 🎉", "en", [("🎉 🎉", "en")]),
    # Japanese: kana anywhere in a run sends the run, kanji included, to the non-Chinese encoder
    ("ねこがすき", "ねこがすき", "en", [("ねこがすき", "en")]),
    ("猫が好き", "猫が好き", "en", [("猫が好き", "en")]),
    ("「猫」と犬", "「猫」と犬", "en", [("「猫」と犬", "en")]),
    ("ｶﾞｷﾞ", "ガギ", "en", [("ガギ", "en")]),  # half-width katakana composed to full width
    ("我喜欢猫。ねこがすき", "我喜欢猫。ねこがすき", "mixed", [("我喜欢猫。", "zh"), ("ねこがすき", "en")]),
    ("東京駅", "東京駅", "zh", [("東京駅", "zh")]),  # kanji-only Japanese cannot be told from Chinese
    ("一隻貓坐在沙發上", "一隻貓坐在沙發上", "zh", [("一隻貓坐在沙發上", "zh")]),  # Traditional Chinese
    (
        "穿着Nike运动鞋的女孩",
        "穿着Nike运动鞋的女孩",
        "mixed",
        [("穿着", "zh"), ("Nike", "en"), ("运动鞋的女孩", "zh")],
    ),
    ("iPhone15手机", "iPhone15手机", "mixed", [("iPhone15", "en"), ("手机", "zh")]),
    ("一个3D打印的猫", "一个3D打印的猫", "mixed", [("一个", "zh"), ("3D", "en"), ("打印的猫", "zh")]),
    ("猫（cat）", "猫(cat)", "mixed", [("猫", "zh"), ("(cat)", "en")]),
    ("猫 (a cat) 和狗", "猫 (a cat) 和狗", "mixed", [("猫", "zh"), ("(a cat)", "en"), ("和狗", "zh")]),
    ("他说：“hello world”", "他说：“hello world”", "mixed", [("他说：", "zh"), ("“hello world”", "en")]),
    ("cat，一只猫", "cat,一只猫", "mixed", [("cat,", "en"), ("一只猫", "zh")]),
    ("一只猫。A dog.", "一只猫。A dog.", "mixed", [("一只猫。", "zh"), ("A dog.", "en")]),
    (
        "  一只猫\t\n  on   the\u3000sofa  ",
        "一只猫 on the sofa",
        "mixed",
        [("一只猫", "zh"), ("on the sofa", "en")],
    ),
    ("안녕하세요 猫", "안녕하세요 猫", "mixed", [("안녕하세요", "en"), ("猫", "zh")]),
    ("Cafe\u0301 咖啡", "Café 咖啡", "mixed", [("Café", "en"), ("咖啡", "zh")]),  # NFC
    ("zero\u200bwidth\ufeff", "zerowidth", "en", [("zerowidth", "en")]),
]


@pytest.mark.parametrize("text, normalised, lang, spans", GOLDEN, ids=[row[0] for row in GOLDEN])
def test_golden(text, normalised, lang, spans):
    detection = detect(text)
    assert detection.text == normalised
    assert normalize(text) == normalised
    assert detection.lang == lang
    assert [(span.text, span.lang) for span in detection.spans] == spans
    previous_end = 0
    for span in detection.spans:
        assert detection.text[span.start : span.end] == span.text
        assert span.start >= previous_end
        previous_end = span.end


@pytest.mark.parametrize("text", [row[0] for row in GOLDEN])
def test_normalisation_is_idempotent_and_keeps_the_routing(text):
    once = detect(text)
    twice = detect(once.text)
    assert twice.text == once.text
    assert twice.spans == once.spans


def test_jieba_words_of_a_chinese_sentence():
    assert detect("一只猫坐在沙发上").words == ["一只", "猫", "坐在", "沙发", "上"]


def test_words_come_from_the_chinese_spans_only():
    detection = detect("a red 圆形 on 蓝色背景")
    assert detection.words == ["圆形", "蓝色", "背景"]
    assert detect("a cat on the sofa").words == []
    assert detect("猫が好き").words == []


def test_words_equal_plain_jieba(tmp_path):
    import jieba

    reference = jieba.Tokenizer()
    reference.tmp_dir = str(tmp_path)
    sentences = [
        "坐在海边看海浪的少年，黄昏",
        "一隻貓坐在沙發上",
        "故宫的红墙下，一位穿汉服的姑娘撑着油纸伞",
        "北京大学生前来应聘",
        "我来到北京清华大学",
        "赛博朋克风格的城市夜景，霓虹灯",
    ]
    for sentence in sentences:
        expected = [word for word in reference.lcut(sentence) if not word.isspace()]
        assert detect(sentence).words == expected


def test_dictionary_comes_from_the_lazy_cache_in_the_user_cache_dir(private_cache):
    detect("一只猫")
    assert type(language._tokenizer.FREQ).__name__ == "_FrequencyTable"
    cached = list((private_cache / "pangu").glob("jieba-*.sqlite3"))
    assert len(cached) == 1
    assert not list((private_cache / "pangu").glob("*.tmp"))


def test_unwritable_cache_falls_back_to_jieba_own_loading(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(language, "_tokenizer", None)
    assert detect("北京大学生前来应聘").words == ["北京", "大学生", "前来", "应聘"]
    assert isinstance(language._tokenizer.FREQ, dict)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(language, "_tokenizer", None)
    detect("一只猫")
    (db,) = (tmp_path / "pangu").glob("jieba-*.sqlite3")
    db.write_bytes(b"not a database at all" * 100)
    monkeypatch.setattr(language, "_tokenizer", None)
    assert detect("一只猫坐在沙发上").words == ["一只", "猫", "坐在", "沙发", "上"]
    assert type(language._tokenizer.FREQ).__name__ == "_FrequencyTable"


@pytest.mark.parametrize("text", ["", "   ", "\u3000\t\n", "\u200b\ufeff"])
def test_empty_prompt_is_a_usage_error(text):
    with pytest.raises(UsageError) as info:
        detect(text)
    assert info.value.exit_code == 2
    assert "empty" in info.value.message
    assert info.value.hint


def test_normalize_does_not_raise_on_empty():
    assert normalize("  \u3000 ") == ""


def test_to_dict_is_json_ready():
    detection = detect("一只猫 on the sofa")
    data = json.loads(json.dumps(detection.to_dict(), ensure_ascii=False))
    assert data == {
        "text": "一只猫 on the sofa",
        "lang": "mixed",
        "spans": [
            {"text": "一只猫", "lang": "zh", "start": 0, "end": 3},
            {"text": "on the sofa", "lang": "en", "start": 4, "end": 15},
        ],
        "words": ["一只", "猫"],
    }


def test_joined_gives_each_encoder_its_text():
    detection = detect("a red 圆形 on 蓝色背景")
    assert detection.joined("zh") == "圆形 蓝色背景"
    assert detection.joined("en") == "a red on"
    assert isinstance(detection, Detection) and isinstance(detection.spans[0], Span)


def _run(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_import_stays_light(private_cache):
    code = (
        "import sys\n"
        "from pangu_cli.language import detect\n"
        "detect('a cat on the sofa')\n"
        "assert 'jieba' not in sys.modules and 'sqlite3' not in sys.modules, 'English must not load jieba'\n"
        "print(detect('一只猫 on the sofa').words)\n"
        "heavy = {'mindspore', 'numpy', 'torch', 'pkg_resources'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = _run(code, private_cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['一只', '猫']"
    assert result.stderr == ""  # jieba's "Building prefix dict" chatter is silenced


def test_random_prompts_keep_every_invariant():
    """Idempotence, spans that index the text and cover every non-space character, on tricky mixtures."""
    import random

    pool = list("猫狗一只的ねこカタabcZé3 5.,，。！!?（）()「」“”：🐱ＡＢ１２\u3000ｶﾞ・ー-") + ["\u200b", "안", "\t"]
    rng = random.Random(1234)
    for _ in range(400):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 14)))
        if not normalize(text):
            continue
        once = detect(text)
        assert normalize(once.text) == once.text, text
        assert detect(once.text).spans == once.spans, text
        covered = set()
        for span in once.spans:
            assert once.text[span.start : span.end] == span.text and span.text == span.text.strip()
            covered.update(range(span.start, span.end))
        assert all(i in covered for i, ch in enumerate(once.text) if ch != " "), text
        assert [s.start for s in once.spans] == sorted(s.start for s in once.spans)
