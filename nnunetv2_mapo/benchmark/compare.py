"""``nnunetv2_mapo benchmark-compare``: the benchmarks of several MAPO variants side by side, in one markdown table.

Each benchmark folder (``nnunetv2_mapo benchmark``, one ``--mapo-trainer`` each) holds its ``results.json``. The
folders must come from the same protocol (dataset, configuration, budget, batch size, split, settings), which is what
lets them share the baseline and the equal-compute arm (:func:`.spec.shared_arm_name`). The table has one row per
variant, named by its trainer and its folder (one trainer may be run with several ``mapo_*`` settings): its mean
metrics, the paired per-case difference to the baseline (and to the equal-compute arm, when run) with its 95%
interval and seed wins, and its wall time against the baseline's.

With ``--regimes FILE.md`` the folders may come from different protocols: each becomes a row of the overview table
in FILE (:mod:`.regimes`), and ``--forest PNG`` draws that table's Dice intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from nnunetv2_mapo.benchmark.spec import BASELINE_TRAINER, EQUAL_COMPUTE_TRAINER, nnunet_settings

PROTOCOL_KEYS = ("dataset_id", "configuration", "epochs", "iterations", "val_iterations", "batch_size",
                 "shared_warmup_epochs", "single_warmup", "device", "train_cases", "split_file", "seeds", "folds")
METRICS = (("Dice", "{:.4f}"), ("HD95", "{:.2f}"), ("ASD", "{:.3f}"), ("NSD", "{:.4f}"))


class CompareInputError(ValueError):
    """Benchmark folders that cannot be compared (missing results, other protocols)."""


def load_results(folders: Sequence[str], same_protocol: bool = True) -> list[dict[str, Any]]:
    """Reads ``results.json`` of each folder and checks that they share one protocol.

    Args:
        folders: Benchmark folders (``WORKDIR/benchmarks/NAME``).
        same_protocol: Whether to refuse folders of different protocols (not for the regimes table).

    Returns:
        The results, in the order given.

    Raises:
        CompareInputError: A folder without ``results.json``, or folders whose protocols differ (naming the keys).
    """
    results = []
    for folder in folders:
        path = os.path.join(folder, "results.json")
        if not os.path.isfile(path):
            raise CompareInputError(f"{path} does not exist: run `nnunetv2_mapo benchmark` (or --report-only) for "
                                    f"{folder} first.")
        with open(path, encoding="utf-8") as handle:
            results.append(json.load(handle))
    if not results:
        raise CompareInputError("Give at least one benchmark folder.")
    if not same_protocol:
        return results
    first = results[0]["spec"]
    for folder, result in zip(folders[1:], results[1:]):
        differ = [k for k in PROTOCOL_KEYS if result["spec"].get(k) != first.get(k)]
        if nnunet_settings(result["spec"].get("settings", {})) != nnunet_settings(first.get("settings", {})):
            differ.append("settings (nnU-Net keys)")
        if differ:
            raise CompareInputError(f"{folder} was run with another protocol than {folders[0]}: {differ} differ.")
    return results


def _mean(result: Mapping[str, Any], trainer: str, key: str) -> float:
    return result["summary"].get(trainer, {}).get(key, {}).get("mean", math.nan)


def _difference(paired: Mapping[str, Any], metric: str, fmt: str) -> str:
    cells = [c[metric] for c in paired.values() if metric in c]
    if len(cells) != 1:  # several folds: their own tables in each results.md
        return "–"
    c = cells[0]
    return (f"{fmt.format(c['mean_difference'])} [{fmt.format(c['ci_low'])}, {fmt.format(c['ci_high'])}] "
            f"{c['seed_wins']}/{c['seeds']}")


def compare_table(results: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> str:
    """The markdown table of :func:`load_results`' results (see the module docstring).

    Args:
        results: ``results.json`` of each benchmark, one MAPO trainer each.
        names: The benchmarks' names (their folders' base names), shown beside the trainer; default 1, 2, ...

    Returns:
        Markdown: a table of the arms' means, and one of the paired differences.
    """
    names = [str(i + 1) for i in range(len(results))] if names is None else list(names)
    labels = [f"{r['spec']['mapo_trainer']} ({name})" for r, name in zip(results, names)]
    first = results[0]
    arms = [(BASELINE_TRAINER, first)] + ([(EQUAL_COMPUTE_TRAINER, first)] if first["spec"].get("equal_compute")
                                          else [])
    arms += [(r["spec"]["mapo_trainer"], r) for r in results]
    arm_labels = [trainer for trainer, _ in arms[:len(arms) - len(results)]] + labels
    base_wall = _mean(first, BASELINE_TRAINER, "wall_seconds")
    lines = ["| arm | Dice | HD95 | ASD | NSD | wall time / baseline | rounds' share |",
             "|---|---|---|---|---|---|---|"]
    for (trainer, result), label in zip(arms, arm_labels):
        cells = [fmt.format(_mean(result, trainer, metric)) for metric, fmt in METRICS]
        wall = _mean(result, trainer, "wall_seconds") / base_wall if base_wall else math.nan
        share = _mean(result, trainer, "preference_share")
        lines.append(f"| {label} | {' | '.join(cells)} | {wall:.2f}x | "
                     f"{'–' if math.isnan(share) else f'{share:.1%}'} |")
    shown = (("Dice", "{:+.4f}"), ("HD95", "{:+.2f}"), ("ASD", "{:+.3f}"))
    lines += ["", "Paired per-case differences, variant - arm: mean [95% interval] seed wins",
              "", "| variant | against | " + " | ".join(m for m, _ in shown) + " |", "|---|---|---|---|---|"]
    for result, label in zip(results, labels):
        for against, key in (("baseline", "paired"), ("equal compute", "paired_equal_compute")):
            if key in result:
                cells = [_difference(result[key], metric, fmt) for metric, fmt in shown]
                lines.append(f"| {label} | {against} | {' | '.join(cells)} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``nnunetv2_mapo benchmark-compare`` to ``parser``."""
    parser.add_argument("folders", nargs="*",
                        help="benchmark folders (WORKDIR/benchmarks/NAME) of one protocol (any, with --regimes)")
    parser.add_argument("-o", "--output", default=None, help="also write the table to this markdown file")
    parser.add_argument("--signature", default=None, metavar="PNG",
                        help="also draw each variant's validation loss around its rounds beside the baseline's, its "
                             "margin in nats per voxel and its reward accuracy (first seed) to this image")
    parser.add_argument("--regimes", default=None, metavar="MD",
                        help="put a row per folder (any protocol) into the overview table of this markdown file "
                             "(created if missing; a row of the same arm, data and budget is replaced, keeping its "
                             "reading), instead of printing the comparison table")
    parser.add_argument("--forest", default=None, metavar="PNG",
                        help="with --regimes: draw the Dice differences and intervals of every row of its table")


