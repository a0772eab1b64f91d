"""report.md tells a reader which rows collapsed, what avg_gap means and which speedups are noise."""

from fedunlearn import outdir
from fedunlearn.metrics.reading import collapsed, reading_notes
from fedunlearn.metrics.report import markdown_table, write_report

ROWS = [
    {"method": "original", "test_acc": 0.90, "avg_gap": 1.87, "wall_s": 30.0},
    {"method": "retrain", "test_acc": 0.88, "avg_gap": 0.0, "wall_s": 25.0, "speedup": 1.0},
    {"method": "finetune", "test_acc": 0.87, "avg_gap": 2.14, "wall_s": 0.4, "speedup": 62.5},
    {"method": "neggrad_plus", "test_acc": 0.10, "avg_gap": 40.0, "wall_s": 5.0, "speedup": 5.0},
]


def test_collapsed_rows_are_named_in_one_line(tmp_path):
    assert collapsed(ROWS, chance=0.1) == [("neggrad_plus", 0.10)]
    assert collapsed(ROWS, chance=None) == [("neggrad_plus", 0.10)]  # under half of retrain's
    md = write_report(tmp_path, "t", {}, ROWS, extra={"num_classes": 10}).read_text()
    flagged = [line for line in md.splitlines() if "COLLAPSED" in line]
    assert len(flagged) == 1 and "neggrad_plus" in flagged[0] and "finetune" not in flagged[0]
    gap = [line for line in md.splitlines() if line.startswith("- avg_gap")]
    assert len(gap) == 1 and "1.87" in gap[0] and "percentage points" in gap[0]


def test_a_matrix_judges_each_cell_by_its_own_retrain_and_counts_per_method():
    """In a scenario matrix a method is collapsed against its own cell's retrain (0.30 is fine in a
    cell whose retrain reached 0.35, not in one at 0.90), and the line counts cells per method."""
    rows = [{"scenario": "a", "seed": 0, "method": "retrain", "test_acc": 0.90},
            {"scenario": "a", "seed": 0, "method": "subtract", "test_acc": 0.30},
            {"scenario": "b", "seed": 0, "method": "retrain", "test_acc": 0.35},
            {"scenario": "b", "seed": 0, "method": "subtract", "test_acc": 0.30},
            {"scenario": "b", "seed": 1, "method": "retrain", "test_acc": 0.90},
            {"scenario": "b", "seed": 1, "method": "subtract", "test_acc": 0.20}]
    flagged = [n for n in reading_notes(rows) if "COLLAPSED" in n]
    assert len(flagged) == 1 and "cells of 3" in flagged[0] and "subtract in 2" in flagged[0]


def test_sub_second_speedups_are_marked():
    table = markdown_table(ROWS)
    assert "~62.5" in table and "| 5.0000 |" in table and "~5.0" not in table


def test_a_rerun_removes_the_previous_runs_plots(tmp_path):
    outdir.prepare(tmp_path)
    for name in ("confidence_old.png", "confidence_new.png"):
        (tmp_path / name).write_bytes(b"png")
    write_report(tmp_path, "t", {}, ROWS, plots=[str(tmp_path / "confidence_new.png")])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["confidence_new.png"]


def test_quiet_hides_every_progress_bar(capsys):
    """`-q` (set_progress(False)) silences methods that ask for a bar, e.g. neggrad_plus and finetune."""
    import torch

    from fedunlearn.data import DataConfig, load_dataset
    from fedunlearn.models import ModelConfig, build_model
    from fedunlearn.training import TrainConfig, set_progress
    from fedunlearn.unlearn import UnlearnTask, finetune, neggrad_plus

    data = load_dataset(DataConfig(name="digits", train_size=200, test_size=50), 0)
    make_model = lambda: build_model(ModelConfig(name="mlp", hidden=16), data.input_shape, 10)  # noqa: E731
    task = UnlearnTask(original=make_model(), retain=data.train.subset(torch.arange(20, 200)),
                       forget=data.train.subset(torch.arange(20)), train_cfg=TrainConfig(epochs=1),
                       make_model=make_model, num_classes=10, device=torch.device("cpu"))
    try:
        for quiet in (False, True):
            set_progress(not quiet)
            capsys.readouterr()
            neggrad_plus.unlearn(task, neggrad_plus.Config(epochs=1))
            finetune.unlearn(task, finetune.Config(epochs=1))
            err = capsys.readouterr().err
            assert ("neggrad_plus" in err and "finetune" in err) != quiet, err
    finally:
        set_progress(True)
