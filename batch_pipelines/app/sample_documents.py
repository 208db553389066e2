"""The office-document samples under ``data/samples/``: an xlsx workbook for import and two
PDFs for annotate. Written byte for byte the same on every run (fixed zip timestamps and
document dates), so ``python -m batch_pipelines.app.samples`` reproduces the committed files.

- ``excel/penguins_islands.xlsx``: two sheets (``Biscoe``, ``Dream``) of penguin rows; one
  row of ``Dream`` holds an Excel error (``#DIV/0!``) and is rejected on import.
- ``pdf/field_report.pdf``: one page with a text layer.
- ``pdf/scanned_page.pdf``: one page that is only an image, as a scan without OCR is: annotate
  fails it as ``validation`` (no text layer).
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from pathlib import Path

FIXED = dt.datetime(2026, 1, 1)
XLSX_COLUMNS = ["id", "species", "bill_length_mm", "flipper_length_mm", "body_mass_g", "sex"]

FIELD_REPORT = [
    "Field report: penguin colony survey",
    "The research team counted the penguin colony on the island after the storm.",
    "Strong wind and sea ice closed the beach for two days, so the survey started late.",
    "Most nests were intact and the chicks looked healthy; flipper bands were checked.",
    "The next count is planned for the end of the season, weather permitting.",
]


def _reproducible_zip(data: bytes) -> bytes:
    """The same archive with every entry, and the workbook's modified date, ``FIXED``:
    openpyxl stamps them with the time of the save."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=FIXED.timetuple()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            body = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                stamp = FIXED.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
                body = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + stamp, body)
            dst.writestr(entry, body)
    return out.getvalue()


def write_xlsx(path: Path, rows: list[dict]) -> Path:
    """Two sheets of ``rows`` split by island; the fourth Dream row's body mass is #DIV/0!."""
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    workbook.properties.created = workbook.properties.modified = FIXED
    for island in ("Biscoe", "Dream"):
        sheet = workbook.create_sheet(island)
        sheet.append(XLSX_COLUMNS)
        for row in (r for r in rows if r["island"] == island):
            sheet.append([row[c] for c in XLSX_COLUMNS])
    # openpyxl stores a string that is an Excel error code as an error cell.
    workbook["Dream"]["E5"] = "#DIV/0!"
    buffer = io.BytesIO()
    workbook.save(buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_reproducible_zip(buffer.getvalue()))
    return path


def _pdf(page_content: bytes, resources: bytes, extra: list[bytes]) -> bytes:
    """A one-page PDF: catalog, pages, the page, its content stream and ``extra`` objects
    (numbered from 5), with a correct cross-reference table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources " + resources + b" >>",
        b"<< /Length %d >>\nstream\n" % len(page_content) + page_content + b"\nendstream",
        *extra,
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def text_pdf(lines: list[str]) -> bytes:
    """One page of Helvetica text, one line per entry."""
    escaped = [
        line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
        for line in lines
    ]
    content = b"BT /F1 12 Tf 72 720 Td 16 TL " + b" ".join(b"(%s) Tj T*" % e for e in escaped)
    content += b" ET"
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    return _pdf(content, b"<< /Font << /F1 5 0 R >> >>", [font])


def image_pdf() -> bytes:
    """One page covered by a small grey image and no text: a scan without a text layer."""
    size = 16
    pixels = bytes((x * 13 + y * 7) % 256 for y in range(size) for x in range(size))
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length %d >>\nstream\n"
        % (size, size, len(pixels))
        + pixels
        + b"\nendstream"
    )
    content = b"q 468 0 0 648 72 72 cm /Im1 Do Q"
    return _pdf(content, b"<< /XObject << /Im1 5 0 R >> >>", [image])


def write_documents(folder: Path, rows: list[dict]) -> list[Path]:
    """Write the xlsx and PDF samples under ``folder``; returns their paths."""
    out = [write_xlsx(folder / "excel" / "penguins_islands.xlsx", rows)]
    pdfs = folder / "pdf"
    pdfs.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("field_report.pdf", text_pdf(FIELD_REPORT)),
        ("scanned_page.pdf", image_pdf()),
    ):
        (pdfs / name).write_bytes(data)
        out.append(pdfs / name)
    return out
