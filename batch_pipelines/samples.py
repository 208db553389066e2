"""The bundled sample data under ``data/samples/`` (committed; ``write_samples`` rebuilds it).

Small, deterministic files made for this project: penguin measurements split by year in
every supported format, plus a few deliberately bad files for trying error handling.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb

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
    return out


if __name__ == "__main__":
    import sys

    for path in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "data/samples")):
        print(path)
