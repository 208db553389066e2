"""PDF files as annotate items: the text layer page by page and capped, a scan without
text, an encrypted and a corrupt PDF each failing their own item as validation, through the
in-process runner."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from batch_pipelines.app.sample_documents import text_pdf
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines_tests.helpers import item_context, run_batch, run_item


def _pages(path: Path, pages: list[list[str]]) -> Path:
    writer = PdfWriter()
    for lines in pages:
        writer.add_page(PdfReader(io.BytesIO(text_pdf(lines))).pages[0])
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def test_pdf_items_in_a_batch(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch = run_batch(
        {
            "operation": "annotate",
            "options": {"taxonomy": {"penguins": ["penguin", "colony", "chicks"]}},
            "items_from": {"glob": "data/samples/pdf/*.pdf"},
        },
        instance,
    )
    assert batch["succeeded_items"] == 1 and batch["failed_items"] == 1, batch
    rows = env.sql(
        "select category, source, text_chars > 200, summary like 'Field report%' from annotations"
    )
    assert rows == [("penguins", "file", True, True)]
    failed = env.sql("select error_category, error from batch_items where status = 'failed'")
    assert failed == [
        (
            "validation",
            "no text layer: scanned_page.pdf has 1 page(s) and none has text to extract "
            "(a scanned document?); run OCR on it first",
        )
    ]


def test_pages_are_read_until_the_cap(env) -> None:  # noqa: ANN001
    pages = [[f"Page {n} is about the penguin colony and the storm."] * 4 for n in range(1, 7)]
    path = _pages(env.data / "long.pdf", pages)
    ctx = item_context(env, "annotate", {"path": str(path)}, {"max_chars": 300})
    result = run_item(env, "annotate", ctx)
    assert result.metrics["format"] == "pdf" and result.metrics["pages"] == 6
    assert result.metrics["pages_read"] == 2 and result.metrics["truncated"] is True
    whole = run_item(env, "annotate", item_context(env, "annotate", {"path": str(path)}))
    assert whole.metrics["pages_read"] == 6 and whole.metrics["truncated"] is False


def test_encrypted_and_corrupt_pdfs_fail_clearly(env) -> None:  # noqa: ANN001
    locked = PdfWriter()
    locked.add_page(PdfReader(io.BytesIO(text_pdf(["secret text"]))).pages[0])
    locked.encrypt(user_password="secret", algorithm="RC4-128")
    with (env.data / "locked.pdf").open("wb") as fh:
        locked.write(fh)
    # Only an owner password (printing restricted): it opens with the empty password.
    open_one = PdfWriter()
    open_one.add_page(PdfReader(io.BytesIO(text_pdf(["A report on wind and sea ice."]))).pages[0])
    open_one.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    with (env.data / "restricted.pdf").open("wb") as fh:
        open_one.write(fh)
    (env.data / "cut.pdf").write_bytes(text_pdf(["never read"])[:120])
    (env.data / "fake.pdf").write_bytes(b"just text, named .pdf\n")
    for name, message in [
        ("locked.pdf", "locked.pdf is an encrypted \\(password-protected\\) PDF"),
        ("cut.pdf", "cut.pdf is not a readable PDF \\(corrupt or truncated\\?\\)"),
        ("fake.pdf", "fake.pdf is not a readable PDF"),
    ]:
        ctx = item_context(env, "annotate", {"path": str(env.data / name)})
        with pytest.raises(ValidationItemError, match=message):
            run_item(env, "annotate", ctx)
    ctx = item_context(env, "annotate", {"path": str(env.data / "restricted.pdf")})
    assert run_item(env, "annotate", ctx).metrics["chars"] > 10
