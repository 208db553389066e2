"""The bundled sample data under ``data/samples/`` (committed; ``write_samples`` rebuilds it).

Small, deterministic files made for this project: penguin measurements split by year in
every supported format, plus a few deliberately bad files for trying error handling, texts
for annotate, and an xlsx workbook and PDFs (``sample_documents``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb

from batch_pipelines.app.sample_documents import write_documents

SPECIES = {
    "Adelie": ((38.8, 2.7), (18.3, 1.2), (190, 6.5), (3700, 460)),
    "Chinstrap": ((48.8, 3.3), (18.4, 1.1), (196, 7.1), (3730, 380)),
    "Gentoo": ((47.5, 3.1), (15.0, 1.0), (217, 6.5), (5080, 500)),
}
ISLANDS = {"Adelie": ["Torgersen", "Biscoe", "Dream"], "Chinstrap": ["Dream"], "Gentoo": ["Biscoe"]}
COLUMNS = [
    "id",
    "species",
    "island",
    "bill_length_mm",
    "bill_depth_mm",
    "flipper_length_mm",
    "body_mass_g",
    "sex",
    "year",
]


def penguin_rows(year: int, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        species = rng.choice(sorted(SPECIES))
        (bl, bd, fl, bm) = SPECIES[species]
        rows.append(
            {
                "id": year * 1000 + i,
                "species": species,
                "island": rng.choice(ISLANDS[species]),
                "bill_length_mm": round(rng.gauss(*bl), 1),
                "bill_depth_mm": round(rng.gauss(*bd), 1),
                "flipper_length_mm": int(rng.gauss(*fl)),
                "body_mass_g": int(round(rng.gauss(*bm), -1)),
                "sex": rng.choice(["male", "female"]),
                "year": year,
            }
        )
    return rows


def _write_delimited(path: Path, rows: list[dict], sep: str) -> None:
    lines = [sep.join(COLUMNS)]
    lines += [sep.join(str(r[c]) for c in COLUMNS) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def write_samples(folder: Path) -> list[Path]:
    """Write the sample files into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder
    bad = folder / "bad"
    bad.mkdir(exist_ok=True)
    out = []
    p = good / "penguins_2007.csv"
    _write_delimited(p, penguin_rows(2007, 110, 7), ",")
    out.append(p)
    p = good / "penguins_2008.tsv"
    _write_delimited(p, penguin_rows(2008, 114, 8), "\t")
    out.append(p)
    p = good / "penguins_2009.json"
    p.write_text(json.dumps(penguin_rows(2009, 120, 9), indent=1) + "\n")
    out.append(p)
    p = good / "penguins_2010.ndjson"
    p.write_text("".join(json.dumps(r) + "\n" for r in penguin_rows(2010, 90, 10)))
    out.append(p)
    p = good / "penguins_2011.parquet"
    con = duckdb.connect()
    con.register("_rows", __import__("pandas").DataFrame(penguin_rows(2011, 100, 11)))
    con.execute(f"copy (select * from _rows order by id) to '{p}' (format parquet)")
    con.close()
    out.append(p)
    # A CSV with a few malformed rows: they go to import_rejects, the rest loads.
    p = good / "penguins_2012_messy.csv"
    rows = penguin_rows(2012, 60, 12)
    lines = [",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in rows]
    lines[5] = lines[5] + ",unexpected,extra"
    lines[17] = "2012016,Gentoo,Biscoe,not-a-number,15.1,220,5200,female,2012"
    p.write_text("\n".join(lines) + "\n")
    out.append(p)
    # Files that must fail their own item only.
    (bad / "truncated.json").write_text(json.dumps(penguin_rows(2013, 5, 13))[:-40])
    _write_delimited(bad / "wrong_delimiter.tsv", penguin_rows(2014, 5, 14), ",")
    (bad / "empty.csv").write_text("")
    rng = random.Random(15)
    (bad / "garbage.bin").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    out += sorted(bad.iterdir())
    out += write_texts(folder / "texts")
    out += write_documents(folder, penguin_rows(2015, 40, 16))
    return out


# Short texts in several languages and formats for the annotate operation.
TEXTS = {
    "en_markets.txt": (
        "Central bank holds interest rates as inflation cools\n\n"
        "The central bank kept its interest rate unchanged on Thursday. Inflation fell for the "
        "third month in a row, and stock markets rose after the decision. Investors expect the "
        "first cut early next year, while banks warn that mortgage prices will stay high. "
        "The budget deficit remains the largest risk for the market, analysts said.\n"
    ),
    "de_rechenzentrum.md": (
        "# Neues Rechenzentrum in Frankfurt\n\n"
        "Ein Anbieter von **Cloud**-Diensten hat am Montag ein neues Rechenzentrum eröffnet. "
        "Die Daten der Kunden werden dort auf eigenen Servern gespeichert, und die Software "
        "wird von einem Team in Berlin entwickelt.\n\n"
        "## Technologie\n\n"
        "- Die [Technologie](https://example.org) soll den Energieverbrauch senken.\n"
        "- Die Daten bleiben in der EU.\n\n"
        "```\nsudo restart-all --force\n```\n\n"
        "Experten sagen, dass die Nachfrage nach digitalen Diensten weiter wächst.\n"
    ),
    "fr_football.html": (
        '<!DOCTYPE html>\n<html lang="fr"><head><title>Football</title>'
        "<style>p { color: red; }</style><script>var x = 'ne pas lire';</script></head>\n"
        "<body><h1>Victoire de Lyon en fin de match</h1>\n"
        "<p>L&#39;&eacute;quipe de Lyon a gagn&eacute; le match de samedi gr&acirc;ce &agrave; "
        "un but dans les derni&egrave;res minutes.</p>\n"
        "<p>Le joueur le plus remarqu&eacute; de la saison a marqu&eacute; deux fois, et "
        "l&#39;entra&icirc;neur est tr&egrave;s content de son &eacute;quipe.</p>\n"
        "<ul><li>Prochain match : mercredi</li><li>Championnat : 3e place</li></ul>\n"
        "</body></html>\n"
    ),
    "es_salud.txt": (
        "El hospital de la ciudad abre una nueva unidad para pacientes con enfermedades del "
        "corazón. Los médicos dicen que el tratamiento será más rápido y que la salud de los "
        "pacientes mejorará. La unidad tiene veinte camas y un equipo de enfermeras "
        "especializadas.\n"
    ),
    "it_viaggio.md": (
        "# Un viaggio in Sicilia\n\n"
        "Il turismo in Sicilia cresce ogni anno. Gli hotel della costa sono pieni da maggio "
        "a settembre, e molti turisti arrivano con il traghetto da Napoli.\n\n"
        "Il museo di Palermo ha avuto un numero record di visitatori, e la spiaggia di "
        "Cefalù è una delle più belle d'Italia.\n"
    ),
    "nl_klimaat.html": (
        "<html><body><article><h2>Onderzoek naar pinguïns en het klimaat</h2>"
        "<p>Onderzoekers van de universiteit hebben een nieuw onderzoek gepubliceerd over "
        "pinguïns op Antarctica. Het klimaat verandert snel en dat heeft grote gevolgen voor "
        "de dieren.</p><p>De wetenschap kan volgens de onderzoekers helpen om de kolonies te "
        "beschermen.</p></article></body></html>\n"
    ),
    "pt_governo.txt": (
        "O governo anunciou novas regras para a eleição do próximo ano. O presidente disse "
        "que a lei vai melhorar a transparência, mas a oposição quer mais tempo para debater "
        "a proposta no parlamento.\n"
    ),
}


def write_texts(folder: Path) -> list[Path]:
    """Write the annotate samples (text, Markdown and HTML in seven languages)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in TEXTS.items():
        p = folder / name
        p.write_text(text, encoding="utf-8")
        out.append(p)
    return out


if __name__ == "__main__":
    import sys

    for path in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "data/samples")):
        print(path)
