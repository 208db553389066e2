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

from batch_pipelines.core import http, warehouse
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
from batch_pipelines.operations.annotate import resource as R
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
def llm() -> Iterator[FakeLLM]:
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


def test_http_unreachable_backend() -> None:
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
    # The resource comes from definitions.py (60 requests per minute, 4 retries with 1 s base
    # backoff): no real waits here.
    monkeypatch.setattr(http.Retry, "delay", lambda self, n, ra=None, rand=None: 0.0)
    monkeypatch.setattr(http, "shared_bucket", lambda *args: http.TokenBucket(60000, burst=100))
    monkeypatch.setenv(R.ENV_BACKEND, "openai")
    monkeypatch.setenv(O.ENV_BASE_URL, llm.url)
    monkeypatch.setenv(O.ENV_MODEL, "m")
    monkeypatch.setenv(O.ENV_API_KEY, "k")
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
