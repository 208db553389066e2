"""Annotator backends for the annotate operation, behind one Dagster resource interface.

:class:`Annotator` is the interface (``annotate(text, options) -> dict``). Two backends:

- :class:`LocalAnnotator` (the default): deterministic, no network, thousands of short texts
  per second. Language from stop-word profiles, RAKE-style keywords, category from a keyword
  taxonomy, an extractive summary of the top-scored sentences, and a confidence.
- :class:`OpenAICompatibleAnnotator`: any OpenAI-compatible ``/chat/completions`` endpoint,
  asked for a JSON object. Base URL, model and key come from its fields or, when left unset,
  from ``BATCH_PIPELINES_LLM_BASE_URL`` / ``_MODEL`` / ``_API_KEY`` read when a request is
  made (never at import). It has a request timeout, a client-side rate limit (a token bucket
  shared by every thread of the process that talks to the same endpoint and model), and
  retries 429 and 5xx with exponential backoff honouring ``Retry-After``; when retries run
  out it raises :class:`TransientItemError`, so the item runner's retry policy applies.

:class:`AnnotatorResource` (the ``annotator`` resource in ``definitions.py``) picks one of the
two by its ``backend`` field, else ``BATCH_PIPELINES_ANNOTATOR`` (``local`` | ``openai``),
else ``local``.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from batch_pipelines.core.errors import ItemError, ItemTimeoutError, TransientItemError

ENV_BACKEND = "BATCH_PIPELINES_ANNOTATOR"
ENV_BASE_URL = "BATCH_PIPELINES_LLM_BASE_URL"
ENV_MODEL = "BATCH_PIPELINES_LLM_MODEL"
ENV_API_KEY = "BATCH_PIPELINES_LLM_API_KEY"

UNKNOWN_LANGUAGE = "unknown"
OTHER_CATEGORY = "other"


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


def _keywords(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


DEFAULT_TAXONOMY: dict[str, list[str]] = {
    "finance": _keywords(
        "bank, banking, market, stock, shares, investor, inflation, interest rate, "
        "revenue, profit, budget, tax, invoice, payment, price, euro, dollar, banque, "
        "marché, prix, bourse, banco, mercado, precio, inflación, geld, markt, preis, "
        "zinsen, aktien, mercato, prezzo, rente"
    ),
    "technology": _keywords(
        "software, computer, data, cloud, algorithm, network, internet, app, digital, ai, "
        "machine learning, database, server, code, developer, technologie, daten, "
        "rechenzentrum, logiciel, données, tecnología, datos, tecnologia, dati, gegevens, "
        "dados, programma"
    ),
    "sports": _keywords(
        "match, team, goal, season, league, player, coach, championship, cup, tournament, "
        "race, football, soccer, tennis, score, équipe, joueur, saison, equipo, "
        "partido, jugador, liga, mannschaft, spiel, spieler, squadra, partita, "
        "campionato, wedstrijd, ploeg, jogo"
    ),
    "health": _keywords(
        "health, patient, doctor, hospital, disease, vaccine, treatment, medical, "
        "symptom, clinic, medicine, nurse, santé, médecin, hôpital, maladie, salud, "
        "médico, hospital, enfermedad, gesundheit, arzt, krankenhaus, salute, medico, "
        "ospedale, gezondheid, ziekenhuis, saúde, doença"
    ),
    "politics": _keywords(
        "government, election, minister, parliament, policy, vote, president, law, party, "
        "senate, gouvernement, élection, ministre, gobierno, elecciones, regierung, wahl, "
        "bundestag, governo, elezioni, regering, verkiezingen, eleição"
    ),
    "science": _keywords(
        "research, study, scientist, experiment, species, climate, physics, biology, "
        "chemistry, laboratory, university, discovery, recherche, scientifique, "
        "investigación, forschung, wissenschaft, ricerca, onderzoek, wetenschap, "
        "pesquisa, cientistas, penguin, pinguïns, klimaat"
    ),
    "travel": _keywords(
        "travel, hotel, flight, airport, tourist, tourism, trip, beach, museum, voyage, "
        "vacances, viaje, turismo, reise, urlaub, viaggio, turisti, reis, viagem, "
        "ferry"
    ),
    "customer_support": _keywords(
        "order, refund, delivery, complaint, customer, support, account, password, "
        "shipping, ticket, commande, remboursement, pedido, reembolso, "
        "bestellung, lieferung, ordine, rimborso, bestelling, encomenda"
    ),
}

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


def _settings(options: Any) -> dict[str, Any]:
    if isinstance(options, Mapping):
        raw = dict(options)
    elif hasattr(options, "model_dump"):
        raw = options.model_dump()
    else:
        raw = {}
    return {
        "taxonomy": raw.get("taxonomy") or DEFAULT_TAXONOMY,
        "max_keywords": int(raw.get("max_keywords") or 8),
        "summary_max_chars": int(raw.get("summary_max_chars") or 300),
        "summary_max_sentences": int(raw.get("summary_max_sentences") or 3),
    }


class Annotator(ConfigurableResource, ABC):
    """The annotator interface: ``annotate(text, options)`` returns a dict with language,
    language_confidence, keywords, category, category_scores, summary, confidence, backend
    and model. ``options`` is the batch's annotate options (taxonomy, max_keywords,
    summary_max_chars, summary_max_sentences)."""

    @abstractmethod
    def annotate(self, text: str, options: Any = None) -> dict[str, Any]: ...


class LocalAnnotator(Annotator):
    """Deterministic local annotation: no network, thousands of short texts per second."""

    def annotate(self, text: str, options: Any = None) -> dict[str, Any]:
        s = _settings(options)
        out = local_annotate(text, **s)
        out["backend"] = "local"
        out["model"] = "local-rake-v1"
        return out


# --- OpenAI-compatible HTTP backend --------------------------------------------------------


class TokenBucket:
    """A thread-safe token bucket: ``rate_per_minute`` tokens per minute, at most ``burst``
    saved up. ``acquire`` reserves a token (the balance may go negative) and sleeps until the
    reservation is due, so concurrent callers are served in order without busy waiting.
    ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        rate_per_minute: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate = rate_per_minute / 60.0
        self.capacity = float(max(1, burst))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; returns how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> float:
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


