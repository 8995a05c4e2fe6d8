"""Prompt language detection: normalise the text, split it into Chinese and non-Chinese spans.

The official model feeds every prompt to both text encoders; the spans drive the embedded model's encoder
routing, warnings, metadata and truncation reports.

Routing rules (each one decides something the encoders care about):
- Han characters (and bopomofo) make "zh" spans; Latin and every other letter-bearing script make "en"
  spans, "en" meaning "the non-Chinese encoder".
- Japanese: a run of Han + kana that contains any kana is routed to "en", kanji included. The Chinese
  encoder was trained on Chinese captions only, and kanji inside Japanese sentences carry Japanese grammar
  and often Japanese meanings (手紙 is a letter, not toilet paper); jieba would cut them as Chinese words. The
  English encoder (OpenCLIP, trained on multilingual web alt-text) is the better home. A run ends at a
  sentence terminator (。！？!?) or at a letter of another script, so "我喜欢猫。ねこがすき" splits into zh + en.
  Kanji-only Japanese cannot be told from Chinese and stays "zh".
- Digits, punctuation, symbols and emoji never decide a language: they attach to the neighbouring span.
  Between two spans of different language the boundary is the first space in the gap; with no space,
  punctuation stays with the text before it, while opening brackets/quotes and numbers move to the text after
  it ("猫（cat）", "3只猫"), except that a number glued to Latin letters stays with them ("iPhone15手机", "3D").
  Text with no letters at all (only digits/emoji) is "en".

Full-width characters (decided here, see `normalize`): full-width Latin letters and digits always become
ASCII ("ＡＢＣ１２３" → "ABC123"; the English tokenizer does not know the full-width forms and the Chinese
vocabulary maps them to the same pieces). Full-width punctuation is kept inside Chinese spans, where it is
ordinary Chinese punctuation ("一只猫，坐在沙发上！"), and becomes ASCII inside non-Chinese spans.

jieba is imported only when a Chinese span exists. Its dictionary (500 k entries) takes ~0.6 s to load from
jieba's own cache on our machines, which alone breaks the 0.3 s budget of `pangu detect`, so the dictionary is
stored once in an SQLite file in the user cache dir and read lazily: a prompt touches only the few hundred
entries it needs. Segmentation is jieba's own code and dictionary, so words equal `jieba.lcut`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pangu_cli.errors import UsageError

ZH = "zh"
EN = "en"
MIXED = "mixed"


@dataclass(frozen=True)
class Span:
    """A run of the normalised text routed to one encoder; `text == normalised[start:end]`."""

    text: str
    lang: str
    start: int
    end: int

    def to_dict(self) -> dict:
        return {"text": self.text, "lang": self.lang, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Detection:
    text: str  # the normalised prompt that the spans index into
    lang: str  # "zh", "en" or "mixed"
    spans: list[Span]
    words: list[str] = field(default_factory=list)  # jieba words of the zh spans, whitespace dropped

    def joined(self, lang: str) -> str:
        """The spans of one language, joined with spaces (what that language's encoder gets)."""
        return " ".join(span.text for span in self.spans if span.lang == lang)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "lang": self.lang,
            "spans": [span.to_dict() for span in self.spans],
            "words": list(self.words),
        }


# ---------------------------------------------------------------------------------------------------------
# Character classes

_SPACE, _NEUTRAL, _HAN, _KANA, _LETTER = range(5)

_HAN_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3005),  # 々 iteration mark
    (0x3007, 0x3007),  # 〇
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3038, 0x303B),
    (0x3100, 0x312F),  # bopomofo
    (0x31A0, 0x31EF),  # bopomofo extended, CJK strokes
    (0x3400, 0x4DBF),  # extension A
    (0x4E00, 0x9FFF),  # unified ideographs
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0x20000, 0x3FFFF),  # planes 2 and 3: extensions B-H, compatibility supplement
)
_KANA_RANGES = (
    (0x3041, 0x3096),  # hiragana
    (0x309D, 0x309F),
    (0x30A1, 0x30FA),  # katakana (without the ・ middle dot, which Chinese text uses too)
    (0x30FC, 0x30FF),
    (0x31F0, 0x31FF),  # katakana phonetic extensions
    (0xFF66, 0xFF9D),  # half-width katakana (normalised away, kept for raw input)
    (0x1B000, 0x1B16F),  # kana supplement / extended
)

# Opening brackets and quotes attach to the text after them; full-width forms and their ASCII twins must
# agree, so that converting punctuation in `normalize` never changes the routing.
_OPENING = set("([{（［｛「『【〔〖〘〚《〈“‘«‹")
# A Japanese/Chinese run ends here (full-width "．" is excluded: it turns into "." inside en spans).
_TERMINATORS = set("。！？!?")
# Full-width separators too: they turn into ASCII inside en spans, and the split must not move when they do.
_TRAILING_NUMBER = re.compile(r"\d+(?:[.,:/．，：／]\d+)*$")


