"""The annotate operation and its backends.

Guards against: a local annotator that is not deterministic or mislabels the bundled texts;
HTML/Markdown noise (scripts, code, markup) leaking into annotations; table rows read with
unbound values or unchecked names; an HTTP backend that hangs, gives up too early on 429/5xx,
ignores Retry-After, exceeds its rate limit across threads, reads its settings at import
time, or turns one bad item into a failed batch; re-runs that duplicate annotation rows.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey

from batch_pipelines.core import http, limits, warehouse
from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import (
    NOT_FOUND,
    TIMEOUT,
    TRANSIENT,
    ItemError,
    ItemTimeoutError,
    TransientItemError,
    ValidationItemError,
    classify,
)
from batch_pipelines.defs import resources as R
from batch_pipelines.operations.annotate.backends import local as L
from batch_pipelines.operations.annotate.backends import openai as O
from batch_pipelines.operations.annotate.handler import (
    handle_annotate,
    html_to_text,
    markdown_to_text,
)
from batch_pipelines.operations.annotate.models import AnnotateItem, AnnotateOptions
from batch_pipelines_tests.helpers import cli, item_context, run_batch, run_item

# --- the local annotator ---------------------------------------------------------------


SENTENCES = {
    "en": "The team said that the new policy will be in place by the end of the year, and "
    "that it has been discussed with all of the staff.",
    "de": "Die Stadt hat am Montag mitgeteilt, dass die neue Brücke nicht vor dem Sommer "
    "fertig wird, weil die Arbeiten noch dauern.",
    "fr": "La ville a annoncé que le nouveau pont ne sera pas prêt avant l'été, car les "
    "travaux sont plus longs que prévu.",
    "es": "La ciudad anunció que el nuevo puente no estará listo antes del verano, porque "
    "las obras son más largas de lo previsto.",
    "it": "La città ha annunciato che il nuovo ponte non sarà pronto prima dell'estate, "
    "perché i lavori sono più lunghi del previsto.",
    "nl": "De stad heeft maandag gezegd dat de nieuwe brug niet voor de zomer klaar is, "
    "omdat het werk langer duurt dan verwacht.",
    "pt": "A cidade anunciou que a nova ponte não estará pronta antes do verão, porque as "
    "obras são mais longas do que o previsto.",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_language_detection(lang: str) -> None:
    found, confidence = L.detect_language(L.tokenize(SENTENCES[lang]))
    assert found == lang
    assert 0 < confidence <= 1


def test_unknown_language_and_empty_text() -> None:
    assert L.detect_language(L.tokenize("Xylophone quartz jumps 42 1234"))[0] == "unknown"
    assert L.detect_language([]) == ("unknown", 0.0)
    out = L.local_annotate("zzz")
    assert out["language"] == "unknown" and out["category"] == "other"
    assert 0 <= out["confidence"] <= 1


def test_bundled_texts_are_labelled(samples: Path) -> None:
    expected = {
        "en_markets.txt": ("en", "finance"),
        "de_rechenzentrum.md": ("de", "technology"),
        "fr_football.html": ("fr", "sports"),
        "es_salud.txt": ("es", "health"),
        "it_viaggio.md": ("it", "travel"),
        "nl_klimaat.html": ("nl", "science"),
        "pt_governo.txt": ("pt", "politics"),
    }
    for name, (lang, category) in expected.items():
        raw = (samples / "texts" / name).read_text(encoding="utf-8")
        text = (
            html_to_text(raw)
            if name.endswith(".html")
            else markdown_to_text(raw)
            if name.endswith(".md")
            else raw
        )
        out = L.LocalAnnotator().annotate(text)
        assert (out["language"], out["category"]) == (lang, category), (name, out)
        assert out["keywords"] and len(out["keywords"]) <= 8
        assert out["confidence"] > 0.5
        assert out["backend"] == "local"


def test_keywords_summary_and_determinism() -> None:
    text = (
        "Machine learning models need clean data. Data pipelines move data from sources to "
        "the warehouse every night. When the pipeline fails, machine learning models see "
        "stale data. Engineers therefore monitor pipelines closely."
    )
    first = L.local_annotate(text, max_keywords=3, summary_max_chars=120)
    assert first == L.local_annotate(text, max_keywords=3, summary_max_chars=120)
    assert len(first["keywords"]) == 3
    assert any("machine learning" in k for k in first["keywords"])
    assert len(first["summary"]) <= 120 and first["summary"] in text or first["summary"]
    for sentence in first["summary"].split(". "):
        assert sentence.rstrip(".") in text
    long_sentence = "word " * 200
    short = L.local_annotate(long_sentence, summary_max_chars=50)["summary"]
    assert len(short) <= 50 and short.endswith("…")


def test_custom_taxonomy_and_phrases() -> None:
    taxonomy = {"penguins": ["penguin", "flipper length"], "birds": ["bird", "feather"]}
    out = L.local_annotate(
        "Penguins are birds. The flipper length of each penguin was measured.",
        taxonomy=taxonomy,
    )
    assert out["category"] == "penguins"
    assert out["category_scores"]["penguins"] > out["category_scores"]["birds"]
    assert L.local_annotate("Nothing matches here.", taxonomy=taxonomy)["category"] == "other"


def test_html_and_markdown_are_reduced_to_prose() -> None:
    html = (
        "<html><head><title>T</title><style>p{}</style><script>alert('x')</script></head>"
        "<body><h1>Heading</h1><p>First &amp; second.</p><ul><li>Item</li></ul></body></html>"
    )
    text = html_to_text(html)
    assert "alert" not in text and "p{}" not in text and "<" not in text
    assert "First & second." in text and "Heading" in text and "Item" in text
    md = "# Title\n\nSome **bold** and [a link](http://x.y).\n\n```\ncode here\n```\n- item one\n"
    text = markdown_to_text(md)
    assert "code here" not in text and "**" not in text and "http" not in text
    assert "Title." in text and "Some bold and a link." in text and "item one" in text


def test_local_annotator_throughput() -> None:
    texts = [f"{SENTENCES[lang]} Item {i}." for i in range(300) for lang in sorted(SENTENCES)]
    annotator = L.LocalAnnotator()
    started = time.perf_counter()
    for text in texts:
        annotator.annotate(text)
    rate = len(texts) / (time.perf_counter() - started)
    print(f"\nlocal annotator: {rate:,.0f} short texts per second ({len(texts)} texts)")


# --- item and options models -----------------------------------------------------------------


def test_item_model() -> None:
    assert AnnotateItem(text="hello").text == "hello"
    row = AnnotateItem(table="docs", id_column="id", id_value=7, text_column="body")
    assert row.id == "docs:7" and row.id_value == 7
    with pytest.raises(ValueError, match="exactly one source"):
        AnnotateItem(text="a", path="b")
    with pytest.raises(ValueError, match="exactly one source"):
        AnnotateItem()
    with pytest.raises(ValueError, match="also needs id_value, text_column"):
        AnnotateItem(table="docs", id_column="id")
    with pytest.raises(ValueError, match="not a valid name"):
        AnnotateItem(table="docs", id_column="id; drop table x", id_value=1, text_column="b")
    with pytest.raises(ValueError, match="text is empty"):
        AnnotateItem(text="   ")
    with pytest.raises(ValueError, match="needs a non-empty list"):
        AnnotateOptions(taxonomy={"a": []})
    with pytest.raises(ValueError, match="extra"):
        AnnotateOptions(unknown=1)


# --- handler unit tests --------------------------------------------------------------------


def make_ctx(env, payload: dict, annotator: Any = None, **options: Any) -> ItemContext:  # noqa: ANN001
    resources = {"annotator": annotator or L.LocalAnnotator()}
    return item_context(env, "annotate", payload, options, resources=resources)


def commit(env, ctx: ItemContext) -> dict:  # noqa: ANN001
    return run_item(env, "annotate", ctx).metrics


def test_handler_inline_file_and_row(env, samples: Path) -> None:  # noqa: ANN001
    metrics = commit(env, make_ctx(env, {"id": "t1", "text": SENTENCES["fr"]}))
    assert metrics["language"] == "fr" and metrics["source"] == "inline"
    commit(env, make_ctx(env, {"id": "t1", "text": SENTENCES["fr"]}))  # a re-run replaces
    metrics = commit(env, make_ctx(env, {"id": "f1", "path": "data/samples/texts/nl_klimaat.html"}))
    assert metrics["format"] == "html" and metrics["category"] == "science"
    with warehouse.connect(env.warehouse) as con:
        con.execute("create table docs (doc_id integer, body varchar)")
        con.execute(
            "insert into docs values (1, ?), (2, NULL), (3, ?), (3, 'dup')",
            [SENTENCES["es"], SENTENCES["it"]],
        )
    metrics = commit(
        env,
        make_ctx(
            env, {"table": "docs", "id_column": "doc_id", "id_value": "1", "text_column": "body"}
        ),
    )
    assert metrics["language"] == "es" and metrics["source_ref"] == "docs.body[1]"
    rows = env.sql(
        "select item_id, source, language, json_array_length(keywords) > 0, confidence "
        "from annotations order by item_id"
    )
    assert [r[:3] for r in rows] == [
        ("docs:1", "row", "es"),
        ("f1", "file", "nl"),
        ("t1", "inline", "fr"),
    ]
    assert all(r[3] and 0 < r[4] <= 1 for r in rows)


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (
            {"table": "nope", "id_column": "id", "id_value": 1, "text_column": "t"},
            ValidationItemError,
            "table 'nope' does not exist",
        ),
        (
            {"table": "docs", "id_column": "doc_id", "id_value": 9, "text_column": "body"},
            ItemError,
            "no row in docs where doc_id = 9",
        ),
        (
            {"table": "docs", "id_column": "doc_id", "id_value": 2, "text_column": "body"},
            ValidationItemError,
            "is NULL",
        ),
        (
            {"table": "docs", "id_column": "doc_id", "id_value": 3, "text_column": "body"},
            ValidationItemError,
            "more than one row",
        ),
        (
            {"table": "docs", "id_column": "nope", "id_value": 3, "text_column": "body"},
            ValidationItemError,
            "nope",
        ),
        (
            {"table": "docs", "id_column": "doc_id", "id_value": "x", "text_column": "body"},
            ValidationItemError,
            "does not fit column doc_id",
        ),
        ({"path": "/etc/hostname"}, ValidationItemError, "outside the allowed roots"),
        ({"path": "data/../../../etc/passwd"}, ValidationItemError, "outside the allowed roots"),
        ({"path": "data/samples/bad/garbage.bin"}, ValidationItemError, "binary"),
        ({"path": "data/samples/nope.txt"}, ValidationItemError, "does not exist"),
    ],
)
def test_handler_bad_inputs(env, samples: Path, payload: dict, error: type, match: str) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute("create table docs (doc_id integer, body varchar)")
        con.execute("insert into docs values (2, NULL), (3, 'a'), (3, 'b')")
    with pytest.raises(error, match=match) as info:
        handle_annotate(make_ctx(env, payload))
    if "no row" in match:
        assert info.value.category == NOT_FOUND


# --- the OpenAI-compatible backend against a local server ------------------------------------


def completion(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


GOOD_REPLY = {
    "language": "EN",
    "keywords": ["Interest Rates", "inflation", "inflation"],
    "category": "Finance",
    "summary": "Rates stay.",
    "confidence": 0.9,
}


class FakeLLM:
    """A scripted OpenAI-compatible server on 127.0.0.1: each request takes the next step of
    ``script`` (status, headers, body) or ``"hang"``; when the script is empty, ``default``."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.default: Any = (200, {}, completion(json.dumps(GOOD_REPLY)))
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                    )
                    step = fake.script.pop(0) if fake.script else fake.default
                if callable(step):
                    step = step(body)
                if step == "hang":
                    fake.release.wait(10)
                    return
                status, headers, payload = step
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm(env) -> Iterator[FakeLLM]:  # noqa: ANN001 - env: the shared HTTP limits live in its data root
    server = FakeLLM()
    yield server
    server.close()


