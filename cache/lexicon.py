"""WordNet for the cache's detail checks: which reworded word keeps the meaning, which one changes it.

Why: paraphrases reword content words ("refrigerated" for "in the fridge", "quicker" for "faster"),
and the literal content check (cache/guards.py) rejected them: on dev.jsonl it was the first failing
check for 265 of 491 paraphrases. WordNet 3.0 (Debian's `wordnet-base`, read with NLTK's reader)
knows which words share a sense, which are antonyms, and how often each word is used (the SemCor
sense counts in `cntlist.rev`), which tells a generic word ("reason", "keep") from a specific one
("subdirectory", "vegan").

Debian ships the WordNet database without two files NLTK's reader opens: `lexnames` (the fixed
table of the 45 lexicographer files, numbered as in WordNet's lexnames(5WN) page) and
`index.sense` (only read for sense keys, which raygate does not use; empty is enough). NLTK also
refuses files outside its corpus folder, so symbolic links do not do: `prepare()` copies the
database (28 MB) into `<dir>/corpora/wordnet` and writes the two files.

Without the data, `load()` returns None and the guards keep their literal checks (and say so).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional

logger = logging.getLogger("ray.serve")

# Where Debian/Ubuntu's `wordnet-base` puts the WordNet 3.0 database.
SYSTEM_WORDNET = Path(os.environ.get("RAYGATE_WORDNET_SOURCE", "/usr/share/wordnet"))
# Where raygate keeps the NLTK-readable copy unless RAYGATE_NLTK_DATA says otherwise.
DEFAULT_DATA_DIR = Path(os.environ.get("RAYGATE_NLTK_DATA", Path.home() / ".cache" / "raygate" / "nltk_data"))

# WordNet's lexicographer files in their fixed order (lexnames(5WN)); the number is the file's id in
# the data files, the last column its syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_DATABASE = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
             "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")


def lexnames_table() -> str:
    """The 45-line `lexnames` file: `NN<TAB>name<TAB>category` per line."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def prepare(data_dir: Path = DEFAULT_DATA_DIR, source: Path = SYSTEM_WORDNET) -> Optional[Path]:
    """Make `<data_dir>/corpora/wordnet` readable by NLTK from the system's WordNet database.

    Returns the corpus folder, or None when `source` lacks the database (wordnet-base not installed).
    Idempotent; raises OSError when `data_dir` cannot be written."""
    target = data_dir / "corpora" / "wordnet"
    if (target / "lexnames").exists() and (target / "data.noun").exists():
        return target
    if not all((source / name).exists() for name in _DATABASE):
        return None
    target.mkdir(parents=True, exist_ok=True)
    for name in _DATABASE + ("cntlist.rev",):
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    (target / "index.sense").touch()
    (target / "lexnames.tmp").write_text(lexnames_table())
    (target / "lexnames.tmp").replace(target / "lexnames")  # last: its presence means "complete"
    return target


def _find_corpus() -> Optional[Path]:
    try:
        import nltk.data

        for base in [str(DEFAULT_DATA_DIR), *nltk.data.path]:
            folder = Path(base) / "corpora" / "wordnet"
            if (folder / "lexnames").exists() and (folder / "data.noun").exists():
                return folder
    except ImportError:
        return None
    try:
        return prepare()
    except OSError as e:
        logger.warning("WordNet: cannot write %s: %s", DEFAULT_DATA_DIR, e)
        return None


class Lexicon:
    """NLTK's WordNet reader (for morphology: "steps" -> "step", "ran" -> "run") and the relations
    table (`Relations`) the checks read."""

    def __init__(self, wn, relations: "Relations"):
        self.wn = wn
        self.relations = relations
        self.version = wn.get_version()


@lru_cache(maxsize=1)
def load() -> Optional[Lexicon]:
    """The lexicon over the prepared corpus, or None (NLTK or the data missing, or unreadable)."""
    folder = _find_corpus()
    return _open(folder) if folder is not None else None


