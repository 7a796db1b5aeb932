"""Checks that a semantic neighbour asks for the same answer, beyond what the embedding sees.

Why: sentence embeddings score "reverse a list in Python" and "reverse a list in JavaScript" at
~0.9, above most true paraphrases (measured on ../shared/semcache/dev.jsonl: at cosine 0.80 a plain
threshold serves 60% of the hard negatives). Look-alikes differ in a few answer-determining
details: a number, a negation, a unit, a named thing, a requested format or language, an added
qualifier. Paraphrases reword the *frame* of a question (could you / how do I / pls) and keep those
details. So a neighbour is accepted only when the details of both texts match:

- numbers (digits, fractions and number words, `3-day` = `three day`) are equal, repeats counted;
- negation cues (not, no, without, except, avoid, ...) are equal as sets;
- every content word (stemmed, case-insensitive, outside a list of conversational frame words) of
  each text appears in the other, or is a known synonym of one that does; symbols such as `===` or
  `C++` count as content;
- the two sides of a directional word keep their places ("Celsius to Fahrenheit").

The checks are deliberately strict: a guard that rejects a true paraphrase costs one generation; a
guard that accepts a look-alike serves a wrong answer. `bench/cache_eval.py` measures both.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import snowballstemmer

_STEMMER = snowballstemmer.stemmer("english")

# Words that frame a request without changing what is asked: auxiliaries, pronouns, politeness,
# question words and generic verbs of asking. Both texts may freely differ in these.
FRAME_WORDS = frozenset(
    """
    a an the and or but so to of in on at by for from with into onto as is are was were be been being
    am do does did doing done have has had having can could would should shall will may might must
    i me my mine we us our you your yours it its this that these those there here they them
    their what whats which who whom whose how why when where whether if then than
    please pls plz kindly thanks thank hi hello hey ok okay just really actually also maybe
    show tell explain give help want need know let like get got make way ways some any thing things
    something anything able possible exactly simply quick quickly briefly basically
    question ask asking wondering curious idea best good between
    use using used
    s t d ll re ve m
    """.split()
)

# Cues that flip or restrict meaning; compared as a set, never stripped. Plain negation has many
# spellings ("no sugar", "without sugar", "don't use sugar"): those all count as one cue, "not".
_PLAIN_NEGATION = frozenset(
    """
    not no never none nothing nobody nowhere neither nor without cannot cant dont doesnt didnt isnt
    arent wasnt werent wont wouldnt shouldnt couldnt lack lacking
    """.split()
)
NEGATION_CUES = _PLAIN_NEGATION | frozenset("except excluding exclude avoid non un anti instead only".split())

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000,
    "dozen": 12, "half": 0.5, "quarter": 0.25, "twice": 2, "double": 2, "triple": 3,
    "first": 1, "second": 2, "third": 3,
}

# Small, explicit synonym groups for frame-adjacent words that paraphrases swap. Entities, units,
# languages and formats are never listed here: those must match literally.
SYNONYM_GROUPS = (
    "differ difference different distinguish vs versus compare comparison",
    "fix repair solve resolve",
    "write create build implement",
    "function func method",
    "program script",
    "check test determine verify",
    "meaning mean means definition define",
    "rid remove delete eliminate clear",
    "big large huge",
    "small little tiny",
    "fast quick rapid speedy",
    "start begin",
    "stop end finish",
    "buy purchase",
    "cost price expensive cheap",
    "kid child children",
    "car vehicle auto",
    "doctor physician",
    "recommend suggest",
    "example instance sample",
)

_WORD = re.compile(r"\d+/\d+|[a-z0-9]+(?:[.'][a-z0-9]+)*|[=!<>+*/%&|^~#@$]{1,4}| - ")
# Words whose two sides are not interchangeable.
_DIRECTIONAL = frozenset({"to", "into", "from", "for", "than", "over", "instead", "per", "vs"})
_MATH = re.compile(r"[=+*^]")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_FRACTION = re.compile(r"^(\d+)/(\d+)$")


def normalize(text: str) -> str:
    """Case-folded, unicode-normalized text with quotes unified: the form every check reads."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _STEMMER.stemWord(word)


def _build_synonyms() -> dict[str, str]:
    table: dict[str, str] = {}
    for group in SYNONYM_GROUPS:
        words = group.split()
        for w in words:
            table[_stem(w)] = _stem(words[0])
    return table


_SYNONYMS = _build_synonyms()


@dataclass(frozen=True)
class Details:
    """The answer-determining details of one text."""

    numbers: tuple  # sorted, with repeats: "1 cup, 1/2 cup" is not "1 cup, 1 cup"
    negations: frozenset
    content: frozenset = field(default_factory=frozenset)
    # For each content word, the segments (between directional words such as "to", "for",
    # "from") it appears in: "Tokyo to New York" is not "New York to Tokyo".
    segments: tuple = ()


def _tokens(text: str) -> list[str]:
    text = normalize(text)
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)  # 10,000 -> 10000
    text = re.sub(r"n't\b", " not", text)
    return _WORD.findall(text)


@lru_cache(maxsize=65536)
def details(text: str) -> Details:
    numbers, negations, content = [], set(), set()
    segment, segments = 0, {}
    math = bool(_MATH.search(text))
    for tok in _tokens(text):
        tok = tok.strip()
        if tok in NEGATION_CUES:
            negations.add("not" if tok in _PLAIN_NEGATION else tok)
            continue
        if tok in _DIRECTIONAL:
            segment += 1
            continue
        fraction = _FRACTION.match(tok)
        if fraction:
            numbers.append(int(fraction[1]) / max(int(fraction[2]), 1))
            continue
        if _NUMBER.match(tok) or tok in _NUMBER_WORDS:
            numbers.append(float(_NUMBER_WORDS[tok] if tok in _NUMBER_WORDS else tok))
            continue
        if tok == "-" and not math:
            continue  # a dash between words, not a minus
        word = tok.replace("'", "")
        if word in FRAME_WORDS:
            continue
        stem = _stem(word)
        if stem in FRAME_WORDS:
            continue
        item = _SYNONYMS.get(stem, stem)
        content.add(item)
        segments.setdefault(item, set()).add(segment)
    return Details(tuple(sorted(numbers)), frozenset(negations), frozenset(content),
                   (segment, tuple(sorted((k, tuple(sorted(v))) for k, v in segments.items()))))


def mismatch(query: str, candidate: str) -> Optional[str]:
    """Why `candidate`'s answer must not serve `query` (a short reason), or None when the details agree."""
    q, c = details(query), details(candidate)
    if q.numbers != c.numbers:
        return "numbers"
    if q.negations != c.negations:
        return "negation"
    if q.content != c.content:
        return "content"
    if q.segments[0] == c.segments[0] > 0 and q.segments[1] != c.segments[1]:
        return "order"
    return None