def http_annotator(url: str, **kw: Any) -> O.OpenAICompatibleAnnotator:
    settings = {
        "base_url": url,
        "model": "test-model",
        "api_key": "sk-test",
        "request_timeout_s": 2.0,
        "requests_per_minute": 60000,
        "burst": 100,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    settings.update(kw)
    return O.OpenAICompatibleAnnotator(**settings)


def test_http_normal_response(llm: FakeLLM) -> None:
    llm.default = (
        200,
        {},
        completion("Sure! ```json\n" + json.dumps(GOOD_REPLY) + "\n``` Hope that helps."),
    )
    out = http_annotator(llm.url).annotate("Rates stay where they are.", {"max_keywords": 5})
    assert out["language"] == "en" and out["category"] == "finance"
    assert out["keywords"] == ["interest rates", "inflation"]
    assert out["confidence"] == 0.9 and out["backend"] == "openai" and out["model"] == "test-model"
    (req,) = llm.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["model"] == "test-model" and req["response_format"] == {"type": "json_object"}
    assert "finance" in req["messages"][0]["content"]
    assert req["messages"][1]["content"] == "Rates stay where they are."


def test_completions_url_keeps_the_query_after_the_path() -> None:
    assert O.completions_url("https://h/v1") == "https://h/v1/chat/completions"
    assert (
        O.completions_url("https://h/openai/deployments/d/?api-version=2024-06-01")
        == "https://h/openai/deployments/d/chat/completions?api-version=2024-06-01"
    )


def test_http_429_storm_then_success(llm: FakeLLM) -> None:
    llm.script = [(429, {"Retry-After": "0"}, {"error": "slow down"})] * 3
    out = http_annotator(llm.url, max_retries=4).annotate("text")
    assert out["category"] == "finance" and len(llm.requests) == 4


def test_http_429_forever_is_transient(llm: FakeLLM) -> None:
    llm.default = (429, {"Retry-After": "0"}, {"error": "slow down"})
    with pytest.raises(TransientItemError, match="after 3 attempts.*HTTP 429") as info:
        http_annotator(llm.url, max_retries=2).annotate("text")
    assert classify(info.value).retryable and len(llm.requests) == 3


def test_http_5xx_retried_then_transient(llm: FakeLLM) -> None:
    llm.script = [(503, {}, {"error": "down"}), (500, {}, b"oops")]
    assert http_annotator(llm.url).annotate("text")["category"] == "finance"
    assert len(llm.requests) == 3
    llm.default = (502, {}, {"error": "bad gateway"})
    with pytest.raises(TransientItemError, match="HTTP 502"):
        http_annotator(llm.url, max_retries=1).annotate("text")


def test_http_client_errors_and_bad_answers_are_permanent(llm: FakeLLM) -> None:
    llm.script = [(401, {}, {"error": "bad key"})]
    with pytest.raises(ItemError, match="HTTP 401.*bad key") as info:
        http_annotator(llm.url).annotate("text")
    assert info.value.category == "permanent" and len(llm.requests) == 1
    llm.script = [(200, {}, completion("I cannot answer in JSON, sorry."))]
    with pytest.raises(ItemError, match="unusable answer.*no JSON object"):
        http_annotator(llm.url).annotate("text")
    llm.script = [(200, {}, {"unexpected": True})]
    with pytest.raises(ItemError, match="unusable answer"):
        http_annotator(llm.url).annotate("text")


def test_http_hanging_response_times_out(llm: FakeLLM) -> None:
    llm.script = ["hang"]
    with pytest.raises(ItemTimeoutError, match="did not answer within 0.3s") as info:
        http_annotator(llm.url, request_timeout_s=0.3).annotate("text")
    c = classify(info.value)
    assert c.category == TIMEOUT and c.retryable


def test_http_unreachable_backend(env) -> None:  # noqa: ANN001
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientItemError, match="unreachable") as info:
        http_annotator(f"http://127.0.0.1:{port}/v1").annotate("text")
    assert classify(info.value).category == TRANSIENT


