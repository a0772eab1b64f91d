"""benchmarks/paired_excess.py: the per-cell comparison that repair variants are chosen by."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("paired_excess", Path(__file__).parents[1] / "benchmarks/paired_excess.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def row(cell, variant, test_gap, forget_gap=0.0, backdoor_gap=0.0):
    ok = abs(test_gap) <= 0.02 and forget_gap <= 0.03 and backdoor_gap <= 0.03
    return {"cell": cell, "variant": variant, "test_gap": test_gap, "forget_gap": forget_gap,
            "backdoor_gap": backdoor_gap, "ok": ok}


def test_excess_counts_only_what_lies_beyond_each_target():
    assert paired.excess(row("a", "v", -0.01, 0.03, 0.0)) == 0.0
    assert paired.excess(row("a", "v", -0.05, 0.13, 0.04)) == pytest.approx(0.03 + 0.10 + 0.01)


def test_a_variant_better_in_every_cell_has_an_interval_below_zero(tmp_path):
    base = [row(f"c{i}", "base", -0.05 - 0.01 * i) for i in range(10)]
    better = [row(f"c{i}", "base,x=1", -0.03 - 0.01 * i) for i in range(10)] + [row("other", "base,x=1", 0.5)]
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "v.json").write_text(json.dumps(better))
    r = paired.compare(paired.rows_by_cell(str(tmp_path / "b.json")),
                       paired.rows_by_cell(str(tmp_path / "v.json"), "x=1"))
    assert r["cells"] == 10 and r["better"] == 10 and r["worse"] == 0  # the unpaired cell is left out
    assert r["mean_diff"] == pytest.approx(-0.02) and r["high"] < 0
    with pytest.raises(SystemExit, match="share no cell"):
        paired.compare({"a": base[0]}, {"b": better[0]})