def _open(folder: Path) -> Optional[Lexicon]:
    try:
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        # NLTK reads corpora only below a folder on its data path.
        root = str(folder.parent.parent)
        if root not in nltk.data.path:
            nltk.data.path.append(root)
        with warnings.catch_warnings():  # "multilingual functions are not available": not used
            warnings.simplefilter("ignore")
            wn = WordNetCorpusReader(str(folder), None)
        return Lexicon(wn, Relations.load_or_build(wn, folder))
    except Exception as e:  # a damaged copy must not stop the cache: the literal checks remain
        logger.warning("WordNet at %s unreadable (%r): literal content checks only", folder, e)
        return None


# ---- word relations -------------------------------------------------------------------------

# A word added or dropped by a rewording may only be a generic verb or adverb. In a request, an
# added noun or adjective introduces or restricts what is asked about (a new argument or modifier:
# "for babies", "as a table", "vegan"), while an added verb or adverb that is common restates the
# predicate (need, take, find, required). Common means: SemCor saw the word's base forms at least
# LIGHT_MIN_COUNT times (rare words such as "poach", "outlive" are specific), and the word's most
# frequent sense (by those counts) is a verb or an adverb.
# Both figures here were chosen on the tuning part of dev.jsonl (bench/cache_eval.py: the groups
# whose anchor hash puts them outside the held-out part) and look-alike sets 1 and 2.
LIGHT_MIN_COUNT = 20
# See WordInfo.main: a sense is one of a word's main senses from this share of its SemCor uses.
MAIN_SENSE_SHARE = 0.02
# Degree and comparison words scope a request ("too much", "more", "least") though frequent.
DEGREE_WORDS = frozenset("too very more less most least extra enough much many few fewer all each every both".split())
# Personal pronouns kept as content by cache/guards.py ("he" is not "she").
PRONOUNS = frozenset({"he", "she"})
# Adverbs that place a request in time or in a repetition ("trips again", "already installed",
# "not yet"): frequent words, but the answer differs with them.
TIME_ADVERBS = frozenset("again already yet still soon now later early late anymore ever next previously".split())
# Rate adverbs and adjectives make a one-off question a habit ("Can I take ibuprofen daily?" is not
# "Can I take ibuprofen?"): frequent, and WordNet's most frequent sense of "daily" is an adverb, but
# the answer differs with them.
RATE_WORDS = frozenset("daily nightly hourly weekly monthly yearly annual annually".split())


