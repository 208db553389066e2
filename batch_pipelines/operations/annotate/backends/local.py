"""The local annotator (the default): deterministic, no network, thousands of short texts per
second. Language from stop-word profiles, RAKE-style keywords, category from a keyword
taxonomy, an extractive summary of the top-scored sentences, and a confidence."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from batch_pipelines.operations.annotate.backends.base import (
    DEFAULT_TAXONOMY,
    OTHER_CATEGORY,
    UNKNOWN_LANGUAGE,
    Annotator,
    settings,
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# The most frequent function words of each language. A word shared by several languages
# counts for each of them in proportion (1 / number of languages that have it).
STOP_WORDS: dict[str, frozenset[str]] = {
    "en": _words(
        "a about after all also an and any are as at be been but by can could do does for "
        "from had has have he her his how i if in into is it its more most my no not of "
        "on one only or other our out over she so some such than that the their them then "
        "there these they this those through to under up us was we were what when where "
        "which while who will with would you your"
    ),
    "de": _words(
        "aber als am an auch auf aus bei bin bis da das dass dem den der des die dies "
        "diese dieser doch du durch ein eine einem einen einer eines er es für hat hatte "
        "ich ihr im in ist ja kann kein mit muss nach nicht noch nur oder sein sich sie "
        "sind so über um und uns unter vom von vor war was weil wenn werden wie wir wird "
        "wurde zu zum zur"
    ),
    "fr": _words(
        "à au aux avec ce ces cette comme dans de des du elle en est et été être il ils "
        "je la le les leur lui mais me même nous on ont ou où par pas plus pour qu que "
        "qui sa sans se ses son sont sur ta te tout très un une vous y"
    ),
    "es": _words(
        "a al como con cuando de del el ella en entre era es esta este esto está están "
        "fue ha hay la las le les lo los más muy no nos o para pero por porque que se ser "
        "si sin sobre son su sus también tiene un una uno y ya"
    ),
    "it": _words(
        "a al alla anche che chi ci come con da dal dalla degli dei del della delle di è "
        "ed gli ha hanno il in io la le lo ma molto nel nella non per più può quando "
        "questa questo se si sono su sua suo tra un una uno"
    ),
    "nl": _words(
        "aan al als bij dan dat de die dit door een en er had heeft het hij hun in is je "
        "kan maar met naar niet nog of om ons ook op over te tot uit van veel voor was "
        "wat we wel werd wij worden wordt zal ze zich zijn zo"
    ),
    "pt": _words(
        "a ao aos as com como da das de do dos e é ela ele em entre era está foi há isso "
        "já mais mas muito na nas não no nos o os ou para pela pelo por que se sem ser "
        "seu sua são também tem um uma você"
    ),
}
LANGUAGES = tuple(STOP_WORDS)
ALL_STOP_WORDS = frozenset().union(*STOP_WORDS.values())
_WORD_WEIGHTS: dict[str, dict[str, float]] = {}
for _lang, _profile in STOP_WORDS.items():
    for _w in _profile:
        _WORD_WEIGHTS.setdefault(_w, {})[_lang] = 0.0
for _w, _langs in _WORD_WEIGHTS.items():
    for _lang in _langs:
        _langs[_lang] = 1.0 / len(_langs)


_TOKEN = re.compile(r"[^\W\d_](?:[\w'’-]*[^\W_])?", re.UNICODE)
_PHRASE_BREAK = re.compile(r"[.,;:!?()\[\]{}\"“”«»„\n\r\t|/\\–—]+")
_TERMINAL = ".!?…:;"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])[\"'”»)]*\s+|\n{2,}")


_ELISION = re.compile(r"\b(qu|[cdjlmnst])['’](?=\w)", re.IGNORECASE)
MAX_PHRASE_WORDS = 3


def tokenize(text: str) -> list[str]:
    """Lower-cased words (letters, with inner apostrophes and hyphens); digits dropped;
    French/Italian elisions (l', d', qu') split off."""
    return [m.group(0).lower() for m in _TOKEN.finditer(_ELISION.sub(r"\1 ", text))]


def detect_language(tokens: Sequence[str]) -> tuple[str, float]:
    """The language of a token list and a confidence in [0, 1]; ``unknown`` when the text
    has too few stop words to tell."""
    if not tokens:
        return UNKNOWN_LANGUAGE, 0.0
    scores = dict.fromkeys(LANGUAGES, 0.0)
    hits = 0
    for token in tokens:
        weights = _WORD_WEIGHTS.get(token)
        if weights:
            hits += 1
            for lang, w in weights.items():
                scores[lang] += w
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    (best, top), (_, second) = ranked[0], ranked[1]
    if top < 1.5 or hits < 2:
        return UNKNOWN_LANGUAGE, 0.0
    margin = (top - second) / top
    coverage = min(1.0, hits / max(4.0, 0.25 * len(tokens)))
    confidence = round(min(1.0, 0.5 * margin + 0.5 * coverage) * min(1.0, top / 4.0), 4)
    if margin < 0.1:
        return UNKNOWN_LANGUAGE, confidence
    return best, confidence


def _stop_words_for(language: str) -> frozenset[str]:
    return STOP_WORDS.get(language, ALL_STOP_WORDS)


def keyword_scores(text: str, stop_words: frozenset[str]) -> dict[str, float]:
    """RAKE: candidate phrases are runs of content words between stop words and punctuation;
    a word scores degree / frequency, a phrase the sum of its words."""
    phrases: list[list[str]] = []

    def add(run: list[str]) -> None:
        # Long runs of content words become phrases of at most MAX_PHRASE_WORDS words.
        for start in range(0, len(run), MAX_PHRASE_WORDS):
            phrases.append(run[start : start + MAX_PHRASE_WORDS])

    for fragment in _PHRASE_BREAK.split(text):
        current: list[str] = []
        for token in tokenize(fragment):
            if token in stop_words or len(token) < 3:
                if current:
                    add(current)
                current = []
            else:
                current.append(token)
        if current:
            add(current)
    freq: Counter[str] = Counter()
    degree: Counter[str] = Counter()
    for phrase in phrases:
        for word in phrase:
            freq[word] += 1
            degree[word] += len(phrase)
    word_score = {w: degree[w] / freq[w] for w in freq}
    out: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for phrase in phrases:
        key = " ".join(phrase)
        counts[key] += 1
        out[key] = sum(word_score[w] for w in phrase)
    # A phrase that recurs is more likely a topic than one long phrase seen once.
    return {k: v * (1 + math.log(counts[k])) for k, v in out.items()}


def top_keywords(scores: Mapping[str, float], n: int) -> list[str]:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    out: list[str] = []
    for phrase, _ in ranked:
        if any(phrase in kept or kept in phrase for kept in out):
            continue
        out.append(phrase)
        if len(out) >= n:
            break
    return out


@lru_cache(maxsize=64)
def _compiled_taxonomy(
    taxonomy: tuple[tuple[str, tuple[str, ...]], ...],
) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Single-word keywords by word, and multi-word phrases, lower-cased."""
    words: dict[str, list[str]] = {}
    phrases: list[tuple[str, str]] = []
    for category, keywords in taxonomy:
        for kw in keywords:
            norm = " ".join(tokenize(kw))
            if not norm:
                continue
            if " " in norm:
                phrases.append((category, " ".join(stem(w) for w in norm.split())))
            else:
                cats = words.setdefault(stem(norm), [])
                if category not in cats:
                    cats.append(category)
    return words, phrases


def taxonomy_key(taxonomy: Mapping[str, Sequence[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((c, tuple(kws)) for c, kws in taxonomy.items())


_SUFFIXES = ("es", "en", "s", "e", "i", "a", "o", "n")


def stem(word: str) -> str:
    """A crude multilingual stem (one plural or gender ending off words of 4+ letters), so that
    "markets" meets "market" and "ospedali" meets "ospedale"."""
    if len(word) >= 4:
        for suffix in _SUFFIXES:
            if word.endswith(suffix):
                return word[: -len(suffix)]
    return word


def categorize(
    tokens: Sequence[str], taxonomy: Mapping[str, Sequence[str]]
) -> tuple[str, float, dict[str, float]]:
    """The best category, a confidence in [0, 1], and every category's score."""
    words, phrases = _compiled_taxonomy(taxonomy_key(taxonomy))
    scores: Counter[str] = Counter()
    for token in tokens:
        for c in words.get(stem(token), ()):
            scores[c] += 1.0
    if phrases:
        joined = " " + " ".join(stem(t) for t in tokens) + " "
        for category, phrase in phrases:
            n = joined.count(" " + phrase + " ")
            if n:
                scores[category] += 2.0 * n
    if not scores:
        return OTHER_CATEGORY, 0.0, {}
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    best, top = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    share = top / sum(scores.values())
    strength = 1.0 - math.exp(-top / 2.0)
    confidence = round(min(1.0, 0.6 * share + 0.4 * strength) * (1.0 if top > second else 0.6), 4)
    return best, confidence, {k: round(v, 3) for k, v in ranked}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


def summarize(
    text: str, word_scores: Mapping[str, float], max_chars: int, max_sentences: int
) -> str:
    """An extractive summary: the top-scored sentences, in their original order, at most
    ``max_chars`` characters."""
    sentences = split_sentences(" ".join(text.split("\n")) if "\n\n" not in text else text)
    sentences = [" ".join(s.split()) for s in sentences]
    if not sentences:
        return ""
    scored = []
    for index, sentence in enumerate(sentences):
        toks = tokenize(sentence)
        if not toks:
            continue
        score = sum(word_scores.get(t, 0.0) for t in toks) / math.sqrt(len(toks))
        score *= 1.25 if index == 0 else 1.0
        scored.append((score, index, sentence))
    scored.sort(key=lambda s: (-s[0], s[1]))
    chosen: list[tuple[int, str]] = []
    used = 0
    for _, index, sentence in scored:
        if len(chosen) >= max_sentences:
            break
        extra = len(sentence) + (1 if chosen else 0) + (sentence[-1] not in _TERMINAL)
        if used + extra > max_chars:
            continue
        chosen.append((index, sentence))
        used += extra
    if not chosen:
        first = scored[0][2] if scored else sentences[0]
        cut = first[: max(1, max_chars - 1)]
        if " " in cut[max_chars // 2 :]:
            cut = cut.rsplit(" ", 1)[0]
        return cut.rstrip(" ,;:") + "…"
    # A heading chosen next to a sentence gets a full stop, so the summary reads as prose.
    return " ".join(s if s[-1] in _TERMINAL else s + "." for _, s in sorted(chosen))


def _word_scores(phrase_scores: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for phrase, score in phrase_scores.items():
        words = phrase.split()
        for w in words:
            out[w] = max(out.get(w, 0.0), score / len(words))
    return out


def local_annotate(
    text: str,
    *,
    taxonomy: Mapping[str, Sequence[str]] | None = None,
    max_keywords: int = 8,
    summary_max_chars: int = 300,
    summary_max_sentences: int = 3,
) -> dict[str, Any]:
    """Annotate one text locally and deterministically (see the module docstring)."""
    taxonomy = DEFAULT_TAXONOMY if taxonomy is None else taxonomy
    tokens = tokenize(text)
    language, lang_conf = detect_language(tokens)
    phrase_scores = keyword_scores(text, _stop_words_for(language))
    keywords = top_keywords(phrase_scores, max_keywords)
    category, cat_conf, cat_scores = categorize(tokens, taxonomy)
    summary = summarize(text, _word_scores(phrase_scores), summary_max_chars, summary_max_sentences)
    length_factor = min(1.0, len(tokens) / 40.0)
    confidence = round(0.4 * lang_conf + 0.4 * cat_conf + 0.2 * length_factor, 4)
    return {
        "language": language,
        "language_confidence": lang_conf,
        "keywords": keywords,
        "category": category,
        "category_scores": cat_scores,
        "summary": summary,
        "confidence": max(0.0, min(1.0, confidence)),
    }


class LocalAnnotator(Annotator):
    """Deterministic local annotation: no network, thousands of short texts per second."""

    def waits_on_io(self) -> bool:
        return False  # pure Python: it holds the GIL

    def annotate(self, text: str, options: Any = None) -> dict[str, Any]:
        s = settings(options)
        out = local_annotate(text, **s)
        out["backend"] = "local"
        out["model"] = "local-rake-v1"
        return out
