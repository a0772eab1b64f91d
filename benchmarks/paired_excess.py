"""Two variants of the repair on the same validation cells, compared cell by cell.

benchmarks/withdrawal_repair_tuning.py writes one row per (cell, variant) with `--json`. This
script pairs a variant's rows with a base's rows on the cells both ran and prints the mean
difference in excess over the matrix's targets (the rule of docs/findings.md, sessions 13-20:
max(0, |test gap| - 0.02) + max(0, forget gap - 0.03) + max(0, backdoor gap - 0.03)), a 95%
bootstrap interval over cells, how many cells got better or worse, and the within-target counts.
The federations are seeded and the rows are deterministic on one kind of machine, so what the
interval measures is how much the choice depends on which cells were drawn: a variant whose
interval holds 0 is not shown to be better on federations no config names.

    python benchmarks/paired_excess.py --base a.json,b.json --variant c.json,d.json [--match judge=start]
"""

from __future__ import annotations

import argparse
import json
import random


def excess(row: dict, tol=(0.02, 0.03, 0.03)) -> float:
    return (max(0.0, abs(row["test_gap"]) - tol[0]) + max(0.0, row["forget_gap"] - tol[1])
            + max(0.0, row["backdoor_gap"] - tol[2]))


def rows_by_cell(files: str, match: str = "") -> dict:
    """cell -> row, from the tuning harness's JSON files; with `match`, only variants ending with it."""
    out = {}
    for path in files.split(","):
        with open(path) as f:
            for row in json.load(f):
                if row["variant"].endswith(match):
                    out[row["cell"]] = row
    return out


def compare(base: dict, variant: dict, draws: int = 5000, seed: int = 0) -> dict:
    cells = sorted(set(base) & set(variant))
    if not cells:
        raise SystemExit("the two sets of rows share no cell: run both variants on the same --cells")
    diffs = [excess(variant[c]) - excess(base[c]) for c in cells]
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(draws))
    return {"cells": len(cells), "mean_diff": sum(diffs) / len(diffs),
            "low": means[int(0.025 * draws)], "high": means[int(0.975 * draws) - 1],
            "better": sum(d < -1e-9 for d in diffs), "worse": sum(d > 1e-9 for d in diffs),
            "base_within": sum(bool(base[c]["ok"]) for c in cells),
            "variant_within": sum(bool(variant[c]["ok"]) for c in cells),
            "base_excess": sum(excess(base[c]) for c in cells) / len(cells)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="comma-separated JSON files of the base's rows")
    ap.add_argument("--variant", required=True, help="comma-separated JSON files of the variant's rows")
    ap.add_argument("--base-match", default="", help="keep only base rows whose variant ends with this")
    ap.add_argument("--match", default="", help="keep only variant rows whose variant ends with this")
    args = ap.parse_args()
    r = compare(rows_by_cell(args.base, args.base_match), rows_by_cell(args.variant, args.match))
    print(f"{r['cells']} cells: excess {r['base_excess']:.3f} -> {r['base_excess'] + r['mean_diff']:.3f} "
          f"(difference {r['mean_diff']:+.4f}, 95% bootstrap over cells [{r['low']:+.4f}, {r['high']:+.4f}]); "
          f"better in {r['better']}, worse in {r['worse']}; within target {r['base_within']} -> {r['variant_within']}")


if __name__ == "__main__":
    main()