class Relations:
    """Every WordNet sense's links, in flat arrays, so that a word's lookup costs microseconds.

    Why: NLTK parses a synset's line from the data file at first use, and reads a lemma's SemCor
    count by a binary search in `cntlist.rev`; a polysemous word ("set", "run") took 15-50 ms cold,
    1 ms at the median, inside a lookup whose budget is 10 ms. The table is built once from NLTK's
    reader (about a minute; scripts/setup.sh does it) and stored beside the corpus (8 MB).

    Senses are dense ids. `rows` maps "pos:lemma" (pos in n, v, a, r) to the lemma's senses in
    WordNet's order with their SemCor counts; per sense: `lexname` (index into LEXNAMES),
    `instance` (an instance of something: a named thing), and as CSR arrays `antonyms` (with the
    cluster head's for a satellite adjective) and `parents` (hypernyms and instance hypernyms);
    `similar` (the adjective cluster), and per row entry (a lemma in a sense), `row_linked`: the row
    entries its own form is derived from or pertains to (derivation links word forms, not synsets:
    "sleep" the verb and "sleep" the noun, not "nap" in the noun's synset)."""

    FILE = "raygate-relations-v3.pickle"

    def __init__(self, data: dict):
        self.__dict__.update(data)

    @classmethod
    def load_or_build(cls, wn, folder: Path) -> "Relations":
        import pickle

        path = folder / cls.FILE
        if path.exists():
            with open(path, "rb") as f:
                return cls(pickle.load(f))
        logger.info("WordNet relations table missing: building it (about a minute)")
        data = cls.build(wn, folder)
        try:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(data, f, protocol=5)
            tmp.replace(path)
        except OSError as e:
            logger.warning("WordNet relations table not saved (%s): it is rebuilt at the next start", e)
        return cls(data)

    @staticmethod
    def build(wn, folder: Path) -> dict:
        import numpy as np

        counts: dict[str, int] = {}
        cntlist = folder / "cntlist.rev"
        if cntlist.exists():
            for line in cntlist.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    counts[parts[0]] = int(parts[2])
        synsets = [s for pos in "nvar" for s in wn.all_synsets(pos)]
        ids = {_sense(s.pos(), s.offset()): i for i, s in enumerate(synsets)}
        lemma_count: dict[tuple, int] = {}
        # (lemma, sense) -> senses its own form is derived from or pertains to: derivation links
        # word forms, not synsets ("sleep" the verb and "sleep" the noun, not "nap" beside it)
        lemma_links: dict[tuple, set] = {}  # (lemma, sense) -> {(target lemma, target sense)}
        similar, antonyms, parents = [], [], []
        for i, s in enumerate(synsets):
            similar.append({ids[_sense(p, o)] for p, o in s._pointers.get("&", ())})
            opposite_ = set()
            for (name, symbol), targets in s._lemma_pointers.items():
                if symbol == "!":
                    opposite_.update(ids[_sense(p, o)] for p, o, _ in targets)
                elif symbol in ("+", "\\"):
                    lemma_links.setdefault((name.lower(), i), set()).update(
                        (wn.synset_from_pos_and_offset(p, o)._lemmas[k].name().lower(), ids[_sense(p, o)])
                        for p, o, k in targets)
            antonyms.append(opposite_)
            parents.append({ids[_sense(p, o)] for sym in ("@", "@i") for p, o in s._pointers.get(sym, ())})
            for lemma in s.lemmas():
                lemma_count[(lemma.name().lower(), i)] = counts.get(lemma.key(), 0)
        for i, s in enumerate(synsets):  # a satellite adjective takes its cluster head's antonyms
            if s.pos() == "s":
                for p, o in s._pointers.get("&", ()):
                    antonyms[i] = antonyms[i] | antonyms[ids[_sense(p, o)]]

        def csr(sets: list) -> tuple:
            ptr = np.zeros(len(sets) + 1, dtype=np.int32)
            ptr[1:] = np.cumsum([len(x) for x in sets])
            return ptr, np.fromiter((j for x in sets for j in sorted(x)), dtype=np.int32, count=int(ptr[-1]))

        rows, row_sense, row_count, row_ptr = {}, [], [], [0]
        entry_of: dict[tuple, int] = {}  # (lemma, sense) -> its row entry
        for lemma, by_pos in wn._lemma_pos_offset_map.items():
            for pos, offsets in by_pos.items():
                if pos == "s":  # satellites are listed under "a" too
                    continue
                rows[f"{pos}:{lemma}"] = len(row_ptr) - 1
                for off in offsets:
                    i = ids[_sense(pos, off)]
                    entry_of[(lemma, i)] = len(row_sense)
                    row_sense.append(i)
                    row_count.append(lemma_count.get((lemma, i), 0))
                row_ptr.append(len(row_sense))
        row_linked = [set() for _ in row_sense]
        for (lemma, i), targets in lemma_links.items():
            k = entry_of.get((lemma, i))
            if k is not None:
                row_linked[k] = {entry_of[t] for t in targets if t in entry_of}
        lexname_ids = {name: k for k, name in enumerate(LEXNAMES)}
        return {
            "lexname": np.array([lexname_ids[s.lexname()] for s in synsets], dtype=np.uint8),
            "instance": np.array([bool(s._pointers.get("@i")) for s in synsets], dtype=bool),
            "similar": csr(similar), "antonyms": csr(antonyms), "parents": csr(parents),
            "row_linked": csr(row_linked),
            "rows": rows, "row_ptr": np.array(row_ptr, dtype=np.int32),
            "row_sense": np.array(row_sense, dtype=np.int32), "row_count": np.array(row_count, dtype=np.int32),
        }

    def related(self, name: str, keys) -> set:
        ptr, idx = getattr(self, name)
        out: set = set()
        for i in keys:
            out.update(idx[ptr[i]:ptr[i + 1]].tolist())
        return out


