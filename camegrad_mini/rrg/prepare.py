"""Command line: turn any of the three IU X-Ray layouts into R2Gen's layout (and warm the cache).

    python -m camegrad_mini.rrg.prepare --layout openi   --src data/iu_xray_raw --out data/iu_xray
    python -m camegrad_mini.rrg.prepare --layout tabular --src data/kaggle_iu   --out data/iu_xray
    python -m camegrad_mini.rrg.prepare --layout r2gen   --src ~/R2Gen/data/iu_xray --out data/iu_xray

The split is R2Gen's for every study whose uid is in ``--annotation`` (default: the shipped
``annotation.json``; ``none`` for no R2Gen split) and a seeded 70/10/20 split otherwise.
Problems (missing or unreadable images, malformed XML, odd ids, entries without a report) are
listed with counts and skipped, or stop the run with ``--strict``. Anything else wrong (a missing
or broken file, an unusable ``--out``, no valid study at all) ends the run with one ``error: ...``
line and exit code 1. ``--out`` must be a new or empty folder, neither ``--src`` nor one holding
it; ``--overwrite`` replaces only a folder that prepare wrote. ``--cache-size 128`` also decodes
every image once into the memory-mappable cache that training reads. Then:
``load_iu_xray(root="data/iu_xray", images="real")``.
"""
from __future__ import annotations

import argparse
import sys

from .layouts import convert_openi, convert_tabular, copy_r2gen
from .paths import DataError, DataNotFoundError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camegrad_mini.rrg.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", required=True, choices=["r2gen", "openi", "tabular"])
    ap.add_argument("--src", required=True, help="folder with the input layout")
    ap.add_argument("--out", required=True, help="new folder in R2Gen's layout (must not exist unless --overwrite)")
    ap.add_argument("--annotation", default="auto",
                    help="R2Gen annotation.json for the split: auto (shipped), a path, or none")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 70/10/20 split for studies outside R2Gen's")
    ap.add_argument("--strict", action="store_true", help="stop at the first broken input instead of skipping it")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out folder that prepare wrote (never any other folder)")
    ap.add_argument("--cache-size", type=int, default=0, help="also build the uint8 image cache at this size")
    a = ap.parse_args(argv)
    annotation = None if a.annotation == "none" else a.annotation
    try:
        if a.layout == "openi":
            res = convert_openi(a.src, a.out, annotation=annotation, seed=a.seed, strict=a.strict,
                                overwrite=a.overwrite)
        elif a.layout == "tabular":
            res = convert_tabular(a.src, a.out, annotation=annotation, seed=a.seed, strict=a.strict,
                                  overwrite=a.overwrite)
        else:
            res = copy_r2gen(a.src, a.out, strict=a.strict, overwrite=a.overwrite)
        print(res.summary())
        if a.cache_size:
            from .dataset import load_iu_xray

            ds = load_iu_xray(res.out, images="real", image_size=a.cache_size, progress=True)
            print(ds.describe())
    except (DataNotFoundError, DataError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # disk full, permissions, ...: the system's words and the file, not a traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where} (fix it and run again)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