def _in_ranges(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


def _char_class(ch: str) -> int:
    if ch.isspace():
        return _SPACE
    code = ord(ch)
    if code < 0x80:
        return _LETTER if ch.isalpha() else _NEUTRAL
    if _in_ranges(code, _HAN_RANGES):
        return _HAN
    if _in_ranges(code, _KANA_RANGES):
        return _KANA
    return _LETTER if unicodedata.category(ch).startswith("L") else _NEUTRAL


# ---------------------------------------------------------------------------------------------------------
# Normalisation

_DROPPED = dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff"), None)  # soft hyphen, zero-width space, BOM
_FULLWIDTH_ALNUM = {
    code: code - 0xFEE0
    for lo, hi in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
    for code in range(lo, hi + 1)
}
_FULLWIDTH_PUNCT = {
    code: code - 0xFEE0
    for lo, hi in ((0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF5E))
    for code in range(lo, hi + 1)
}
_HALFWIDTH_CJK = re.compile(r"[\uff61-\uff9f]+")  # ｡｢｣､ and half-width katakana


def _prepare(text: str) -> str:
    """Every normalisation step that does not depend on the spans."""
    text = text.translate(_DROPPED).translate(_FULLWIDTH_ALNUM)
    text = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc")
    text = _HALFWIDTH_CJK.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    # NFC last, so that a half-width voiced mark also combines with a full-width kana (タﾞ → ダ).
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())  # str.split also splits the ideographic space U+3000 and NBSP


def _normalize_and_route(text: str) -> tuple[str, list[tuple[int, int, str]]]:
    prepared = _prepare(text)
    routes = _route(prepared)
    chars = list(prepared)
    for start, end, lang in routes:
        if lang == EN:
            for i in range(start, end):
                chars[i] = chars[i].translate(_FULLWIDTH_PUNCT)
    # The conversion maps one character to one character of the same class: the routes stay valid.
    return "".join(chars), routes


def normalize(text: str) -> str:
    """NFC, invisible characters dropped, full-width letters/digits to ASCII, half-width kana to full width,
    full-width punctuation to ASCII outside Chinese spans, whitespace collapsed, stripped."""
    return _normalize_and_route(text)[0]


# ---------------------------------------------------------------------------------------------------------
# Routing


def _strong_langs(text: str, strong: list[tuple[int, int]]) -> list[str]:
    """Language of each letter-bearing character: en for other scripts, zh or en per Han/kana run."""
    langs = [EN] * len(strong)
    run: list[int] = []
    has_kana = False

    def close_run() -> None:
        for k in run:
            langs[k] = EN if has_kana else ZH
        run.clear()

    for k, (pos, cls) in enumerate(strong):
        if cls == _LETTER:
            close_run()
            continue
        if run and any(ch in _TERMINATORS for ch in text[strong[k - 1][0] + 1 : pos]):
            close_run()  # the previous strong character is in the run: no other script came between
        if not run:
            has_kana = False
        run.append(k)
        has_kana = has_kana or cls == _KANA
    close_run()
    return langs


def _split_gap(gap: str, left: str, right: str) -> int:
    """Where the text after a language change starts inside the neutral gap between two spans."""
    space = gap.find(" ")
    if space >= 0:
        return space
    split = len(gap)
    number = _TRAILING_NUMBER.search(gap)
    if number and not (right == ZH and number.start() == 0):  # a number glued to Latin stays Latin
        split = number.start()
    while split > 0 and gap[split - 1] in _OPENING:
        split -= 1
    return split


def _route(text: str) -> list[tuple[int, int, str]]:
    """(start, end, lang) spans of a prepared text, trimmed of spaces, in order."""
    if not text:
        return []
    strong = [(i, cls) for i, ch in enumerate(text) if (cls := _char_class(ch)) in (_HAN, _KANA, _LETTER)]
    if not strong:
        return [(0, len(text), EN)]
    langs = _strong_langs(text, strong)
    bounds, span_langs = [0], [langs[0]]
    for (p, _), (q, _), left, right in zip(strong, strong[1:], langs, langs[1:]):
        if left != right:
            bounds.append(p + 1 + _split_gap(text[p + 1 : q], left, right))
            span_langs.append(right)
    bounds.append(len(text))
    spans = []
    for start, end, lang in zip(bounds, bounds[1:], span_langs):
        while text[start] == " ":
            start += 1
        while text[end - 1] == " ":
            end -= 1
        spans.append((start, end, lang))
    return spans


# ---------------------------------------------------------------------------------------------------------
# Detection