class WordInfo:
    """What WordNet says about one word: its senses, the senses they are linked to, their
    antonyms and parents (all dense sense ids of `Relations`), and whether the word is generic."""

    __slots__ = ("known", "senses", "main", "main_entries", "linked", "similar", "antonyms", "parents", "light",
                 "verbal")

    def __init__(self, lex: "Lexicon", word: str):
        rel = lex.relations
        senses: dict[int, int] = {}  # sense -> SemCor count of the word's base forms in it
        entries: dict[int, list] = {}  # sense -> row entries (a base form in that sense)
        firsts = set()  # each part of speech's first sense (WordNet lists senses by frequency)
        for pos in "nvar":
            for form in lex.wn._morphy(word, pos):
                row = rel.rows.get(f"{pos}:{form}")
                if row is None:
                    continue
                lo, hi = rel.row_ptr[row], rel.row_ptr[row + 1]
                for k, (i, c) in enumerate(zip(rel.row_sense[lo:hi].tolist(), rel.row_count[lo:hi].tolist())):
                    senses[i] = senses.get(i, 0) + c
                    entries.setdefault(i, []).append(int(lo) + k)
                if hi > lo:
                    firsts.add(int(rel.row_sense[lo]))
        self.known = bool(senses)
        self.senses = frozenset(senses)
        total = sum(senses.values())
        # The word's main senses: those it is used in. Two words that share only a rare sense are
        # not synonyms in ordinary use ("learn" is listed under "teach", "sleep" under "nap"), so
        # synonymy is read from senses with at least MAIN_SENSE_SHARE of the word's SemCor count,
        # or, for a word SemCor never saw, from the first sense of each part of speech.
        self.main = frozenset(i for i, c in senses.items()
                              if (c >= MAIN_SENSE_SHARE * total if total else i in firsts))
        self.main_entries = frozenset(k for i in self.main for k in entries[i])
        self.linked = frozenset(rel.related("row_linked", self.main_entries))
        self.similar = frozenset(rel.related("similar", self.main))
        self.antonyms = frozenset(rel.related("antonyms", senses))
        self.parents = frozenset(rel.related("parents", senses))
        # The dominant sense: the one SemCor saw most often for the word's base forms ("teach" is
        # first a verb, though WordNet lists the pirate Teach first); ties go to WordNet's order.
        order = list(senses)
        dominant = max(range(len(order)), key=lambda k: (senses[order[k]], -k)) if order else None
        kind = LEXNAMES[rel.lexname[order[dominant]]] if dominant is not None else ""
        self.verbal = kind.startswith("verb.")  # the dominant sense is a verb's ("paint"), not an adverb's ("easily")
        self.light = (total >= LIGHT_MIN_COUNT and word not in DEGREE_WORDS and word not in TIME_ADVERBS
                      and word not in RATE_WORDS and kind.startswith(("verb.", "adv.")))


class _Unknown:
    known = False


_UNKNOWN = _Unknown()


def _sense(pos: str, offset: int) -> tuple:
    return ("a" if pos == "s" else pos, offset)  # satellites are adjectives


@lru_cache(maxsize=65536)
def word_info(word: str) -> Optional[WordInfo]:
    lex = load()
    return WordInfo(lex, word) if lex is not None else None


def same_sense(a: str, b: str) -> bool:
    """True when two words share a main WordNet sense (synonyms), directly or through an adjective
    cluster, a derivation or a pertainym."""
    x, y = word_info(a), word_info(b)
    return bool(x and y and (x.main & y.main or x.main & y.similar or y.main & x.similar
                             or x.main_entries & y.linked or y.main_entries & x.linked))


def opposite(a: str, b: str) -> bool:
    """True when WordNet lists a sense of one as the antonym of a sense of the other."""
    x, y = word_info(a), word_info(b)
    return bool(x and y and (x.antonyms & y.senses or y.antonyms & x.senses))


def siblings(a: str, b: str) -> bool:
    """True when two words are kinds (or instances) of the same thing: Paris/London, Celsius/Fahrenheit."""
    x, y = word_info(a), word_info(b)
    return bool(x and y and x.parents & y.parents)


def _spelled_as(word: str, other_words: tuple) -> set:
    """The words of the other text that `word` is another spelling of: a clipping WordNet does not
    know ("dir" for "directory", "prob" for "probability": English shortens words by dropping their
    end), or a compound written closed where the other writes it open ("zipcode" / "zip code")."""
    out = set()
    if len(word) >= 3 and not (word_info(word) or _UNKNOWN).known:
        out.update(o for o in other_words if len(o) > len(word) and o.startswith(word))
    for a, b in zip(other_words, other_words[1:]):
        if a + b == word:
            out.update((a, b))
    return out


