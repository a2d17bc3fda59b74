"""The overview of every regime measured: one markdown row per benchmark, kept in a table of a markdown file.

``docs/benchmarks.md`` opens with this table (one row per regime and arm, newest first) so that a reader sees at a
glance where what was measured and what came out. ``nnunetv2_mapo benchmark-compare FOLDERS --regimes FILE.md`` turns
each benchmark folder's ``results.json`` into a row and puts it into FILE's table: a row of the same arm (the
trainer and the benchmark's folder name), data and budget is replaced in place, keeping its hand-written reading;
any other row is inserted at the top. ``--forest PNG`` draws every row of the table that has a Dice interval
(:func:`nnunetv2_mapo.benchmark.plots.plot_forest`), rows written by hand included.

Columns: Dice and NSD differences are in points (x 100) with the paired 95% bootstrap interval; HD95 and ASD are the
mean paired difference relative to the baseline's mean (:func:`nnunetv2_mapo.benchmark.paired.compare`); seed wins
count the seeds whose mean Dice difference is above 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from nnunetv2_mapo.benchmark.spec import EQUAL_COMPUTE_TRAINER

COLUMNS = ("date", "version", "data, configuration", "train / test cases", "budget (epochs x iterations, batch)",
           "seeds", "arm", "Dice diff [95% CI]", "HD95", "ASD", "NSD diff", "Dice seed wins", "reading")
KEY_COLUMNS = ("data, configuration", "train / test cases", "budget (epochs x iterations, batch)", "arm")
NO_READING = "–"
INTERVAL = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*\[\s*([+-]?\d+(?:\.\d+)?)\s*,\s*([+-]?\d+(?:\.\d+)?)\s*\]")


class RegimesTableError(ValueError):
    """A markdown file without the regimes table, or a table whose columns are not :data:`COLUMNS`."""


def _points(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "–"
    return f"{100 * cell['mean_difference']:+.2f} [{100 * cell['ci_low']:+.2f}, {100 * cell['ci_high']:+.2f}]"


def _relative(cell: Mapping[str, Any] | None) -> str:
    if not cell or cell.get("relative") is None or cell["relative"] != cell["relative"]:
        return "–"
    return f"{cell['relative']:+.1%}"


def _dataset_label(dataset: str) -> str:
    return re.sub(r"^Dataset\d+_", "", dataset)


def regime_rows(results: Mapping[str, Any], name: str) -> list[dict[str, str]]:
    """The table rows of one benchmark: its MAPO arm against the baseline, against the equal-compute arm when run, and
    against the baseline on the test set from another source (``--test-source``) when scored.

    Args:
        results: The benchmark's ``results.json``.
        name: The benchmark's name (its folder), shown with the arm so that the row names what reproduces it.

    Returns:
        One row (column -> cell) per fold and comparison that has paired results; the reading is :data:`NO_READING`.
    """
    spec = results["spec"]
    budget = f"{spec['epochs']} x {spec['iterations']}, {results.get('batch_size') or spec.get('batch_size')}"
    if spec.get("shared_warmup_epochs"):
        budget += f" after a {spec['shared_warmup_epochs']}-epoch shared warm-up"
    mapo = spec["mapo_trainer"]
    test_cases = {r["fold"]: r.get("num_cases") for r in results.get("runs", []) if r.get("trainer") == mapo}
    # (against, paired comparison, the test set when it is not the held-out cases)
    comparisons = [("", results.get("paired", {}), ""),
                   (f" vs `{EQUAL_COMPUTE_TRAINER}`", results.get("paired_equal_compute", {}), "")]
    if "test_source" in results:  # the same networks on a test set from another source
        comparisons.append(("", results["paired_test_source"].get(mapo, {}),
                            f" -> {_dataset_label(results['test_source'])}"))
    rows = []
    for against, paired, tested_on in comparisons:
        for fold, cells in sorted(paired.items()):
            dice = cells.get("Dice")
            if dice is None:
                continue
            train = spec["train_cases"] if spec.get("train_cases") else f"fold {fold}"
            if spec.get("unlabeled_cases"):  # the semi-supervised protocol: held-out cases without their labels
                train = f"{train} (+{spec['unlabeled_cases']} unlabeled)"
            tested = dice["cases"] if tested_on else test_cases.get(int(fold), dice["cases"])
            rows.append({
                "date": str(results.get("written", ""))[:10] or "–",
                "version": str(results.get("environment", {}).get("nnunetv2_mapo", "–")),
                "data, configuration": f"{_dataset_label(results['dataset'])} {spec['configuration']}{tested_on}",
                "train / test cases": f"{train} / {tested}",
                "budget (epochs x iterations, batch)": budget,
                "seeds": str(dice["seeds"]),
                "arm": f"`{mapo}` ({name}){against}",
                "Dice diff [95% CI]": _points(dice),
                "HD95": _relative(cells.get("HD95")),
                "ASD": _relative(cells.get("ASD")),
                "NSD diff": _points(cells.get("NSD")),
                "Dice seed wins": f"{dice['seed_wins']}/{dice['seeds']}",
                "reading": NO_READING,
            })
    return rows


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _format_row(row: Mapping[str, str]) -> str:
    return "| " + " | ".join(row[column].replace("|", "/") for column in COLUMNS) + " |"


def _find_table(lines: Sequence[str]) -> tuple[int, int]:
    """The index of the table's header line and the index one past its last row."""
    for start, line in enumerate(lines):
        if line.startswith("|") and _split_row(line)[:2] == list(COLUMNS[:2]):
            if _split_row(line) != list(COLUMNS):
                raise RegimesTableError(f"The regimes table's columns are {_split_row(line)}; expected "
                                        f"{list(COLUMNS)}. Fix the header line of the table.")
            end = start + 2
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            return start, end
    raise RegimesTableError(f"No regimes table (a header line '| {' | '.join(COLUMNS)} |') in the file: add one, "
                            "or give a new file, which is then created with it.")


