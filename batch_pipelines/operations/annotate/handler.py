"""annotate: language, keywords, category, summary and confidence for a text.

An item is a text given inline (``{text: ...}``), a text, Markdown, HTML or PDF file
(``{path: ...}``; HTML is reduced to its text, Markdown to its prose, a PDF to the text of
its pages, see pdf.py), or one row of a warehouse table (``{table, id_column, id_value,
text_column}``). The ``annotator`` resource
does the work outside the warehouse lock (see :mod:`batch_pipelines.operations.annotate.backends`:
a local deterministic backend by default, or an OpenAI-compatible endpoint); the item's row
in ``annotations`` (``ItemResult.rows``) replaces an earlier one. The confidence is the
item's quality score.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any

import duckdb

from batch_pipelines.core.contract import ItemContext, ItemResult
from batch_pipelines.core.errors import NOT_FOUND, ItemError, ValidationItemError
from batch_pipelines.core.files import PDF_MAGIC
from batch_pipelines.core.ledger import utcnow
from batch_pipelines.core.sql import quote_ident, validate_identifier, validate_table_name
from batch_pipelines.operations.annotate import tables
from batch_pipelines.operations.annotate.backends.base import Annotator
from batch_pipelines.operations.annotate.backends.local import LocalAnnotator
from batch_pipelines.operations.annotate.models import AnnotateItem, AnnotateOptions
from batch_pipelines.operations.annotate.pdf import pdf_text

RESOURCE_KEY = "annotator"
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown"}


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


def _read_file(
    ctx: ItemContext, raw: str, options: AnnotateOptions
) -> tuple[str, str, dict[str, Any]]:
    """The file's text, its format and what else is known of the read (a PDF's pages)."""
    path = ctx.resolve_path(raw, field_name="path")
    if not path.is_file():
        raise ValidationItemError(f"path: {raw!r} is not a regular file")
    size = path.stat().st_size
    if size > options.max_file_bytes:
        raise ValidationItemError(
            f"{path.name} is {size} bytes, more than max_file_bytes ({options.max_file_bytes})"
        )
    suffix = path.suffix.lower()
    with path.open("rb") as fh:
        is_pdf = fh.read(len(PDF_MAGIC)) == PDF_MAGIC
    if is_pdf or suffix == ".pdf":
        text, pages = pdf_text(ctx, path, options.max_chars)
        return text, "pdf", pages
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise ValidationItemError(f"{path.name} is not a text file: binary content")
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    if suffix in HTML_SUFFIXES or (suffix not in MARKDOWN_SUFFIXES and _looks_html(text)):
        return html_to_text(text), "html", {}
    if suffix in MARKDOWN_SUFFIXES:
        return markdown_to_text(text), "markdown", {}
    return text, "text", {}


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
    read: dict[str, Any] = {}
    if item.text is not None:
        text, source, ref, fmt = item.text, "inline", None, "text"
    elif item.path is not None:
        text, fmt, read = _read_file(ctx, item.path, options)
        source, ref = "file", str(ctx.resolve_path(item.path))
    else:
        text = _read_row(ctx, item)
        source, ref, fmt = "row", f"{item.table}.{item.text_column}[{item.id_value}]", "text"
    if not text.strip():
        raise ValidationItemError(f"{source} text is empty" + (f" ({ref})" if ref else ""))
    truncated = len(text) > options.max_chars or bool(read.get("truncated"))
    return {
        **read,
        "text": text[: options.max_chars],
        "source": source,
        "source_ref": ref,
        "format": fmt,
        "truncated": truncated,
        "chars": len(text),
    }


def concurrency_for_resources(resources: Mapping[str, Any]) -> int | None:
    """Annotate's default items in flight for a run: 1 when its annotator computes in this
    process (the local backend), else the operation's default (None)."""
    annotator = resources.get(RESOURCE_KEY) or LocalAnnotator()
    try:
        return None if annotator.waits_on_io() else 1
    except Exception:  # noqa: BLE001 - a bad backend name fails each item with its message
        return None


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
    if "pages" in loaded:
        metrics.update(pages=loaded["pages"], pages_read=loaded["pages_read"])

    row = {
        "source": loaded["source"],
        "source_ref": loaded["source_ref"],
        "language": result.get("language"),
        "language_confidence": result.get("language_confidence"),
        "keywords": json.dumps(keywords, ensure_ascii=False),
        "category": result.get("category"),
        "category_scores": json.dumps(result.get("category_scores") or {}, ensure_ascii=False),
        "summary": result.get("summary"),
        "confidence": confidence,
        "backend": result.get("backend"),
        "model": result.get("model"),
        "text_chars": loaded["chars"],
        "text_sha256": sha,
        "annotated_at": utcnow(),
    }
    # Rows rather than a commit: the runner writes the annotations of a flush in one go.
    return ItemResult(metrics=metrics, quality_score=confidence, rows={tables.ANNOTATIONS: [row]})