def content_change(q, c) -> Optional[str]:
    """Why the content words of two texts (cache.guards.Details) ask different things, or None.

    Without WordNet every differing content word counts as a change ("content"). With it:
    - a word whose sense the other text keeps with another word (a synonym) is kept;
    - an antonym ("antonym") or a sibling ("sibling": another city, unit, language) in its place
      changes the question: the same frame asks for another thing;
    - any other replaced word changes it too ("content"), generic or not: two words WordNet does
      not relate name two different things or actions (read / write a file), and the embedding
      cannot tell (cosine 0.90 for that pair);
    - another spelling of the same word is kept (`_spelled_as`);
    - a word only one text has is allowed when it is a common verb or adverb (see LIGHT_MIN_COUNT):
      rewordings add and drop such words ("is it required", "should I take"), while an added noun,
      adjective or rare word narrows the request ("vegan", "in Spanish", "for babies", "as a table");
      unless that text states a condition ("if", "unless") the other does not: then the added words
      are the condition ("Can I use regular caulk around a bathtub if I paint over it?", the one
      look-alike dev.jsonl's checks served, and served in bench.cache_workload's live traffic); nor
      a verb joined with "and", a second request ("... around a bathtub and paint over it?").
    """
    only_q = sorted(q.content - c.content)
    only_c = sorted(c.content - q.content)
    if load() is None:
        return "content"
    qs, cs = dict(q.surface), dict(c.surface)
    wq = {i: qs[i] for i in only_q}
    wc = {i: cs[i] for i in only_c}
    for x, a in wq.items():
        for y, b in wc.items():
            if opposite(a, b):
                return "antonym"
    kept_q = {x for x, a in wq.items() if any(same_sense(a, b) for b in wc.values())}
    kept_c = {y for y, b in wc.items() if any(same_sense(a, b) for a in wq.values())}
    for mine, theirs, kept_mine, kept_theirs, other in ((wq, wc, kept_q, kept_c, c), (wc, wq, kept_c, kept_q, q)):
        for x, a in mine.items():
            spelled = _spelled_as(a, other.words)
            if spelled:
                kept_mine.add(x)
                kept_theirs.update(y for y, b in theirs.items() if b in spelled)
    left_q = [x for x in wq if x not in kept_q]
    left_c = [y for y in wc if y not in kept_c]
    if left_q and left_c and any(siblings(wq[x], wc[y]) for x in left_q for y in left_c):
        return "sibling"
    names = q.names | c.names
    for left, mine, other in ((left_q, q, c), (left_c, c, q)):
        if left and mine.conditional and not other.conditional:
            return "content"  # words added with a condition ("if I paint over it") are the condition
    for item, word in [(x, wq[x]) for x in left_q] + [(y, wc[y]) for y in left_c]:
        if item in PRONOUNS:
            continue  # a pronoun refers back to what is already named; replacing it is caught above
        info = word_info(word)
        if item in names or item in q.nominal or item in c.nominal or info is None or not info.light:
            return "content"
        if (item in q.coordinated or item in c.coordinated) and info.verbal:
            return "content"  # a verb joined with "and" is a second request ("... and paint over it?")
    if left_q and left_c:
        return "content"
    return None


def status() -> str:
    """One line for the log: which content checks are active."""
    lex = load()
    if lex is None:
        return ("semantic cache guards: numbers, negation, order, literal content words "
                "(WordNet not found: install wordnet-base and run `python -m cache.lexicon`)")
    return ("semantic cache guards: numbers, negation, order, content words with WordNet "
            f"{lex.version} synonyms, antonyms, siblings and generic-word additions")


if __name__ == "__main__":  # scripts/setup.sh: python -m cache.lexicon [DATA_DIR]
    import sys

    out = prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA_DIR)
    if out is not None and _open(out) is None:  # builds the relations table
        out = None
    print(f"WordNet for NLTK: {out}" if out else
          f"WordNet database not found in {SYSTEM_WORDNET}: install it (Debian/Ubuntu: "
          "sudo apt-get install --no-install-recommends wordnet-base); the cache keeps its literal checks")
    sys.exit(0 if out else 1)
