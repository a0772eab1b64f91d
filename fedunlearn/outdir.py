"""The results folder: checked before any work, marked as ours, and emptied only when it is ours.

Every folder `fedunlearn run` writes into gets a marker file. `--fresh` deletes a folder only
when it carries the marker and holds nothing but what fedunlearn writes there (reports, plots,
checkpoints, sub-experiment folders that are themselves marked); anything else is refused with
a message that names what would have been lost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fedunlearn.errors import FedUnlearnError

MARKER = ".fedunlearn"
# What a run writes at the top of a results folder; sub-folders must carry their own marker
# (survey parts) or be the checkpoint folder.
OWNED_SUFFIXES = (".png", ".json", ".md")
OWNED_DIRS = ("checkpoints",)


def prepare(out: str | Path, fresh: bool = False) -> Path:
    """Check `out` can be a results folder, empty it when `fresh`, create and mark it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FedUnlearnError(f"--out '{out}' is a file, not a folder; choose a folder for the results")
    if fresh and out.exists():
        _remove_ours(out)
    out.mkdir(parents=True, exist_ok=True)
    mark(out)
    return out


def mark(out: str | Path) -> None:
    """Mark a new or empty folder as a results folder. A folder that already held other files
    stays unmarked, so `--fresh` never treats a user's own .md or .png files as ours."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if not marker.exists() and not any(out.iterdir()):
        marker.write_text(json.dumps({"written_by": "fedunlearn", "note": "results folder; --fresh may empty it"}))


def is_ours(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def foreign_files(folder: Path) -> list[Path]:
    """Entries in a marked results folder that fedunlearn did not write."""
    foreign = []
    for entry in folder.iterdir():
        if entry.name == MARKER:
            continue
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.is_dir():
            if entry.name in OWNED_DIRS:
                continue
            if is_ours(entry):
                foreign += foreign_files(entry)
            else:
                foreign.append(entry)
        elif not entry.name.endswith(OWNED_SUFFIXES):
            foreign.append(entry)
    return foreign


def _remove_ours(out: Path) -> None:
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved == Path.home().resolve() or resolved.parent == resolved:
        raise FedUnlearnError(f"--fresh refuses to empty '{out}' (the current, home or root folder); "
                              "give --out a results folder of its own")
    if not any(resolved.iterdir()):
        return
    if not is_ours(resolved):
        raise FedUnlearnError(f"--fresh refuses to empty '{out}': it was not created by fedunlearn "
                              f"(no {MARKER} marker); delete it yourself or choose another --out")
    foreign = foreign_files(resolved)
    if foreign:
        names = ", ".join(str(p.relative_to(resolved)) for p in foreign[:5])
        raise FedUnlearnError(f"--fresh refuses to empty '{out}': it holds files fedunlearn did not write "
                              f"({names}{', ...' if len(foreign) > 5 else ''}); move them or choose another --out")
    shutil.rmtree(resolved)


def remove_stale_plots(out: Path, keep: list[str | Path]) -> None:
    """Delete PNGs a previous run of this folder wrote that this run did not (a marked folder only)."""
    out = Path(out)
    if not is_ours(out):
        return
    keep_names = {Path(p).name for p in keep}
    for png in out.glob("*.png"):
        if png.name not in keep_names:
            png.unlink(missing_ok=True)