def detect(text: str) -> Detection:
    """Normalise `text`, split it into zh/en spans and segment the zh spans with jieba."""
    normalised, routes = _normalize_and_route(text)
    if not normalised:
        raise UsageError(
            "the prompt is empty",
            'write what to draw, e.g. "一只猫 on the sofa" (whitespace and invisible characters do not count)',
        )
    spans = [Span(normalised[start:end], lang, start, end) for start, end, lang in routes]
    zh_spans = [span for span in spans if span.lang == ZH]
    words = _segment([span.text for span in zh_spans]) if zh_spans else []
    if not zh_spans:
        lang = EN
    elif len(zh_spans) == len(spans):
        lang = ZH
    else:
        lang = MIXED
    return Detection(text=normalised, lang=lang, spans=spans, words=words)


# ---------------------------------------------------------------------------------------------------------
# jieba, loaded lazily

_tokenizer = None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pangu"


def _segment(texts: list[str]) -> list[str]:
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = _load_tokenizer()
    return [word for text in texts for word in _tokenizer.lcut(text) if not word.isspace()]


def segment_words(text: str) -> list[str]:
    """jieba words of `text` (whitespace dropped): what the embedded model's Chinese tokenizer reads."""
    return _segment([text]) if text.strip() else []


def _import_jieba():
    import sys

    # jieba 0.42 tries `import pkg_resources` (slow, deprecated) only to locate its data files and falls
    # back to paths next to its own module; make that import fail fast while jieba loads.
    blocked = "pkg_resources" not in sys.modules
    if blocked:
        sys.modules["pkg_resources"] = None  # type: ignore[assignment]
    try:
        import jieba
    finally:
        if blocked:
            del sys.modules["pkg_resources"]
    jieba.setLogLevel(30)  # WARNING: jieba logs every dictionary load to stderr at DEBUG
    return jieba


class _CacheUnavailable(Exception):
    pass


def _load_tokenizer():
    jieba = _import_jieba()
    tokenizer = jieba.Tokenizer()
    try:
        tokenizer.FREQ, tokenizer.total = _open_frequencies(jieba, tokenizer)
        tokenizer.initialized = True
    except _CacheUnavailable:  # read-only home, no sqlite3, odd install: jieba's own (slower) load
        cache = _cache_dir()
        tokenizer.tmp_dir = str(cache) if os.access(cache, os.W_OK) else None
        tokenizer.initialize()
    return tokenizer


def _open_frequencies(jieba, tokenizer):
    try:
        import sqlite3
    except ImportError as exc:
        raise _CacheUnavailable from exc
    try:
        dict_path = Path(jieba.__file__).with_name(jieba.DEFAULT_DICT_NAME)
        stat = dict_path.stat()
        name = f"jieba-{jieba.__version__}-{stat.st_size:x}-{int(stat.st_mtime):x}.sqlite3"
        db_path = _cache_dir() / name
        for _attempt in range(2):
            if not db_path.exists():
                _build_frequency_db(sqlite3, tokenizer, db_path)
            connection = sqlite3.connect(str(db_path), check_same_thread=False)
            try:
                row = connection.execute("SELECT value FROM meta WHERE key = 'total'").fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is not None:
                return _FrequencyTable(connection), row[0]
            connection.close()
            db_path.unlink(missing_ok=True)  # corrupt or foreign file: rebuild once
    except (OSError, sqlite3.Error) as exc:
        raise _CacheUnavailable from exc
    raise _CacheUnavailable


def _build_frequency_db(sqlite3, tokenizer, db_path: Path) -> None:
    import tempfile

    frequencies, total = tokenizer.gen_pfdict(tokenizer.get_dict_file())
    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=db_path.parent, prefix=".jieba-", suffix=".tmp")
    os.close(fd)
    try:
        connection = sqlite3.connect(tmp)
        with connection:
            connection.execute("CREATE TABLE freq (word TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
            connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            connection.executemany("INSERT INTO freq VALUES (?, ?)", frequencies.items())
            connection.execute("INSERT INTO meta VALUES ('total', ?)", (total,))
        connection.close()
        os.replace(tmp, db_path)  # atomic: concurrent first runs each write their own file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _FrequencyTable:
    """The read-only part of a dict that jieba's Tokenizer uses (`in`, `[]`, `get`), backed by SQLite."""

    def __init__(self, connection):
        self._connection = connection
        self._memo: dict[str, int | None] = {}

    def get(self, word: str, default=None):
        try:
            count = self._memo[word]
        except KeyError:
            row = self._connection.execute("SELECT n FROM freq WHERE word = ?", (word,)).fetchone()
            count = self._memo[word] = None if row is None else row[0]
        return default if count is None else count

    def __contains__(self, word: str) -> bool:
        return self.get(word) is not None

    def __getitem__(self, word: str) -> int:
        count = self.get(word)
        if count is None:
            raise KeyError(word)
        return count
