"""annotate: language, keywords, category, summary and confidence for a text.

An item is a text given inline (``{text: ...}``), a text, Markdown or HTML file
(``{path: ...}``; HTML is reduced to its text, Markdown to its prose), or one row of a
warehouse table (``{table, id_column, id_value, text_column}``). The ``annotator`` resource
does the work outside the warehouse lock (see :mod:`batch_pipelines.operations.annotate.backends`:
a local deterministic backend by default, or an OpenAI-compatible endpoint); the commit
replaces the item's row in ``annotations``. The confidence is the item's quality score.
"""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from typing import Any

import duckdb
from pydantic import BaseModel, Field, field_validator, model_validator

from batch_pipelines.core import ledger
from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import NOT_FOUND, ItemError, ValidationItemError
from batch_pipelines.core.sql import quote_ident, validate_identifier, validate_table_name
from batch_pipelines.operations.annotate.backends import DEFAULT_TAXONOMY, Annotator, LocalAnnotator

RESOURCE_KEY = "annotator"
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown"}


class AnnotateOptions(BaseModel, extra="forbid"):
    """Options of an annotate batch."""

    taxonomy: dict[str, list[str]] | None = Field(
        None,
        description="Categories and their keywords ({category: [keyword, ...]}); "
        "default: a built-in taxonomy (finance, technology, sports, health, politics, "
        "science, travel, customer_support). Texts matching none get 'other'.",
    )
    max_keywords: int = Field(8, ge=1, le=50)
    summary_max_chars: int = Field(300, ge=40, le=5000)
    summary_max_sentences: int = Field(3, ge=1, le=20)
    max_chars: int = Field(200_000, ge=100, le=10_000_000, description="Longer texts are truncated")
    max_file_bytes: int = Field(10_000_000, ge=1, le=1_000_000_000)

    @field_validator("taxonomy")
    @classmethod
    def _taxonomy(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("taxonomy must name at least one category")
        for category, keywords in value.items():
            if not category.strip() or len(category) > 64:
                raise ValueError(f"taxonomy category {category!r} must be 1 to 64 characters")
            if not keywords or not all(isinstance(k, str) and k.strip() for k in keywords):
                raise ValueError(
                    f"taxonomy category {category!r} needs a non-empty list of keywords"
                )
        return value

    def effective_taxonomy(self) -> dict[str, list[str]]:
        return self.taxonomy or DEFAULT_TAXONOMY


class AnnotateItem(BaseModel, extra="forbid"):
    """One text: inline ``text``, a file ``path``, or a table row."""

    id: str | None = None
    text: str | None = None
    path: str | None = None
    table: str | None = None
    id_column: str | None = None
    id_value: int | str | None = None
    text_column: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AnnotateItem:
        row_fields = ("table", "id_column", "id_value", "text_column")
        given_row = [f for f in row_fields if getattr(self, f) is not None]
        sources = [s for s in ("text", "path") if getattr(self, s) is not None]
        if given_row:
            sources.append("table")
        if len(sources) != 1:
            raise ValueError(
                "give exactly one source: text, path, or table + id_column + id_value + "
                f"text_column (got {', '.join(sources) or 'none'})"
            )
        if given_row:
            missing = [f for f in row_fields if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a table row item also needs {', '.join(missing)}")
            validate_table_name(self.table, "table")
            validate_identifier(self.id_column, "id_column")
            validate_identifier(self.text_column, "text_column")
            if self.id is None:
                self.id = f"{self.table}:{self.id_value}"
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty")
        return self


class _HTMLText(HTMLParser):
    """The visible text of an HTML document, with line breaks at block elements."""

    BLOCK = {
        "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
        "table", "section", "article", "header", "footer", "blockquote", "pre", "title",
    }  # fmt: skip
    SKIP = {"script", "style", "noscript", "template", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skip += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP and self._skip:
            self._skip -= 1
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return _tidy("".join(parser.parts))


_MD_RULES = [
    (re.compile(r"```.*?```", re.DOTALL), " "),  # code blocks are not prose
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"^\s{0,3}#{1,6}\s*(.*?)\s*#*\s*$", re.MULTILINE), r"\1.\n"),
    (re.compile(r"^\s{0,3}>\s?", re.MULTILINE), ""),
    (re.compile(r"^\s*[-*+]\s+", re.MULTILINE), ""),
    (re.compile(r"^\s*\d+[.)]\s+", re.MULTILINE), ""),
    (re.compile(r"(\*\*|__)(.*?)\1"), r"\2"),
    (re.compile(r"(?<!\w)[*_]([^*_\n]+)[*_](?!\w)"), r"\1"),
    (re.compile(r"^\s*([-*_]\s*){3,}$", re.MULTILINE), ""),
    (re.compile(r"<[^>\n]+>"), ""),
]


def markdown_to_text(md: str) -> str:
    for pattern, repl in _MD_RULES:
        md = pattern.sub(repl, md)
    return _tidy(md.replace("..\n", ".\n"))


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _read_file(ctx: ItemContext, raw: str, options: AnnotateOptions) -> tuple[str, str]:
    path = ctx.resolve_path(raw, field_name="path")
    if not path.is_file():
        raise ValidationItemError(f"path: {raw!r} is not a regular file")
    size = path.stat().st_size
    if size > options.max_file_bytes:
        raise ValidationItemError(
            f"{path.name} is {size} bytes, more than max_file_bytes ({options.max_file_bytes})"
        )
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise ValidationItemError(f"{path.name} is not a text file: binary content")
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    suffix = path.suffix.lower()
    if suffix in HTML_SUFFIXES or (suffix not in MARKDOWN_SUFFIXES and _looks_html(text)):
        return html_to_text(text), "html"
    if suffix in MARKDOWN_SUFFIXES:
        return markdown_to_text(text), "markdown"
    return text, "text"


def _looks_html(text: str) -> bool:
    head = text[:1000].lstrip().lower()
    return head.startswith(("<!doctype html", "<html"))


def _read_row(ctx: ItemContext, item: AnnotateItem) -> str:
    table = validate_table_name(item.table or "", "table")
    id_col = quote_ident(validate_identifier(item.id_column or "", "id_column"))
    text_col = quote_ident(validate_identifier(item.text_column or "", "text_column"))
    query = f"select {text_col}::varchar from {quote_ident(table)} where {id_col} = ? limit 2"
    with ctx.read_warehouse() as con:
        try:
            rows = con.execute(query, [item.id_value]).fetchall()
        except duckdb.CatalogException as exc:
            raise ValidationItemError(
                f"table {table!r} does not exist" if "Table" in str(exc) else _first_line(exc)
            ) from None
        except duckdb.BinderException as exc:
            raise ValidationItemError(f"table {table}: {_first_line(exc)}") from None
        except duckdb.ConversionException as exc:
            raise ValidationItemError(
                f"id_value {item.id_value!r} does not fit column {item.id_column}: "
                f"{_first_line(exc)}"
            ) from None
    if not rows:
        raise ItemError(
            f"no row in {table} where {item.id_column} = {item.id_value!r}", category=NOT_FOUND
        )
    if len(rows) > 1:
        raise ValidationItemError(
            f"{item.id_column} = {item.id_value!r} matches more than one row of {table}"
        )
    text = rows[0][0]
    if text is None:
        raise ValidationItemError(
            f"{table}.{item.text_column} is NULL where {item.id_column} = {item.id_value!r}"
        )
    return text


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def load_text(ctx: ItemContext, item: AnnotateItem, options: AnnotateOptions) -> dict[str, Any]:
    """The item's text and where it came from: source, source_ref, format."""
    if item.text is not None:
        text, source, ref, fmt = item.text, "inline", None, "text"
    elif item.path is not None:
        text, fmt = _read_file(ctx, item.path, options)
        source, ref = "file", str(ctx.resolve_path(item.path))
    else:
        text = _read_row(ctx, item)
        source, ref, fmt = "row", f"{item.table}.{item.text_column}[{item.id_value}]", "text"
    if not text.strip():
        raise ValidationItemError(f"{source} text is empty" + (f" ({ref})" if ref else ""))
    truncated = len(text) > options.max_chars
    return {
        "text": text[: options.max_chars],
        "source": source,
        "source_ref": ref,
        "format": fmt,
        "truncated": truncated,
        "chars": len(text),
    }


def handle_annotate(ctx: ItemContext) -> ItemResult:
    options: AnnotateOptions = ctx.options
    item: AnnotateItem = ctx.item
    loaded = load_text(ctx, item, options)
    text = loaded["text"]
    ctx.check()
    annotator: Annotator = ctx.resources.get(RESOURCE_KEY) or LocalAnnotator()
    settings = {**options.model_dump(), "taxonomy": options.effective_taxonomy()}
    result = annotator.annotate(text, settings)
    ctx.check()
    confidence = float(result.get("confidence") or 0.0)
    confidence = max(0.0, min(1.0, confidence))
    keywords = list(result.get("keywords") or [])
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    metrics = {
        "source": loaded["source"],
        "format": loaded["format"],
        "chars": loaded["chars"],
        "truncated": loaded["truncated"],
        "language": result.get("language"),
        "category": result.get("category"),
        "keywords": ", ".join(keywords),
        "confidence": round(confidence, 4),
        "backend": result.get("backend"),
        "model": result.get("model"),
    }
    if loaded["source_ref"]:
        metrics["source_ref"] = loaded["source_ref"]

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        con.execute(
            "delete from annotations where batch_id = ? and item_id = ?",
            [cc.batch_id, cc.item_id],
        )
        con.execute(
            "insert into annotations (batch_id, item_id, source, source_ref, language, "
            "language_confidence, keywords, category, category_scores, summary, confidence, "
            "backend, model, text_chars, text_sha256, annotated_at) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                cc.batch_id,
                cc.item_id,
                loaded["source"],
                loaded["source_ref"],
                result.get("language"),
                result.get("language_confidence"),
                json.dumps(keywords, ensure_ascii=False),
                result.get("category"),
                json.dumps(result.get("category_scores") or {}, ensure_ascii=False),
                result.get("summary"),
                confidence,
                result.get("backend"),
                result.get("model"),
                loaded["chars"],
                sha,
                ledger.utcnow(),
            ],
        )
        return None

    return ItemResult(metrics=metrics, quality_score=confidence, commit=commit)


SPEC = OperationSpec(
    name="annotate",
    description=(
        "Annotate texts (inline, text/Markdown/HTML files, or table rows), one partition per "
        "text: language, keywords, category from a configurable taxonomy, an extractive "
        "summary and a confidence (the quality score). Backend: the annotator resource "
        "(local by default, or an OpenAI-compatible endpoint). Details: annotations."
    ),
    options_model=AnnotateOptions,
    item_model=AnnotateItem,
    handler=handle_annotate,
    detail_tables=("annotations",),
    resources=(RESOURCE_KEY,),
    group_commits=True,  # the commit only writes `annotations`
)