def read_table(text: str) -> list[dict[str, str]]:
    """The rows of the regimes table in a markdown text, in their order (column -> cell).

    Raises:
        RegimesTableError: No table with :data:`COLUMNS`.
    """
    lines = text.splitlines()
    start, end = _find_table(lines)
    return [dict(zip(COLUMNS, _split_row(line))) for line in lines[start + 2:end]]


def update_table(text: str, rows: Sequence[Mapping[str, str]]) -> str:
    """``text`` with ``rows`` in its regimes table: a row with the same :data:`KEY_COLUMNS` is replaced in place (its
    reading kept when the new row has none), the others are inserted at the top, in the order given.

    Args:
        text: A markdown text with the table; an empty text gets a new table.
        rows: Rows of :func:`regime_rows`.

    Raises:
        RegimesTableError: A text that is not empty but has no table with :data:`COLUMNS`.
    """
    if not text.strip():
        text = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    lines = text.splitlines()
    start, end = _find_table(lines)
    existing = [dict(zip(COLUMNS, _split_row(line))) for line in lines[start + 2:end]]
    new_rows = []
    for row in rows:
        key = tuple(row[c] for c in KEY_COLUMNS)
        match = next((i for i, old in enumerate(existing) if tuple(old.get(c, "") for c in KEY_COLUMNS) == key), None)
        if match is None:
            new_rows.append(dict(row))
        else:
            reading = row["reading"] if row["reading"] != NO_READING else existing[match].get("reading", NO_READING)
            existing[match] = {**row, "reading": reading}
    table = [_format_row(r) for r in [*new_rows, *existing]]
    ending = "\n" if text.endswith("\n") else ""
    return "\n".join([*lines[:start + 2], *table, *lines[end:]]) + ending


def dice_intervals(rows: Sequence[Mapping[str, str]]) -> list[tuple[str, float, float, float]]:
    """The rows whose Dice cell is ``mean [low, high]``: (label, mean, low, high), in the table's order; the others
    (ratios, ranges) are left out."""
    found = []
    for row in rows:
        match = INTERVAL.match(row.get("Dice diff [95% CI]", ""))
        if match:
            label = (f"{row['date']} {row.get('version', '')} {row['data, configuration']}, {row['seeds']} seed(s): "
                     f"{row['arm'].replace('`', '')}")
            found.append((label, *(float(group) for group in match.groups())))
    return found
