"""Reproduce the IU X-Ray data-layer figures quoted in the book and the closing note.

    .venv/bin/python tools/rrg_report_figures.py [--split test] [--no-meteor] [--json out.json]

On R2Gen's split (default: its 590 test studies), from the shipped data_samples only:

1. the rule labeler's agreement with the manual Open-i MeSH terms, per observation
   (precision / recall / F1 of positive-or-uncertain against "MeSH term present"; mapping and
   limits in camegrad_mini/rrg/mesh.py), for the labels the project uses (R2Gen-cleaned
   findings) and, for reference, for the raw findings + impression that the indexers read;
2. the always-normal floors: text metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr against R2Gen-style
   references) and rule-labeler CE (macro over 14 and 13, example-based, micro) of one constant
   normal report chosen on the training split;
3. label prevalence on the split.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camegrad_mini.rrg.labeler import CHEXPERT_OBSERVATIONS, label_reports, labels_to_binary  # noqa: E402
from camegrad_mini.rrg.layouts import read_openi_reports, read_r2gen, uid_of  # noqa: E402
from camegrad_mini.rrg.mesh import agreement, mesh_labels  # noqa: E402
from camegrad_mini.rrg.metrics import always_normal_floor, pick_normal_report, r2gen_references  # noqa: E402
from camegrad_mini.rrg.paths import data_samples_dir  # noqa: E402
from camegrad_mini.rrg.text import Tokenizer, clean_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~15 s of JVM start-up)")
    ap.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    a = ap.parse_args(argv)

    root = data_samples_dir()
    ann = read_r2gen(root, check_images=False)
    xml = read_openi_reports(root / "NLMCXR_reports.tgz")
    entries = ann[a.split]
    ids = [e["id"] for e in entries]
    cleaned = [clean_report(e["report"]) for e in entries]
    reps = [xml[uid_of(i)] for i in ids]
    assert all(r.study_id == i for r, i in zip(reps, ids, strict=True)), "annotation ids and Open-i XMLs disagree"
    mesh = np.stack([mesh_labels(r.mesh_major) for r in reps])
    # reports the indexers left uncoded ("No Indexing" only) have no reference: leave them out
    coded = np.array([r.mesh_major != ["No Indexing"] for r in reps])
    lab = labels_to_binary(label_reports(cleaned))
    lab_full = labels_to_binary(label_reports([r.findings + " " + r.impression for r in reps]))
    agr = agreement(lab[coded], mesh[coded])
    agr_full = agreement(lab_full[coded], mesh[coded])

    print(f"# IU X-Ray, R2Gen {a.split} split: {len(ids)} studies\n")
    print("## Rule labeler vs manual Open-i MeSH terms (positive-or-uncertain vs term present)\n")
    print(f"{int(coded.sum())} studies with MeSH coding ({int((~coded).sum())} marked 'No Indexing' left out)\n")
    print("| observation | MeSH n | labeler n | P | R | F1 | F1 (findings+impression) |")
    print("|---|---|---|---|---|---|---|")
    for o in CHEXPERT_OBSERVATIONS:
        g, h = agr[o], agr_full[o]
        print(f"| {o} | {g['n_mesh']} | {g['n_labeler']} | {g['precision']:.2f} | {g['recall']:.2f} | "
              f"{g['f1']:.2f} | {h['f1']:.2f} |")
    with_support = [o for o in CHEXPERT_OBSERVATIONS if agr[o]["n_mesh"] >= 5]
    macro = float(np.mean([agr[o]["f1"] for o in with_support]))
    print(f"\nmacro-F1 over the {len(with_support)} observations with >= 5 MeSH cases: {macro:.3f}")

    train_clean = [clean_report(e["report"]) for e in ann["train"]]
    tok = Tokenizer.fit(train_clean, clean=False)
    refs = r2gen_references(tok, cleaned)
    normal = pick_normal_report(train_clean)
    # text against R2Gen-decoded references, labels from the full cleaned reports (as the trainer does)
    floor = always_normal_floor(refs, report=normal, meteor=not a.no_meteor, ce_refs=cleaned)
    t, ce = floor["text"], floor["ce"]
    print("\n## Always-normal floor (one constant report chosen on train by BLEU-4)\n")
    print(f"report: \"{normal}\"\n")
    met = "n/a" if t["METEOR"] is None else f"{t['METEOR']:.3f}"
    print("| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {t['BLEU_1']:.3f} | {t['BLEU_2']:.3f} | {t['BLEU_3']:.3f} | {t['BLEU_4']:.3f} | {met} | "
          f"{t['ROUGE_L']:.3f} | {t['CIDEr']:.3f} |")
    for note in t["notes"]:
        print(f"note: {note}")
    print("\n| CE (rule labeler) | precision | recall | F1 |")
    print("|---|---|---|---|")
    print(f"| macro, 14 observations | {ce['precision_macro']:.3f} | {ce['recall_macro']:.3f} | {ce['f1_macro']:.3f} |")
    print(f"| macro, 13 abnormal | | | {ce['f1_macro_13']:.3f} |")
    print(f"| example-based | {ce['precision_example']:.3f} | {ce['recall_example']:.3f} | {ce['f1_example']:.3f} |")
    print(f"| micro | {ce['precision_micro']:.3f} | {ce['recall_micro']:.3f} | {ce['f1_micro']:.3f} |")

    prev = lab.mean(0)
    print("\n## Label prevalence (rule labeler, positive-or-uncertain)\n")
    print(", ".join(f"{o} {p:.3f}" for o, p in zip(CHEXPERT_OBSERVATIONS, prev, strict=True)))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "split": a.split, "n": len(ids), "n_coded": int(coded.sum()),
            "agreement_findings": agr, "agreement_findings_impression": agr_full,
            "floor": {"report": normal, "text": t, "ce": {k: v for k, v in ce.items()}},
            "prevalence": dict(zip(CHEXPERT_OBSERVATIONS, map(float, prev), strict=True)), "vocab": len(tok)},
            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