def test_http_missing_settings_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (O.ENV_BASE_URL, O.ENV_MODEL, O.ENV_API_KEY):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ItemError, match="BATCH_PIPELINES_LLM_BASE_URL"):
        O.OpenAICompatibleAnnotator().annotate("x")
    monkeypatch.setenv(O.ENV_BASE_URL, "http://127.0.0.1:1")
    with pytest.raises(ItemError, match="BATCH_PIPELINES_LLM_MODEL"):
        O.OpenAICompatibleAnnotator().annotate("x")


def test_bad_limit_setting_fails_the_item_naming_it(
    llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(limits.ENV_MAX_IN_FLIGHT, "lots")
    with pytest.raises(
        ItemError, match="BATCH_PIPELINES_LLM_MAX_IN_FLIGHT must be a whole"
    ) as info:
        http_annotator(llm.url, requests_per_minute=None).annotate("text")
    assert info.value.category == "permanent" and llm.requests == []


def test_resource_reads_environment_at_run_time(
    llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(R.ENV_BACKEND, raising=False)
    resource = R.AnnotatorResource()  # built before the environment is set
    assert resource.annotate("The bank raised rates.")["backend"] == "local"
    monkeypatch.setenv(R.ENV_BACKEND, "openai")
    monkeypatch.setenv(O.ENV_BASE_URL, llm.url)
    monkeypatch.setenv(O.ENV_MODEL, "env-model")
    monkeypatch.setenv(O.ENV_API_KEY, "sk-env")
    out = resource.annotate("The bank raised rates.")
    assert out["backend"] == "openai" and out["model"] == "env-model"
    assert llm.requests[-1]["auth"] == "Bearer sk-env"
    monkeypatch.setenv(R.ENV_BACKEND, "gpt")
    with pytest.raises(ItemError, match="not one of local, openai"):
        resource.annotate("x")


def test_retry_after_and_backoff() -> None:
    assert http.parse_retry_after("7") == 7.0
    assert http.parse_retry_after(None) is None and http.parse_retry_after("soon") is None
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert http.parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    annotator = http_annotator("http://x", backoff_base_s=1, backoff_max_s=8, max_retry_after_s=60)
    policy = dataclasses.replace(annotator.retry_policy(), jitter=0)
    assert [policy.delay(n, None) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    assert policy.delay(1, 30.0) == 30.0  # Retry-After wins when longer
    assert policy.delay(1, 600.0) == 60.0  # but is capped
    jittered = annotator.retry_policy()  # 25% of each backoff is taken off at random
    assert all(0.75 * b <= jittered.delay(n) <= b for n, b in ((1, 1), (3, 4), (5, 8)))
    assert jittered.delay(3, rand=lambda: 1.0) == 3.0


class Flood:
    """A server on 127.0.0.1 that answers every request with an endless body of JSON-ish bytes,
    chunked (``length`` None) or under a ``Content-Length: length`` that lies, and counts the
    bytes it managed to send before the client hung up."""

    CHUNK = 64 * 1024

    def __init__(self, length: int | None, limit: int = 512 * 1024 * 1024) -> None:
        self.sent = 0
        self.done = threading.Event()
        flood = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                data = b'{"choices": [' + b" " * (flood.CHUNK - 13)
                try:
                    while flood.sent < limit:
                        if length is None:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        else:
                            self.wfile.write(data)
                        flood.sent += len(data)
                        data = b" " * flood.CHUNK
                except OSError:  # the client hung up, as it should
                    pass
                finally:
                    flood.done.set()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("length", "error"),
    [
        (None, "response is larger than the 8388608 bytes accepted"),
        (2**40, "response of 1099511627776 bytes is larger than the 8388608 accepted"),
        (4096, "returned a non-JSON response"),  # the body goes on past what it declared
    ],
    ids=["chunked", "content-length-too-big", "content-length-lies-small"],
)
def test_asset_oversized_llm_response_fails_the_item_unread(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    length: int | None,
    error: str,
) -> None:
    flood = Flood(length)
    monkeypatch.setenv(R.ENV_BACKEND, "openai")
    monkeypatch.setenv(O.ENV_BASE_URL, flood.url)
    monkeypatch.setenv(O.ENV_MODEL, "m")
    try:
        batch = run_batch({"operation": "annotate", "items": [{"id": "a", "text": "t"}]}, instance)
        assert flood.done.wait(10), "the client never hung up"
    finally:
        flood.close()
    assert batch["failed_items"] == 1
    (row,) = env.sql("select attempts, error_category, error from batch_items")
    assert row[:2] == (1, "permanent") and error in row[2], row
    # What the sender got into the socket before the client hung up: the cap and the kernel's
    # buffers, not the 512 MiB on offer.
    assert flood.sent < 48 * 1024 * 1024, flood.sent


# --- through the asset (submit + run in process) ---------------------------------------------


def test_asset_batch_with_bad_items(env, samples: Path, instance) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute("create table articles (id varchar, body varchar)")
        con.execute("insert into articles values ('a1', ?)", [SENTENCES["de"]])
    batch = run_batch(
        {
            "operation": "annotate",
            "options": {"max_keywords": 4},
            "settings": {"chunk_size": 3, "max_retries": 0},
            "items": [
                {"id": "inline", "text": SENTENCES["en"]},
                {"path": "data/samples/texts/fr_football.html"},
                {"path": "data/samples/texts/it_viaggio.md"},
                {"table": "articles", "id_column": "id", "id_value": "a1", "text_column": "body"},
                {"table": "missing", "id_column": "id", "id_value": "a1", "text_column": "body"},
            ],
        },
        instance,
    )
    assert batch["status"] == "completed_with_errors"
    assert (batch["succeeded_items"], batch["failed_items"]) == (4, 1)
    failed = env.sql(
        "select item_id, error_category, error from batch_items where status = 'failed'"
    )
    assert failed == [("missing:a1", "validation", "table 'missing' does not exist")]
    rows = env.sql(
        "select a.language, a.category, i.quality_score = a.confidence from annotations a "
        "join batch_items i using (batch_id, item_id) order by a.language"
    )
    assert rows == [
        ("de", "other", True),
        ("en", "politics", True),
        ("fr", "sports", True),
        ("it", "travel", True),
    ]
    keys = instance.get_dynamic_partitions("annotate_items")
    assert len(keys) == 5


def test_asset_http_backend_failure_is_per_item(
    env,
    instance,
    llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    def answer(body: dict) -> Any:
        if "FAIL" in body["messages"][1]["content"]:
            return (503, {"Retry-After": "0"}, {"error": "overloaded"})
        return (200, {}, completion(json.dumps(GOOD_REPLY)))

    llm.default = answer
    # The resource comes from definitions.py (4 retries with 1 s base backoff): no real waits
    # here. Its 12 requests fit in the endpoint's burst (16 at the default 600 per minute).
    monkeypatch.setattr(http.Retry, "delay", lambda self, n, ra=None, rand=None: 0.0)
    monkeypatch.setenv(R.ENV_BACKEND, "openai")
    monkeypatch.setenv(O.ENV_BASE_URL, llm.url)
    monkeypatch.setenv(O.ENV_MODEL, "m")
    monkeypatch.setenv(O.ENV_API_KEY, "k")
    monkeypatch.delenv(limits.ENV_MAX_IN_FLIGHT, raising=False)
    batch = run_batch(
        {
            "operation": "annotate",
            "settings": {"max_retries": 1, "retry_base_delay_s": 0},
            "items": [
                {"id": "ok1", "text": "first"},
                {"id": "bad", "text": "FAIL please"},
                {"id": "ok2", "text": "second"},
            ],
        },
        instance,
    )
    assert (batch["succeeded_items"], batch["failed_items"]) == (2, 1)
    (row,) = env.sql(
        "select item_id, attempts, error_category, error from batch_items where status = 'failed'"
    )
    assert row[:3] == ("bad", 2, "transient") and "after 5 attempts (last: HTTP 503" in row[3]
    assert len([r for r in llm.requests if "FAIL" in r["messages"][1]["content"]]) == 10
    assert env.sql("select item_id, backend, model from annotations order by 1") == [
        ("ok1", "openai", "m"),
        ("ok2", "openai", "m"),
    ]
    # The shared endpoint limits: 503s counted and the cap cut; the run's materializations
    # carry the cap and the 429 count.
    (stats,) = limits.endpoint_stats()
    assert stats["throttled_503"] == 10 and stats["cap"] < stats["max_cap"] == 16
    assert stats["in_flight"] == 0
    event = instance.get_latest_materialization_event(AssetKey("annotate_items"))
    metadata = event.asset_materialization.metadata
    assert {"http_cap", "http_429"} <= set(metadata) or any(
        k.startswith("http_cap ") for k in metadata
    )


@pytest.mark.e2e
def test_cli_annotates_the_bundled_texts(env, samples: Path) -> None:  # noqa: ANN001
    proc = cli(
        env,
        "submit",
        "annotate",
        "--items",
        "data/samples/texts/*",
        "--wait",
        "--json",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["status"] == "completed"
    rows = env.sql("select language, category, source from annotations order by language")
    assert [r[0] for r in rows] == ["de", "en", "es", "fr", "it", "nl", "pt"]
    assert {r[2] for r in rows} == {"file"}
    assert dict((r[0], r[1]) for r in rows)["en"] == "finance"


# --- secrets never stored -----------------------------------------------------------------

API_KEY = "sk-live-Zq8xAPIKEYsecret0123456789"
URL_PASSWORD = "pw-Hunter2-URLPASSWORD"
QUERY_KEY = "qk-QUERYKEYsecret-42"
SECRETS = (API_KEY, URL_PASSWORD, QUERY_KEY)


def leaked(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [s for s in SECRETS if s in text]


def where_secrets_are(env, instance, tables: bool = True) -> dict[str, list[str]]:  # noqa: ANN001
    """Every place a secret was found: a warehouse table (all columns of all tables), the
    Dagster event log, a file under data/reports or DAGSTER_HOME."""
    found: dict[str, list[str]] = {}
    if tables:
        with warehouse.connect(env.warehouse, read_only=True) as con:
            names = con.execute(
                "select schema_name, table_name from duckdb_tables() "
                "where database_name = current_database()"
            ).fetchall()
            assert {"batch_items", "item_attempts", "batch_events", "reports"} <= {
                t for _, t in names
            }
            for schema, table in names:
                rows = con.execute(f'select * from "{schema}"."{table}"').fetchall()
                if hits := leaked(repr(rows)):
                    found[f"table {schema}.{table}"] = hits
        for run in instance.get_runs():
            for event in instance.all_logs(run.run_id):
                if hits := leaked(repr(event)):
                    found[f"event log of run {run.run_id} ({run.job_name})"] = hits
    for root in (env.paths.reports, env.dagster_home) if tables else (env.paths.reports,):
        for path in root.rglob("*"):
            if path.is_file() and (hits := leaked(path.read_bytes())):
                found[str(path.relative_to(env.root))] = hits
    return found


def report_on(batch_id: str, instance, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A report batch on ``batch_id``, and the analytics reports focused on it."""
    from dagster import materialize

    from batch_pipelines.defs.analytics_assets import ANALYTICS_ASSETS, analytics_run_config
    from batch_pipelines.defs.resources import WarehouseResource

    monkeypatch.setenv(R.ENV_BACKEND, "local")
    report = run_batch(
        {"operation": "report", "items": [{"kind": "batch", "batch_id": batch_id}]}, instance
    )
    assert report["status"] == "completed"
    result = materialize(
        ANALYTICS_ASSETS,
        instance=instance,
        resources={"warehouse": WarehouseResource()},
        run_config=analytics_run_config(batch_id),
    )
    assert result.success


def test_secrets_never_reach_the_ledger_the_event_log_or_reports(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The endpoint's URL carries a password and a key; the server rejects the request and
    # echoes the bearer key and the path it was asked for, as real ones do.
    def reject(body: dict) -> Any:
        asked = llm.requests[-1]["path"]
        return (401, {}, {"error": {"message": f"Incorrect API key {API_KEY} for {asked}"}})

    llm.default = reject
    host = llm.url.removeprefix("http://")
    monkeypatch.setenv(R.ENV_BACKEND, "openai")
    monkeypatch.setenv(O.ENV_BASE_URL, f"http://user:{URL_PASSWORD}@{host}?api-key={QUERY_KEY}")
    monkeypatch.setenv(O.ENV_MODEL, "m")
    monkeypatch.setenv(O.ENV_API_KEY, API_KEY)
    batch = run_batch({"operation": "annotate", "items": [{"id": "a", "text": "one"}]}, instance)
    assert batch["failed_items"] == 1
    (error,) = env.sql("select error from batch_items where item_id = 'a'")[0]
    assert "HTTP 401" in error
    report_on(batch["batch_id"], instance, monkeypatch)

    found = where_secrets_are(env, instance)
    assert (env.paths.reports / "analytics" / "error_report.md").exists()
    assert list(env.paths.reports.rglob(f"batch_{batch['batch_id']}.md"))
    assert not found, "secrets found in:\n" + "\n".join(f"{k}: {v}" for k, v in found.items())
    # What was hidden is marked, and the rest of the message still tells what happened.
    assert error == (
        f"annotator backend http://***@{host}/chat/completions?api-key=*** returned HTTP 401: "
        '{"error": {"message": "Incorrect API key *** for /v1/chat/completions?api-key=***"}}'
    )


def test_reports_redact_errors_a_ledger_stored_before_redaction(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = run_batch(
        {
            "operation": "annotate",
            "items": [
                {"table": "missing", "id_column": "id", "id_value": "a1", "text_column": "body"}
            ],
        },
        instance,
    )
    old = f"backend https://user:{URL_PASSWORD}@h/v1?api-key={QUERY_KEY} said {API_KEY}"
    with warehouse.connect(env.warehouse) as con:
        con.execute("update batch_items set error = ?", [old])
    report_on(batch["batch_id"], instance, monkeypatch)
    assert not where_secrets_are(env, instance, tables=False)
    (md,) = env.paths.reports.rglob(f"batch_{batch['batch_id']}.md")
    assert "https://***@h/v1?api-key=*** said " in md.read_text()
    assert (
        "| backend <url> said " in (env.paths.reports / "analytics" / "error_report.md").read_text()
    )
