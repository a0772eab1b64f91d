"""A new user's first hour, as real `fedunlearn` processes: nothing of theirs is deleted, and bad
input stops with one line before any work (no traceback, exit code 2)."""

import pytest

from cli_process import ROOT, run

QUICK = ["--set", "data.name=digits", "--set", "data.train_size=0", "--set", "model.name=mlp"]


def _one_line_error(result, *words):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for word in words:
        assert word in errors[0]
    assert "original" not in result.stderr and "round" not in result.stderr  # no training started


def test_fresh_refuses_a_folder_fedunlearn_did_not_create(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("a user's own work")
    result = run("run", "simulations/quickstart.toml", "--out", str(folder), "--fresh", *QUICK)
    _one_line_error(result, "refuses", "not created by fedunlearn")
    assert (folder / "thesis.txt").read_text() == "a user's own work"


def test_fresh_refuses_a_results_folder_holding_a_foreign_file(tmp_path):
    folder = tmp_path / "results"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / ".fedunlearn").write_text("{}")
    (folder / "report.md").write_text("old report")
    (folder / "notes.txt").write_text("mine")
    result = run("run", "simulations/quickstart.toml", "--out", str(folder), "--fresh", *QUICK)
    _one_line_error(result, "refuses", "notes.txt")
    assert (folder / "notes.txt").exists() and (folder / "report.md").exists()


def test_fresh_refuses_the_current_folder():
    result = run("run", "simulations/quickstart.toml", "--out", ".", "--fresh", *QUICK)
    _one_line_error(result, "refuses", "current")
    assert (ROOT / "pyproject.toml").exists()


def test_fresh_empties_only_its_own_folder(tmp_path):
    from fedunlearn import outdir

    folder = outdir.prepare(tmp_path / "r")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "original-1.pt").write_bytes(b"x")
    (folder / "confidence_old.png").write_bytes(b"x")
    outdir.prepare(folder, fresh=True)
    assert [p.name for p in folder.iterdir()] == [".fedunlearn"]


@pytest.mark.parametrize("fresh", [[], ["--fresh"]])
def test_out_naming_a_file(tmp_path, fresh):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    result = run("run", "simulations/quickstart.toml", "--out", str(target), *fresh, *QUICK)
    _one_line_error(result, "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("overrides, words", [
    (["forget.kind=class", "forget.classes=[0,1,2,3,4,5,6,7,8,9]"], ["every class"]),
    (["forget.kind=indices", "forget.indices=[99999999999999999999]"], ["out of range"]),
])
def test_impossible_forget_requests(tmp_path, overrides, words):
    args = [a for o in overrides for a in ("--set", o)]
    _one_line_error(run("run", "simulations/quickstart.toml", "--out", str(tmp_path), *QUICK, *args), *words)


def test_dirichlet_alpha_too_small_fails_before_ray(tmp_path):
    result = run("run", "simulations/withdrawal_noniid.toml", "--out", str(tmp_path), "--set", "data.name=digits",
                 "--set", "data.train_size=0", "--set", "data.test_size=0", "--set", "federation.alpha=0.001")
    _one_line_error(result, "alpha=0.001")
    assert "Ray" not in result.stderr and "ray" not in result.stderr.lower().replace("array", "")


@pytest.mark.parametrize("text", ["", "[experiment]\nname = 'x'\n"])
def test_config_without_kind(tmp_path, text):
    config = tmp_path / "c.toml"
    config.write_text(text)
    _one_line_error(run("run", str(config), "--out", str(tmp_path / "out")), "no 'kind'", 'kind = "centralized"')
    assert not (tmp_path / "out").exists()


def test_a_users_folder_used_as_out_is_never_marked_as_ours(tmp_path):
    from fedunlearn import outdir

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "my_notes.md").write_text("mine")  # a name fedunlearn could also have written
    outdir.prepare(folder)
    assert not outdir.is_ours(folder)
    result = run("run", "simulations/quickstart.toml", "--out", str(folder), "--fresh", *QUICK)
    _one_line_error(result, "not created by fedunlearn")
    assert (folder / "my_notes.md").read_text() == "mine"
