"""The markdown report of a benchmark (``results.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nnunetv2_mapo.benchmark.spec import WARMUP_TRAINER
from nnunetv2_mapo.benchmark.stats import METRICS, QUANTITIES, aggregate
from nnunetv2_mapo.training.settings import ENV_VAR


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def format_stat(stat: Mapping[str, Any], fmt: str) -> str:
    """``mean ± std`` (std with at least two values), ``mean`` for one value, ``–`` for none."""
    if not stat or not stat.get("n"):
        return "–"
    text = fmt.format(stat["mean"])
    if stat["n"] >= 2 and math.isfinite(stat["std"]):
        text += " ± " + fmt.format(stat["std"])
    return text


def paired_lines(paired: Mapping[str, Mapping[str, Mapping[str, Any]]], baseline: str, other: str) -> list[str]:
    """The paired per-case comparison table of each fold (:mod:`nnunetv2_mapo.benchmark.paired`)."""
    lines = []
    for fold, metrics in paired.items():
        lines += ["", f"Paired per-case differences, {other} - {baseline}, fold {fold} (mean over seeds and cases, "
                      f"95% hierarchical bootstrap interval over seeds and cases; wins: seeds whose mean is better):",
                  "", "| metric | difference | 95% interval | relative | seed wins | cases |",
                  "|---|---|---|---|---|---|"]
        for metric, c in metrics.items():
            lines.append(f"| {metric} | {c['mean_difference']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | "
                         f"{c['relative']:+.1%} | {c['seed_wins']}/{c['seeds']} | {c['cases']} |")
    return lines


def test_source_lines(results: Mapping[str, Any]) -> list[str]:
    """The second test set from another source (``--test-source``): mean metrics and paired comparisons."""
    if "test_source" not in results:
        return []
    name, summary = results["test_source"], results["summary_test_source"]
    lines = ["", f"## Test source {name} (another source: predicted by the same networks, never trained on)", "",
             "| trainer | Dice | HD95 | ASD | NSD |", "|---|---|---|---|---|"]
    formats = {key: fmt for key, _, fmt in QUANTITIES}
    for trainer, stats in summary.items():
        lines.append(f"| {trainer} | " + " | ".join(format_stat(stats[m], formats[m]) for m in METRICS) + " |")
    for other, paired in results["paired_test_source"].items():
        lines += paired_lines(paired, results["trainers"][0], other)
    return lines


def format_table(results: Mapping[str, Any]) -> str:
    """The markdown report: summary table with ratios, notes, per-run table.

    Args:
        results: What :meth:`Benchmark.collect_results` returns (``spec``, ``trainers``, ``summary``, ``ratios``,
            ``runs``, ``warmups``).

    Returns:
        Markdown text.
    """
    spec = results["spec"]
    baseline, *equal, mapo = results["trainers"]  # the equal-compute arm, when run, sits between them
    summary, ratios, runs = results["summary"], results["ratios"], results["runs"]
    counts = {t: sum(1 for r in runs if r["trainer"] == t) for t in results["trainers"]}
    equal_head = "".join(f" equal compute: {t} (n={counts[t]}) |" for t in equal)
    lines = [
        f"# Benchmark: {results['dataset']} {spec['configuration']}, folds {spec['folds']}, {spec['seeds']} seed(s)",
        "",
        f"Budget per trainer: {_epochs(spec['epochs'])} x {spec['iterations']} iterations (+ {spec['val_iterations']} "
        f"validation iterations per epoch), plans `{results['plans_identifier']}` (batch size "
        f"{results['batch_size']}), device {spec['device']}"
        + (f", after a shared warm-up of {_epochs(spec['shared_warmup_epochs'])}." if spec["shared_warmup_epochs"]
           else ", no shared warm-up.")
        + (f" The equal-compute arm trains {results.get('equal_compute_iterations')} iterations per epoch: MAPO's "
           f"extra sample-passes (pair rows; rounds' forward passes at a third of a training pass)." if equal else ""),
        "",
        f"| quantity | baseline: {baseline} (n={counts[baseline]}) |{equal_head} MAPO: {mapo} (n={counts[mapo]}) "
        f"| MAPO / baseline |" + (" MAPO / equal compute |" if equal else ""),
        "|---|---|---|---|" + ("---|---|" if equal else ""),
    ]
    for key, label, fmt in QUANTITIES:
        ratio_fmt = "{:.3f}"
        cells = [format_stat(summary[t][key], fmt) for t in results["trainers"]] + [format_stat(ratios[key], ratio_fmt)]
        if equal:
            cells.append(format_stat(results["ratios_equal_compute"][key], ratio_fmt))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += paired_lines(results.get("paired", {}), baseline, mapo)
    for arm in equal:
        lines += paired_lines(results.get("paired_equal_compute", {}), arm, mapo)
    lines += test_source_lines(results)
    warmups = results.get("warmups", [])
    lines += [
        "",
        "Notes:",
        "",
        f"- The baseline is `nnUNetTrainer` + budget overrides only (`{baseline}` applies the nnU-Net keys of "
        f"`{ENV_VAR}`: epochs, iterations per epoch, validation iterations, checkpoint interval"
        + (", and the nnU-Net settings given with --settings" if any(not k.startswith("mapo_")
                                                                    for k in spec["settings"]) else "")
        + "); everything else is nnU-Net's default trainer.",
        "- Values are mean ± sample standard deviation (ddof = 1) over seeds x folds; one value has no spread. "
        "MAPO / baseline: mean ± std of the ratios of the two runs with the same seed and fold, measured in the "
        "same benchmark on the same machine.",
        "- A seed is a repetition: nnU-Net has no seed option (initial weights, sampling and augmentation are random "
        "in every training process); `mapo_seed` is set to the seed index.",
        "- Dice: nnU-Net's foreground mean on the fold's validation cases (nnU-Net's final validation predictions). "
        "HD95/ASD/NSD (NSD at the default 2 mm tolerance): mean over foreground classes of the per-class means over "
        "cases where prediction and reference "
        "are both non-empty (docs/evaluation.md).",
        "- Wall time: the `nnUNetv2_train` processes of a training (start-up, epochs, final validation; summed over "
        "resumed runs). Time per epoch and epoch time come from the checkpoint's epoch_start/end timestamps of the "
        "trainer's own epochs" + (" (after the warm-up)." if spec["shared_warmup_epochs"] else ".")
        + " Preference rounds: sum of the logged `mapo_regen_seconds`; share = that / epoch time.",
        "- Peak memory: `ru_maxrss` of each `nnUNetv2_train` process from `os.wait4` (its own peak or that of its "
        "largest waited-for child, whichever is larger; maximum over resumed runs), measured by a small launcher "
        "process so that the benchmark's own memory is not counted.",
    ]
    if spec["shared_warmup_epochs"]:
        wall = aggregate(w.get("wall_seconds") for w in warmups)
        lines.append(f"- Shared warm-up: `{WARMUP_TRAINER}` ({_epochs(spec['shared_warmup_epochs'])}, learning-rate "
                     f"schedule over {spec['shared_warmup_epochs'] + spec['epochs']} epochs, no final validation), "
                     + ("once per fold, shared by all seeds" if spec.get("single_warmup") else "once per seed and fold")
                     + f"; wall time {format_stat(wall, '{:.1f}')} s, not included above. Both "
                     f"trainers continue from its checkpoint with `--c`.")
    lines += ["", "## Runs", "",
              "| trainer | seed | fold | Dice | HD95 (mm) | ASD (mm) | NSD | cases | wall (s) | s/epoch "
              "| pref. rounds (s) | peak RSS (GiB) | peak GPU (GiB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value: Any, fmt: str) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)

    for r in sorted(runs, key=lambda r: (r["seed"], r["fold"], r["trainer"] != baseline)):
        lines.append(f"| {r['trainer']} | {r['seed']} | {r['fold']} | {cell(r.get('Dice'), '{:.4f}')} | "
                     f"{cell(r.get('HD95'), '{:.2f}')} | {cell(r.get('ASD'), '{:.3f}')} | "
                     f"{cell(r.get('NSD'), '{:.4f}')} | {r.get('num_cases', '–')} | "
                     f"{cell(r.get('wall_seconds'), '{:.1f}')} | {cell(r.get('seconds_per_epoch'), '{:.2f}')} | "
                     f"{cell(r.get('preference_seconds'), '{:.1f}')} | {cell(r.get('peak_rss_gib'), '{:.2f}')} | "
                     f"{cell(r.get('peak_gpu_gib'), '{:.2f}')} |")
    missing = results.get("missing", [])
    if missing:
        lines += ["", f"Not finished (left out above): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"