_BUCKETS: dict[tuple[str, str, float, int], TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def shared_bucket(base_url: str, model: str, rpm: float, burst: int) -> TokenBucket:
    """The process-wide bucket for one endpoint and model, so every thread of a run shares
    one limit."""
    key = (base_url, model, float(rpm), int(burst))
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get(key)
        if bucket is None:
            bucket = _BUCKETS[key] = TokenBucket(rpm, burst)
        return bucket


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def extract_json_object(content: str) -> dict[str, Any]:
    """The first JSON object in a model's reply: plain JSON, JSON in a code fence, or JSON
    surrounded by prose."""
    text = content.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    if fence:
        text = fence.group(1).strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"no JSON object in the reply: {content[:200]!r}")


def normalize_reply(reply: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce a model's JSON into the annotation shape, tolerating missing or odd fields."""
    language = str(reply.get("language") or UNKNOWN_LANGUAGE).strip().lower()[:16]
    if language not in LANGUAGES:
        language = language if re.fullmatch(r"[a-z]{2,3}", language) else UNKNOWN_LANGUAGE
    raw_keywords = reply.get("keywords") or reply.get("tags") or []
    if isinstance(raw_keywords, str):
        raw_keywords = [k for k in re.split(r"[,;\n]", raw_keywords)]
    keywords = []
    for k in raw_keywords if isinstance(raw_keywords, list) else []:
        k = " ".join(str(k).split()).lower()
        if k and k not in keywords:
            keywords.append(k[:100])
    keywords = keywords[: settings["max_keywords"]]
    categories = set(settings["taxonomy"])
    category = str(reply.get("category") or OTHER_CATEGORY).strip()
    if category not in categories:
        lowered = {c.lower(): c for c in categories}
        category = lowered.get(category.lower(), OTHER_CATEGORY)
    summary = " ".join(str(reply.get("summary") or "").split())
    limit = settings["summary_max_chars"]
    if len(summary) > limit:
        summary = summary[: limit - 1].rsplit(" ", 1)[0] + "…"
    try:
        confidence = float(reply.get("confidence", 0.5))
    except (TypeError, ValueError):
        confidence = 0.5
    if math.isnan(confidence):
        confidence = 0.5
    confidence = max(0.0, min(1.0, confidence))
    return {
        "language": language,
        "language_confidence": confidence,
        "keywords": keywords,
        "category": category,
        "category_scores": {},
        "summary": summary,
        "confidence": round(confidence, 4),
    }


SYSTEM_PROMPT = (
    "You annotate documents. Reply with one JSON object only, no prose, with the keys: "
    '"language" (ISO 639-1 code), "keywords" (list of at most {max_keywords} short key '
    'phrases), "category" (exactly one of: {categories}), "summary" (an extractive summary '
    'of at most {summary_max_chars} characters, copied from the text), "confidence" (a number '
    "from 0 to 1: how sure you are of the category)."
)


class OpenAICompatibleAnnotator(Annotator):
    """Annotation by an OpenAI-compatible chat-completions endpoint.

    ``base_url`` (e.g. ``https://api.openai.com/v1``), ``model`` and ``api_key`` default to
    ``BATCH_PIPELINES_LLM_BASE_URL``, ``BATCH_PIPELINES_LLM_MODEL`` and
    ``BATCH_PIPELINES_LLM_API_KEY``, read at request time; pass ``EnvVar("...")`` to name
    other variables.
    """

    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1")
    model: str | None = None
    api_key: str | None = None
    request_timeout_s: float = Field(30.0, gt=0, le=600)
    requests_per_minute: float = Field(60.0, gt=0, description="Client-side rate limit")
    burst: int = Field(1, ge=1, description="Requests that may go at once after a pause")
    max_retries: int = Field(4, ge=0, le=20, description="Retries on 429 and 5xx")
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_retry_after_s: float = Field(120.0, ge=0, description="Longest Retry-After honoured")
    max_input_chars: int = Field(12000, ge=100, description="Longer texts are truncated")
    temperature: float = 0.0
    json_mode: bool = Field(True, description="Send response_format json_object")

    def resolved(self) -> tuple[str, str, str | None]:
        base_url = self.base_url or os.environ.get(ENV_BASE_URL)
        model = self.model or os.environ.get(ENV_MODEL)
        api_key = self.api_key or os.environ.get(ENV_API_KEY)
        if not base_url:
            raise ItemError(
                f"annotator backend openai: no base URL (set {ENV_BASE_URL} or the resource's "
                "base_url)",
                category="permanent",
            )
        if not model:
            raise ItemError(
                f"annotator backend openai: no model (set {ENV_MODEL} or the resource's model)",
                category="permanent",
            )
        return base_url.rstrip("/"), model, api_key

    def _request_body(self, model: str, text: str, s: Mapping[str, Any]) -> dict[str, Any]:
        system = SYSTEM_PROMPT.format(
            max_keywords=s["max_keywords"],
            categories=", ".join([*s["taxonomy"], OTHER_CATEGORY]),
            summary_max_chars=s["summary_max_chars"],
        )
        body: dict[str, Any] = {
            "model": model,
            "temperature": self.temperature,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": text[: self.max_input_chars]},
            ],
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return delay

    def post(
        self, url: str, body: dict[str, Any], api_key: str | None, bucket: TokenBucket
    ) -> dict[str, Any]:
        """POST with rate limit and retries; returns the decoded JSON response."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        last = ""
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            retry_after = None
            bucket.acquire()
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                exc.close()
                if exc.code == 429 or exc.code >= 500:
                    retry_after = parse_retry_after(exc.headers.get("Retry-After"))
                    last = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
                    continue
                raise ItemError(
                    f"annotator backend {url} returned HTTP {exc.code}: {detail}",
                    category="permanent",
                ) from None
            except TimeoutError as exc:
                raise ItemTimeoutError(
                    f"annotator backend {url} did not answer within {self.request_timeout_s:g}s"
                ) from exc
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, TimeoutError):
                    raise ItemTimeoutError(
                        f"annotator backend {url} did not answer within {self.request_timeout_s:g}s"
                    ) from exc
                raise TransientItemError(
                    f"annotator backend {url} is unreachable: {exc.reason}"
                ) from exc
            except (ConnectionError, OSError) as exc:
                raise TransientItemError(
                    f"annotator backend {url} dropped the connection: {exc}"
                ) from exc
            try:
                return json.loads(raw)
            except ValueError:
                raise ItemError(
                    f"annotator backend {url} returned a non-JSON response: {raw[:200]!r}",
                    category="permanent",
                ) from None
        raise TransientItemError(
            f"annotator backend {url} still failing after {self.max_retries + 1} attempts "
            f"(last: {last})"
        )

    def annotate(self, text: str, options: Any = None) -> dict[str, Any]:
        s = _settings(options)
        base_url, model, api_key = self.resolved()
        bucket = shared_bucket(base_url, model, self.requests_per_minute, self.burst)
        url = f"{base_url}/chat/completions"
        response = self.post(url, self._request_body(model, text, s), api_key, bucket)
        try:
            content = response["choices"][0]["message"]["content"]
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            reply = extract_json_object(str(content))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ItemError(
                f"annotator backend {url} gave an unusable answer: {exc}", category="permanent"
            ) from None
        out = normalize_reply(reply, s)
        out["backend"] = "openai"
        out["model"] = model
        return out


class AnnotatorResource(Annotator):
    """The ``annotator`` resource: ``backend`` (``local`` | ``openai``) picks the backend;
    unset, ``BATCH_PIPELINES_ANNOTATOR`` decides at run time (default ``local``). The other
    fields configure the openai backend (unset ones come from the environment)."""

    backend: str | None = Field(
        None, description="local | openai (default: $BATCH_PIPELINES_ANNOTATOR or local)"
    )
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    request_timeout_s: float = 30.0
    requests_per_minute: float = 60.0
    burst: int = 1
    max_retries: int = 4

    def backend_name(self) -> str:
        name = (self.backend or os.environ.get(ENV_BACKEND) or "local").strip().lower()
        if name not in ("local", "openai"):
            raise ItemError(
                f"annotator backend {name!r} is not one of local, openai "
                f"(resource field backend or {ENV_BACKEND})",
                category="permanent",
            )
        return name

    def delegate(self) -> Annotator:
        if self.backend_name() == "local":
            return LocalAnnotator()
        return OpenAICompatibleAnnotator(
            base_url=self.base_url,
            model=self.model,
            api_key=self.api_key,
            request_timeout_s=self.request_timeout_s,
            requests_per_minute=self.requests_per_minute,
            burst=self.burst,
            max_retries=self.max_retries,
        )

    def annotate(self, text: str, options: Any = None) -> dict[str, Any]:
        return self.delegate().annotate(text, options)
