"""Checks that a semantic neighbour asks for the same answer, beyond what the embedding sees.

Why: sentence embeddings score "reverse a list in Python" and "reverse a list in JavaScript" at
~0.9, above most true paraphrases (measured on ../shared/semcache/dev.jsonl: at cosine 0.80 a plain
threshold serves 60% of the hard negatives). Look-alikes differ in a few answer-determining
details: a number, a negation, a unit, a named thing, a requested format or language, an added
qualifier. Paraphrases reword the *frame* of a question (could you / how do I / pls) and keep those
details. So a neighbour is accepted only when the details of both texts match:

- numbers (digits, number words, `3-day` = `three day`, `10k` = `ten thousand`, `70kg` = `70 kg`,
  `9:00 a.m.` = `9am`, `x²` = `x^2`, `-5` = `minus 5`; see `_numerals`) are equal, repeats counted;
  a count of one is not compared ("a cup" is "one cup"); numbers between slashes (`3/5` = `three-
  fifths` = `3 over 5`, `1/2` = `half`, `50/30/20` = `50-30-20`, `03/04/2020`) are equal as written
  and in order, never by value; `double`, `doubled`, `twice` are a factor (`twofold`), not the
  number 2; decimals are compared as written too ("Python 3.10" is not "3.1"); in a formula the
  numbers and operators are compared in the order written ("2^10" is not "10^2"); ordinals
  ("first") are words, not the number one; currency signs are content ("£100" is not "€100"); a
  day goes with its month ("March 12 ... April 5" is not "April 12 ... March 5");
- negation cues (not, no, without, -free, prevent, avoid, stop X from, except, only, worst, ...)
  are equal as sets;
- content words (stemmed, case-insensitive, outside a list of conversational frame words) of each
  text appear in the other, or are kept by another word; symbols such as `===` or `C++` count as
  content. Without WordNet "kept" means a small list of synonyms; with it (cache/lexicon.py) a
  word sharing a sense, another spelling of the word, and added or dropped generic verbs and
  adverbs; an antonym or a sibling (another city, language, unit) in its place is a change;
- "how often / long / much / far / old" are question words of their own and match literally;
- no two shared content words swap sides of the same directional words ("Celsius to Fahrenheit"),
  nor of "in" ("100 dollars in euros").

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

from cache import lexicon

_STEMMER = snowballstemmer.stemmer("english")

# Words that frame a request without changing what is asked: auxiliaries, pronouns, politeness,
# question words and generic verbs of asking. Both texts may freely differ in these.
FRAME_WORDS = frozenset(
    """
    a an the and or but so to of in on at by for from with into onto as is are was were be been being
    am do does did doing done have has had having can could would should shall will may might must
    i me my mine we us our you your yours it its this that these those there here they them
    their what whats which whose how whether if then than
    please pls plz kindly thanks thank hi hello hey ok okay just really actually also maybe
    show tell explain give help want need know let like get got make way ways some any thing things
    something anything able possible exactly simply quick quickly briefly basically
    question ask asking wondering curious idea between best good ideal
    use using used
    explanation instructions instruction advice steps step
    s t d ll re ve m
    """.split()
)

# Cues that flip or restrict meaning; compared as a set, never stripped. Plain negation has many
# spellings ("no sugar", "without sugar", "don't use sugar"): those all count as one cue, "not".
_PLAIN_NEGATION = frozenset(
    """
    not no never none nothing nobody nowhere neither nor without cannot cant dont doesnt didnt isnt
    arent wasnt werent wont wouldnt shouldnt couldnt lack lacking
    prevent prevents preventing avoid avoids avoiding
    """.split()
)
# Verbs of prevention assert a negated outcome: "prevent X", "avoid X" and "stop / keep Y from
# X-ing" ask how to make X not happen, as "make Y not X" does; they count as plain negation.
_PREVENT_FROM = re.compile(r"\b(?:stop|keep|prevent)\s+((?:[\w']+\s+){0,4}?)from\s+(\w+ing)\b")
# "do that / it / this / so" after a subject, a modal or "to" stands for a verb phrase said before
# ("how would I do that in TypeScript?"): a pro-form, whose place a specific verb takes in a
# look-alike ("how would I test that in TypeScript?"). It is content (one item, "doso"), not the
# frame word "do" (the auxiliary of "does it crash?", "how does that work?").
_PRO_VERB = re.compile(r"\b(i|you|we|they|one|to|would|can|could|should|will|might|must|of)\s+"
                       r"(?:do|doing|done)\s+(?:that|it|this|so)\b"
                       r"|\b(?:(be|been|being|is|are|was|were|get|gets|got)\s+)done\b")
# The suffix "-free" negates its stem: "chemical-free" is "without chemicals".
_FREE = re.compile(r"\b([a-z]+)-free\b")
# "10k" is ten thousand.
_THOUSANDS = re.compile(r"\b(\d+(?:\.\d+)?)k\b")
# Multiplying numerals: "ten thousand", "two hundred".
_MULTIPLIERS = {"hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000}
# Requests read positively by default: "what time should I visit" asks for the best time, so "best",
# "good", "ideal" are frame words above; the negative evaluatives reverse that reading, and count
# as cues like negation.
_NEGATIVE_EVALUATION = frozenset("bad worse worst".split())
NEGATION_CUES = (_PLAIN_NEGATION | _NEGATIVE_EVALUATION
                 | frozenset("except excluding exclude non un anti instead only".split()))

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000,
    "dozen": 12,
}

# Small, explicit synonym groups for frame-adjacent words that paraphrases swap. Entities, units,
# languages and formats are never listed here: those must match literally.
SYNONYM_GROUPS = (
    "differ difference different distinguish vs versus compare comparison",
    # "why" asks for a cause or a reason, as "what causes" and "what is the reason" do; unlike the
    # other question words it fixes the kind of answer, so it is content.
    "why reason cause",
    # Likewise "when" asks for a time, "where" for a place, "who" for a person: each fixes the kind
    # of answer ("how should I repot" is not "when should I repot"); "what"/"which" and "how" leave
    # it to the words around them and stay frame words.
    "when time",
    "where place location",
    "who whom person",
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
    "cost price",
    "kid child children",
    "car vehicle auto",
    "doctor physician",
    "recommend suggest",
    "example instance sample",
)

# Case forms of one pronoun refer to the same person ("her weight" / "should she weigh"); the
# person itself is a detail ("he" is not "she"), so the forms map to one item and stay content.
_PRONOUN_CASES = {"him": "he", "his": "he", "himself": "he", "her": "she", "hers": "she", "herself": "she"}
# "how" fused with a degree word asks for a particular measure: how often (frequency), how long
# (duration), how much / many (amount), how far (distance), how old (age). These compounds are one
# question word each and must match literally, whatever WordNet relates between their parts.
_HOW_MEASURES = frozenset("often much many long far old big soon large tall fast heavy frequently".split())
# "how many" (count nouns) and "how much" (mass nouns) ask for one measure, an amount; "how
# frequently" is "how often".
_HOW_SAME = {"many": "much", "frequently": "often"}
# Additive focus particles at the end of a clause ("safe for cats too", "on concrete as well") say
# that an earlier question applies to a new thing; the new thing is the content, not the particle.
_ADDITIVE = re.compile(r"\b(?:too|as well)\s*(?=[?.!,]|$)")

_WORD = re.compile(r"\d+(?:/\d+)+|[a-z0-9]+(?:[.'][a-z0-9]+)*|[=!<>+*/%&|^~#@$]{1,4}| - ")
# Words whose two sides are not interchangeable.
# "of" relates a part or property to its whole ("15% of 80", "the capital of France"): its sides are
# not interchangeable either.
# "by" orders its sides too ("20 divided by 4" is not "4 divided by 20").
_DIRECTIONAL = frozenset({"to", "into", "from", "for", "than", "over", "instead", "per", "vs", "of", "by"})
_MATH = re.compile(r"[=+*^]")
# A term with a variable next to a minus or a slash and a number ("3x - 7", "6x/3", "2k-1"): a formula
# too, though it has none of the signs above.
_TERM_OPERATOR = re.compile(r"\b\d+[a-z]\s*[-/]\s*\d|\d\s*[-/]\s*\d+[a-z]\b|\d\s+-\s+\d|\d\s*[\u00f7\u00d7]\s*\d")
# What a formula's answer depends on: its numbers and operators in the order written
# ("2^10" is not "10^2", "x + 3 = 7" is not "x + 7 = 3", "(2 + 3) * 4" is not "2 + 3 * 4").
_FORMULA_SIGNS = re.compile(r"\d+(?:\.\d+)?|[-+*/^=()<>\u00f7\u00d7]")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_RATIO = re.compile(r"^\d+(?:/\d+)+$")


def _is_formula(text: str) -> bool:
    return bool(_MATH.search(text) or _TERM_OPERATOR.search(text))


# Superscript digits are exponents: NFKC would fold "x²" into "x2" and "2²" into "22".
_SUPERSCRIPTS = re.compile("[\u2070\u00b9\u00b2\u00b3\u2074-\u207b]+")
_SUPERSCRIPT_DIGITS = str.maketrans("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207a\u207b",
                                    "0123456789+-")


def normalize(text: str) -> str:
    """Case-folded, unicode-normalized text with quotes unified and superscript digits written as
    exponents ("x²" is "x^2"): the form every check reads."""
    text = _SUPERSCRIPTS.sub(lambda m: "^" + m[0].translate(_SUPERSCRIPT_DIGITS), text)
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2212", "-")  # the minus sign
    text = text.replace("\u2044", "/")  # the fraction slash: NFKC writes "½" as "1\u20442"
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
    # content item -> the word as written (casefolded), for the lexical checks
    surface: tuple = ()
    # content items written with a capital inside a sentence: names (Python, Canada, Tuesday)
    names: frozenset = field(default_factory=frozenset)
    # every content word as written, in order (for compounds spelled open or closed)
    words: tuple = ()
    # content words written more than once, with their counts: a word repeated has a second role
    # ("the French Revolution, in French"; "active": true in a sample and "active is true" asked)
    repeats: tuple = ()
    # content items right after a determiner or a preposition ("a reverse mortgage", "the following
    # code", "in reverse order"): English syntax puts a noun phrase there, so the word is a noun or a
    # modifier, never a verb (an added one narrows the request: "List the planets in reverse order
    # from the sun" was served the in-order answer, a new user's report)
    nominal: frozenset = field(default_factory=frozenset)
    # the text states a condition ("... if I paint over it?"): words it adds to a request may be the
    # condition, which changes the answer, however common they are
    conditional: bool = False
    # numbers compared as written, not by value: slash groups ("3/5", "50/30/20", "03/04/2020", in
    # order: "1/2" is "half", not "0.5" nor "2/4"), factors ("x2" for double, doubled, twice) and
    # plan names ("401k")
    ratios: tuple = ()
    # "in" relates a thing to what contains or expresses it ("100 dollars in euros", "sugar in
    # coffee"), so its sides are not interchangeable either; it is also the commonest preposition of
    # a fronted phrase ("In Python, ..."), so it gets an order check of its own rather than a place
    # among the directional words: (number of "in", item -> segments between them, whether the
    # text does not open with "in": a fronted "In Python, ..." puts the segments out of order)
    containment: tuple = (0, (), True)
    # content items right after "and": a verb there is a second predicate ("... and paint over
    # it?"), a second request, not a rewording of the first
    coordinated: frozenset = field(default_factory=frozenset)


def _tokens(text: str, math: bool) -> list[str]:
    """The words, numbers and symbols of `text` (already `normalize`d; `math`: it is a formula)."""
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)  # 10,000 -> 10000
    text = re.sub(r"n't\b", " not", text)
    text = _ADDITIVE.sub(" ", text)
    text = _PREVENT_FROM.sub(r"not \1\2", text)
    text = _PRO_VERB.sub(lambda m: f"{m[1] or m[2]} doso", text)  # "can this be done" too
    text = _FREE.sub(r"without \1", text)
    text = _numerals(text, math)
    return _WORD.findall(text)


# Currency signs are content, each its own ("£100" is not "€100"; "$" is a symbol of _WORD already),
# read as the currency's ISO code ("€100" is "100 EUR"), not its name: "£" / "pound" is also a
# weight, "pound sign" is "#" in the US, and "$5.99" in a regex or a format string is the sign
# itself. "¥" is the yen's and the yuan's sign: a code of neither.
_CURRENCY_SIGNS = {"£": "gbp", "€": "eur", "¥": "jpycny", "₹": "inr", "₩": "krw"}
_CURRENCY = re.compile("[" + "".join(_CURRENCY_SIGNS) + "]")
# Unit symbols that are also frame words or contraction residues: after a number, "m", "s", "t",
# "d" are units ("12 m" is not "12 s"). Kept as opaque unit words, not guessed (m is metres or
# minutes). ("in" and a closing double quote after a number may be inches or a preposition and a
# quoted number: not read.)
_UNIT_LETTERS = {"m": "munit", "s": "sunit", "t": "tunit", "d": "dunit"}
_UNIT_LETTER = re.compile(r"(\d)\s+([mstd])\b(?![.'])")


# How numbers are written, read one way whatever the spelling (each measured on dev.jsonl, where a
# paraphrase wrote the number differently from its anchor), and never two numbers read as one:
# "9:00" / "9:30" are times of day: 9 and 9.5, not 9 and 0.
_CLOCK = re.compile(r"\b(\d{1,2}):(\d{2})(?!\d)")
# "9am", "9 am", "9 a.m." are "9 a.m": a.m and p.m are content words, so "9am to 5pm" is not
# "9pm to 5am" (the order check sees them swap sides of "to").
_MERIDIEM = re.compile(r"(\d)\s*([ap])\.?m\b\.?")
# A minus sign before a number (not a dash between words or a binary minus): "10⁻³", "x^-2", "-5".
_NEGATIVE = re.compile(r"(?<![\w)\]])-(?=\d)")
# US retirement plans: "401(k)", "401k", "403(b)", "457(b)" are names, not 401,000.
_PLAN = re.compile(r"\b(401|403|457)\s*\(?([kb])\)?(?![a-z])")
# A number glued to a unit ("5cm", "70kg") or, outside formulas, to a word of two letters or more
# ("python3", "2nd"): the two apart, as the same text spaced out reads. A single letter stays glued
# ("3x", "i7", "x2"): a variable or a model name, where "3x" is not "x3" and "i7" is not "i 7".
_DIGITS_THEN_UNIT = re.compile(r"\b(\d+(?:\.\d+)?)(mm|cm|km|kg|mg|lbs?|oz|ml|ft|mi|mph|kph|hrs?|yrs?|mins?"
                               r"|ms|sec|gb|mb|kb|tb|hz|khz|mhz|ghz|kw|kwh)\b")
_DIGITS_THEN_LETTERS = re.compile(r"\b(\d+(?:\.\d+)?)([a-z]{2,})\b")
_LETTERS_THEN_DIGITS = re.compile(r"\b([a-z]{2,})(\d+(?:\.\d+)?)\b")
# "50-30-20" is the list "50/30/20"; numbers between slashes are compared as written, in order
# (`Details.ratios`): "03/04/2020" is not "04/03/2020", "120/80" is not "150/100".
_DASH_LIST = re.compile(r"\b\d+(?:-\d+){2,}\b")
# "42 over 56" is 42/56.
_OVER = re.compile(r"\b(\d+) over (\d+)\b")
# "three-fifths", "two thirds", "half", "a quarter": fractions in words.
_DENOMINATORS = {"half": 2, "halves": 2, "third": 3, "fourth": 4, "quarter": 4, "fifth": 5, "sixth": 6,
                 "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10}
_WORD_FRACTION = re.compile(r"\b(one|two|three|four|five|six|seven|eight|nine|ten)[- ]"
                            r"(halves|half|(?:third|fourth|quarter|fifth|sixth|seventh|eighth|ninth|tenth)s?)\b")
_HALF_QUARTER = re.compile(r"\b(half|quarter)\b")
# Multiplying by a number: "double", "doubled", "twice" are "twofold" -- a factor, not the number 2
# ("the radius doubled" is not "the radius is 2").
_MULTIPLYING = re.compile(r"\b(?:(doubl|tripl)(?:e|ed|es|ing)|twice|thrice|halv(?:e|ed|ing))\b")


_FACTORS = {"twofold": "x2", "threefold": "x3", "halffold": "x0.5"}
_PLAN_TOKEN = re.compile(r"^plan\d{3}[kb]$")


def _factor(m: re.Match) -> str:
    word = m[0]
    if word.startswith("halv"):
        return "halffold"
    return "threefold" if word.startswith("tripl") or word == "thrice" else "twofold"


def _split_word_digits(m: re.Match) -> str:
    return m[0] if m[1] in FRAME_WORDS else f"{m[1]} {m[2]}"


def _variable_k(text: str, m: re.Match) -> bool:
    """In a formula, "2k" next to an operator ("2k + 1", "n=2k", "2k-1") is 2 times k."""
    before, after = text[:m.start()].rstrip()[-1:], text[m.end():].lstrip()[:1]
    return bool(before and before in "-+*/^=(") or bool(after and after in "-+*/^=)")


def _numerals(text: str, math: bool) -> str:
    """`text` with every way of writing a number above rewritten to one spelling. In a formula
    (`math`: the text has =, +, * or ^, or a term such as "3x" next to - or /), a number and a
    letter stay one term, and "k" after a number next to an operator ("2k + 1") is a variable,
    not "thousand"."""
    text = _CURRENCY.sub(lambda m: f" {_CURRENCY_SIGNS[m[0]]} ", text)
    text = _UNIT_LETTER.sub(lambda m: f"{m[1]} {_UNIT_LETTERS[m[2]]}", text)
    text = _CLOCK.sub(lambda m: f"{int(m[1]) + int(m[2]) / 60:g}", text)
    text = _MERIDIEM.sub(r"\1 \2.m ", text)
    text = _NEGATIVE.sub(" minus ", text)
    text = _PLAN.sub(r"plan\1\2", text)
    text = _THOUSANDS.sub(lambda m: m[0] if math and _variable_k(text, m) else f"{float(m[1]) * 1000:g}", text)
    text = _DIGITS_THEN_UNIT.sub(r"\1 \2", text)
    if not math:  # in a formula "3x" is one term: "3x + 7" is not "7x + 3"
        text = _DIGITS_THEN_LETTERS.sub(r"\1 \2", text)
        text = _LETTERS_THEN_DIGITS.sub(_split_word_digits, text)
    text = _DASH_LIST.sub(lambda m: m[0].replace("-", "/"), text)
    text = _OVER.sub(r"\1/\2", text)
    text = _WORD_FRACTION.sub(
        lambda m: f"{_NUMBER_WORDS[m[1]]}/{_DENOMINATORS[m[2].rstrip('s') if m[2] != 'halves' else 'half']}", text)
    text = _MULTIPLYING.sub(_factor, text)
    return _HALF_QUARTER.sub(lambda m: "1/2" if m[1] == "half" else "1/4", text)


# A day of the month goes with its month: "March 12 ... April 5" is not "April 12 ... March 5", though
# the numbers and the month names are the same; "March 5" is "5 March" and "Mar. 5th". Each pairing
# is compared as written (`Details.ratios`).
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# Full names, or abbreviations with their period ("apr 60" is an APR, "july 1 week" a duration).
_MONTH = (r"(january|february|march|april|may|june|july|august|september|october|november|december"
          r"|(?:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\.)")
_DAY = r"(3[01]|[12]\d|0?[1-9])(?:st|nd|rd|th)?(?!\s*(?:second|sec|minute|min|hour|hr|day|night|week|month|year|yr)s?\b)"
# A range of days ("March 5-7", "5-7 March") is two dates. "May" / "march" are also a modal and a
# verb: after a number ("under 5 may need") or before a count of something ("march 20 miles") they
# are not a month, so a day after a month name must end the phrase.
_DAY_END = r"(?=\s*(?:$|[-\u2013,.;:!?)]|\b(?:and|or|to|through|until|at|in|from|for|\d{4})\b))"
_DATES = re.compile(rf"\b{_MONTH}\s+{_DAY}(?:\s*[-\u2013]\s*{_DAY})?\b{_DAY_END}(?!\.\d)"
                    rf"|\b{_DAY}(?:\s*[-\u2013]\s*{_DAY})?\s+(?:of\s+)?(?!may\b){_MONTH}(?![a-z])")


def _dates(normalized: str) -> list[str]:
    out = []
    for m in _DATES.finditer(normalized):
        month, days = (m[1], (m[2], m[3])) if m[1] else (m[6], (m[4], m[5]))
        out.extend(f"date {_MONTHS.index(month[:3]) + 1}-{int(day)}" for day in days if day)
    return out


# Words that open a condition.
_CONDITIONALS = frozenset({"if", "unless"})

_DETERMINERS = frozenset("a an the my your his her its our their this that these those some any each every".split())
# Prepositions take a noun phrase as their object, so a word right after one is a noun or a modifier
# of one ("in reverse order", "by descending date"), as after a determiner. "to" is left out: it is
# also the infinitive marker ("to reverse a list", a verb).
_PREPOSITIONS = frozenset("in on at by for from with into onto of".split())

# A capitalised word that does not open a sentence is a name in English orthography.
_CAPITALISED = re.compile(r"(?<![.!?:\n]\s)(?<!^)\b([A-Z][A-Za-z0-9]*)")


@lru_cache(maxsize=65536)
def details(text: str) -> Details:
    numbers, negations, content = [], set(), set()
    segment, segments, surface, directions, ratios = 0, {}, {}, [], []
    normalized = normalize(text)
    math = _is_formula(normalized)
    signs = _FORMULA_SIGNS.findall(normalized) if math else []
    if sum(sign[0].isdigit() for sign in signs) >= 2:  # with one number, order cannot differ
        ratios.append("formula " + "".join(signs))
    capitalised = {normalize(m) for m in _CAPITALISED.findall(text.strip())}
    ratios.extend(_dates(normalized))
    names, words, nominal, counts = set(), [], set(), {}
    previous = ""
    tokens = _tokens(normalized, math)
    conditional = any(tok in _CONDITIONALS for tok in tokens)
    coordinated = set()
    inside, inside_segments = 0, {}  # the same, between occurrences of "in" (see `containment`)

    def place(item: str) -> None:
        segments.setdefault(item, set()).add(segment)
        inside_segments.setdefault(item, set()).add(inside)

    for tok in tokens:
        tok = tok.strip()
        after_how, after_number = previous == "how", bool(_NUMBER.match(previous) or previous in _NUMBER_WORDS)
        after_determiner = previous in _DETERMINERS or previous in _PREPOSITIONS
        after_and, previous = previous == "and", tok
        if after_how and tok in _HOW_MEASURES:
            item = "how-" + _HOW_SAME.get(tok, tok)
            content.add(item)
            place(item)
            surface.setdefault(item, item)
            continue
        if tok == "in":
            inside += 1
        if tok in NEGATION_CUES:
            negations.add("not" if tok in _PLAIN_NEGATION else tok)
            continue
        if tok in _DIRECTIONAL:
            segment += 1
            directions.append(tok)
            continue
        if tok in _MULTIPLIERS and after_number and numbers:
            segments.get(f"#{numbers[-1]:g}", set()).discard(segment)
            inside_segments.get(f"#{numbers[-1]:g}", set()).discard(inside)
            numbers[-1] *= _MULTIPLIERS[tok]
            place(f"#{numbers[-1]:g}")
            continue
        if _RATIO.match(tok):
            ratios.append("/".join(x.lstrip("0") or "0" for x in tok.split("/")))
            place(f"#{ratios[-1]}")  # "3/4 bigger than 2/3" has an order
            continue
        if tok in _FACTORS:  # a factor is a number too ("doubled" is not "halved")
            ratios.append(_FACTORS[tok])
            continue
        if _PLAN_TOKEN.match(tok):  # "401k" is not "403b"
            ratios.append(tok[len("plan"):])
            continue
        if _NUMBER.match(tok) and ("." in tok or len(tok) > 15):
            # as written too: "3.10" (a version) is not "3.1", and past 15 digits floats merge numbers
            ratios.append(tok.lstrip("0") or "0")
        if _NUMBER.match(tok) or tok in _NUMBER_WORDS:
            numbers.append(float(_NUMBER_WORDS[tok] if tok in _NUMBER_WORDS else tok))
            # numbers take part in the order check ("15% of 80" is not "80% of 15")
            place(f"#{numbers[-1]:g}")
            continue
        if tok == "-" and not math:
            continue  # a dash between words, not a minus
        word = tok.replace("'", "")
        word = _PRONOUN_CASES.get(word, word)
        if word in FRAME_WORDS:
            continue
        stem = _stem(word)
        if stem in FRAME_WORDS:
            continue
        item = _SYNONYMS.get(stem, stem)
        if after_and:
            coordinated.add(item)
        content.add(item)
        place(item)
        surface.setdefault(item, word)
        words.append(word)
        if after_determiner:
            nominal.add(item)
        if tok in capitalised:
            names.add(item)
        counts[item] = counts.get(item, 0) + 1
    # "a cup" is "one cup": the indefinite article is the numeral one, so a count of one is not
    # compared (any other count is).
    numbers = [n for n in numbers if n != 1]
    return Details(tuple(sorted(numbers)), frozenset(negations), frozenset(content),
                   (tuple(directions), _frozen(segments)),
                   tuple(sorted(surface.items())), frozenset(names), tuple(words),
                   tuple(sorted((n, k) for n, k in counts.items() if k > 1)), frozenset(nominal), conditional,
                   tuple(sorted(ratios)),
                   (inside, _frozen(inside_segments),
                    not tokens or tokens[0].strip() != "in"), frozenset(coordinated))


def _frozen(segments: dict) -> tuple:
    """item -> set of segments, as a sorted tuple of (item, sorted segments): hashable, comparable."""
    return tuple(sorted((k, tuple(sorted(v))) for k, v in segments.items()))


def mismatch(query: str, candidate: str) -> Optional[str]:
    """Why `candidate`'s answer must not serve `query` (a short reason), or None when the details agree.

    Reasons: "numbers", "negation", "antonym", "sibling", "content", "order"."""
    q, c = details(query), details(candidate)
    if numbers_differ(q, c):
        return "numbers"
    if q.negations != c.negations:
        return "negation"
    if _repeats_differ(q, c):
        return "content"
    if q.content != c.content:
        reason = lexicon.content_change(q, c)
        if reason is not None:
            return reason
    if order_swapped(q, c):
        return "order"
    return None


def numbers_differ(q: Details, c: Details) -> bool:
    """True when the texts' numbers differ: their values (with repeats) or their written forms
    compared as written (`Details.ratios`)."""
    return q.numbers != c.numbers or q.ratios != c.ratios


def _repeats_differ(q: Details, c: Details) -> bool:
    """True when a content word both texts have is repeated more often in one of them."""
    qr, cr = dict(q.repeats), dict(c.repeats)
    return any(qr.get(k, 1) != cr.get(k, 1) for k in (set(qr) | set(cr)) & q.content & c.content)


def order_swapped(q: Details, c: Details) -> bool:
    """True when the texts have the same directional words and two shared content words swapped
    sides of them (see `_inverted`), or swapped sides of "in" with one of them before any "in"
    ("100 dollars in euros": the thing and what it is in; two phrases after "in" may trade places,
    "in Paris in June" is "in June in Paris")."""
    if q.segments[0] == c.segments[0] and q.segments[0] and _inverted(q, c, q.segments[1], c.segments[1]):
        return True
    return bool(q.containment[0] == c.containment[0] and q.containment[0] and q.containment[2] and c.containment[2]
                and _inverted(q, c, q.containment[1], c.containment[1], figure=True))


def _inverted(q: Details, c: Details, q_segments: tuple, c_segments: tuple, figure: bool = False) -> bool:
    """True when two content words both texts share sit on opposite sides of the same directional
    words, in the opposite order: the arguments of "to", "from", "than", "for" were swapped
    ("Celsius to Fahrenheit", "substitute A for B"). Only texts with the same sequence of
    directional words are compared: fronting a phrase ("For loops, is A faster than B?") reorders
    the sequence without swapping any argument. `figure`: only pairs whose first word, in either
    text, comes before the first directional word.

    One sweep, O(n log n) in the shared words (a pairwise check took 14 s on a 32 KB prompt)."""
    qs, cs = dict(q_segments), dict(c_segments)
    shared = (q.content & c.content | {k for k in qs if k.startswith("#")}) & set(qs) & set(cs)
    spans = [(min(qs[k]), max(qs[k]), min(cs[k]), max(cs[k])) for k in shared if qs[k] and cs[k]]
    if not figure:
        return _crossing(spans, first_only=False)
    return _crossing(spans, first_only=True) or _crossing([(e, f, a, b) for a, b, e, f in spans], first_only=True)


def _crossing(spans: list, first_only: bool) -> bool:
    """True when some x, y of `spans` ((first min, first max, second min, second max) segments)
    have x wholly before y in the first text and wholly after it in the second; `first_only`: x
    starts in segment 0 of the first text."""
    xs = sorted((sp for sp in spans if not first_only or sp[0] == 0), key=lambda sp: sp[1])
    best, i = -1, 0
    for y in sorted(spans):
        while i < len(xs) and xs[i][1] < y[0]:
            best = max(best, xs[i][2])
            i += 1
        if best > y[3]:
            return True
    return False