def update_regimes(folders: Sequence[str], markdown: str, forest: str | None) -> list[dict[str, str]]:
    """Puts the rows of ``folders`` into the regimes table of ``markdown`` (written atomically) and draws the forest.

    Returns:
        The rows written.

    Raises:
        CompareInputError: A folder without results, a file without the table, or no interval to draw.
    """
    from nnunetv2_mapo.benchmark.regimes import RegimesTableError, dice_intervals, read_table, regime_rows, update_table
    from nnunetv2_mapo.training.checkpointing import atomic_path

    rows = []
    if folders:
        for folder, result in zip(folders, load_results(folders, same_protocol=False)):
            rows += regime_rows(result, os.path.basename(os.path.normpath(folder)))
    text = ""
    if os.path.isfile(markdown):
        with open(markdown, encoding="utf-8") as handle:
            text = handle.read()
    try:
        text = update_table(text, rows)
        intervals = dice_intervals(read_table(text))
    except RegimesTableError as err:
        raise CompareInputError(f"{markdown}: {err}") from err
    with atomic_path(markdown) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    if forest:
        if not intervals:
            raise CompareInputError(f"{markdown}'s regimes table has no row with a Dice interval to draw.")
        from nnunetv2_mapo.benchmark.plots import plot_forest

        plot_forest(intervals, forest)
    return rows


def run(args: argparse.Namespace) -> int:
    """Entry point: prints the table; 2 for folders that cannot be compared."""
    if args.forest and not args.regimes:
        print("nnunetv2_mapo benchmark-compare: error: --forest draws the table of --regimes MD: give both.",
              file=sys.stderr)
        return 2
    if args.regimes:
        try:
            rows = update_regimes(args.folders, args.regimes, args.forest)
        except CompareInputError as err:
            print(f"nnunetv2_mapo benchmark-compare: error: {err}", file=sys.stderr)
            return 2
        print(f"{len(rows)} row(s) written to the regimes table of {args.regimes}"
              + (f"; forest figure: {args.forest}" if args.forest else ""))
        return 0
    try:
        names = [os.path.basename(os.path.normpath(folder)) for folder in args.folders]
        results = load_results(args.folders)
        table = compare_table(results, names)
    except CompareInputError as err:
        print(f"nnunetv2_mapo benchmark-compare: error: {err}", file=sys.stderr)
        return 2
    print(table)
    if args.signature:
        from nnunetv2_mapo.benchmark.plots import plot_round_signature

        print(f"round signature: {plot_round_signature(results, names, args.signature)}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
    return 0
