"""annotate: the text layer of a PDF, page by page (pypdf).

Pages are read in order until ``max_chars`` characters are in hand, so a long document costs
what its first pages do. A PDF with pages but no text (a scan that was never OCRed), an
encrypted one that does not open with the empty password, and one pypdf cannot parse fail
their item as ``validation`` with a message that says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import ItemError, ValidationItemError


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def pdf_text(ctx: ItemContext, path: Path, max_chars: int) -> tuple[str, dict[str, Any]]:
    """The text of the PDF at ``path`` (pages separated by a blank line) and what was read:
    ``pages``, ``pages_read``, ``truncated`` (pages left unread past ``max_chars``)."""
    from pypdf import PdfReader  # here: ~0.3 s, which every CLI start would pay at import

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            # Many PDFs are encrypted only to restrict printing or copying: they open with
            # the empty user password. Others need a password nobody gave us.
            try:
                opened = reader.decrypt("")
            except Exception:  # e.g. AES without the optional cryptography package
                opened = 0
            if not opened:
                raise ValidationItemError(
                    f"{path.name} is an encrypted (password-protected) PDF: its text cannot be "
                    "read; remove the password and submit it again"
                )
        pages = len(reader.pages)
    except ItemError:
        raise
    except Exception as exc:  # pypdf raises many kinds for a damaged file
        raise ValidationItemError(
            f"{path.name} is not a readable PDF (corrupt or truncated?): {_first_line(exc)}"
        ) from exc
    parts: list[str] = []
    chars = read = 0
    for number in range(pages):
        ctx.check()
        try:
            text = (reader.pages[number].extract_text() or "").strip()
        except Exception as exc:
            raise ValidationItemError(
                f"{path.name}: page {number + 1} of {pages} cannot be read: {_first_line(exc)}"
            ) from exc
        read = number + 1
        if text:
            parts.append(text)
            chars += len(text) + 2
        if chars >= max_chars:
            break
    if not parts:
        raise ValidationItemError(
            f"no text layer: {path.name} has {pages} page(s) and none has text to extract "
            "(a scanned document?); run OCR on it first"
        )
    return "\n\n".join(parts), {"pages": pages, "pages_read": read, "truncated": read < pages}
