"""MAPO settings: defaults, valid ranges, and overrides through ``nnUNet_mapo_config``.

Every setting is a trainer attribute (``mapo_beta``, ``num_epochs``, ...). ``nnUNet_mapo_config`` holds a path to a
JSON file or an inline JSON object whose keys are those attribute names. The whole object is checked before any
value is applied, and every problem raises :class:`MAPOConfigError` naming the key, the value and what is allowed.
Why each default is what it is: ``docs/settings.md``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nnunetv2_mapo.method import (
    DROPOUT_MODES,
    LOSS_TYPES,
    OBJECTIVE_SETS,
    PAIRINGS,
    PREDICTION_PAIRINGS,
    REFERENCE_POLICIES,
    TERM_SCALES,
)

if TYPE_CHECKING:
    from nnunetv2_mapo.method.preference_loss import PreferenceLossConfig

ENV_VAR = "nnUNet_mapo_config"



ALLOW_CHANGED_SETTINGS_VAR = "nnUNet_mapo_allow_changed_settings"


class MAPOConfigError(ValueError):
    """A MAPO setting (or the ``nnUNet_mapo_config`` variable) is invalid."""


class MAPOSettingsChanged(RuntimeError):
    """``--c`` with MAPO settings that differ from the checkpoint's, without the user's opt-in."""


@dataclass(frozen=True)
class Setting:
    """One overridable trainer attribute.

    Args:
        name: The trainer attribute.
        kind: ``int``, ``float``, ``bool``, ``str``, ``rates`` (list of floats), ``optional_int``,
            ``optional_float`` or ``optional_str``.
        allowed: Human-readable range, used in error messages and docs.
        check: Returns True when a (type-checked) value is inside the range.
        default: The trainer's default (``None`` means derived at start; see ``docs/settings.md``).
        help: One line for the docs and ``nnunetv2_mapo doctor``.
    """

    name: str
    kind: str
    allowed: str
    check: Callable[[Any], bool]
    default: Any
    help: str


def _rates_ok(rates: list) -> bool:
    return len(rates) >= 1 and all(0.0 <= r < 1.0 for r in rates)


MAPO_SETTINGS: tuple[Setting, ...] = (
    Setting("mapo_warmup_epochs", "optional_int", "an integer >= 0 and < num_epochs, or null (10% of num_epochs)",
            lambda v: v is None or v >= 0, None, "epochs of plain Dice+CE training before the first preference round"),
    Setting("mapo_start_dice", "float", "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0, 0.0,
            "the first round also waits until nnU-Net's EMA pseudo Dice reaches this (0: right after the warm-up)"),
    Setting("mapo_regen_every", "int", "an integer >= 1", lambda v: v >= 1, 50,
            "epochs between preference rounds at most (set regenerated, reference refreshed); sooner when "
            "mapo_max_pair_uses has spent the set"),
    Setting("mapo_num_hypotheses", "int", "an integer >= 2", lambda v: v >= 2, 8,
            "K, the number of dropout predictions per item"),
    Setting("mapo_dropout_rates", "rates", "a non-empty list of numbers in [0, 1)", _rates_ok,
            (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4),
            "dropout rates, spread evenly over the K hypotheses"),
    Setting("mapo_dropout_mode", "str", f"one of {list(DROPOUT_MODES)}", lambda v: v in DROPOUT_MODES, "element",
            "'element' drops single activations, 'channel' whole feature maps"),
    Setting("mapo_pair_margin", "float", "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0, 0.05,
            "tau: the dispreferred mask's Dice must be at least this far below the best"),
    Setting("mapo_pairing", "str", f"one of {list(PAIRINGS)}", lambda v: v in PAIRINGS, "dropout",
            "y+ the best dropout hypothesis ('dropout', the paper), the best of them and the network's own "
            "prediction ('dropout_and_prediction') or the ground truth; y- the worst hypothesis or "
            "('ground_truth_over_prediction') the network's prediction without dropout"),
    Setting("mapo_objectives", "str", f"one of {list(OBJECTIVE_SETS)}", lambda v: v in OBJECTIVE_SETS, "dice",
            "what rounds rank hypotheses by: Dice, Dice and boundary (one pair each, adaptive weights), or the "
            "boundary (surface Dice at one voxel) alone"),
    Setting("mapo_beta", "float", "a number > 0", lambda v: v > 0, 1.0,
            "temperature beta: the rewards are beta x the log-ratio in nats per disagreement voxel"),
    Setting("mapo_weight", "float", "a number >= 0", lambda v: v >= 0, 1.0,
            "lambda: weight of the preference term; with mapo_term_scale 'voxel_gradient', the multiple of "
            "cross-entropy's largest per-voxel gradient that a disagreement voxel gets at a round's start"),
    Setting("mapo_term_scale", "str", f"one of {list(TERM_SCALES)}", lambda v: v in TERM_SCALES, "voxel_gradient",
            "how the term is sized beside Dice+CE: by its gradient per voxel ('voxel_gradient') or as the mean of "
            "the pairs' losses ('pair_mean', 0.8 and earlier)"),
    Setting("mapo_loss_type", "str", f"one of {list(LOSS_TYPES)}", lambda v: v in LOSS_TYPES, "cdpo",
            "preference loss: DPO ('sigmoid'), conservative DPO ('cdpo'), IPO, hinge, 'target_margin', SimPO "
            "(reference-free), DPO-Positive ('dpop') or RPO"),
    Setting("mapo_label_smoothing", "float", "a number in (0, 0.5)", lambda v: 0 < v < 0.5, 0.1,
            "cDPO's epsilon ('cdpo'): the loss stops pulling at a margin of ln((1 - eps) / eps) / beta nats per voxel"),
    Setting("mapo_target_margin", "float", "a number > 0", lambda v: v > 0, 1.0,
            "the margin in nats per disagreement voxel at which 'target_margin' stops pulling"),
    Setting("mapo_simpo_gamma", "float", "a number >= 0", lambda v: v >= 0, 0.5,
            "SimPO's target reward margin gamma (mapo_loss_type 'simpo')"),
    Setting("mapo_dpop_lambda", "float", "a number >= 0", lambda v: v >= 0, 10.0,
            "DPO-Positive's penalty lambda on a preferred mask less likely than under the reference ('dpop')"),
    Setting("mapo_rpo_alpha", "float", "a number >= 0", lambda v: v >= 0, 1.0,
            "RPO's weight of the preferred mask's negative log-likelihood per disagreement voxel ('rpo')"),
    Setting("mapo_reference_policy", "str", f"one of {list(REFERENCE_POLICIES)}", lambda v: v in REFERENCE_POLICIES,
            "round", "the reference policy: the network at each round ('round', the paper) or at the first round, kept "
                     "for the whole training ('first_round'; one more forward pass per case and round)"),
    Setting("mapo_online_pairs", "bool", "true or false", lambda v: True, False,
            "no rounds: each step draws its pairs fresh from its own (augmented) batch, each pair used once; "
            "mapo_pairs_per_step rows of the batch get K hypotheses each at every step"),
    Setting("mapo_max_pair_uses", "optional_int", "an integer >= 1, or null (no bound)",
            lambda v: v is None or v >= 1, 4,
            "training steps that may draw each pair; a spent set is regenerated at the next epoch's start"),
    Setting("mapo_pairs_per_step", "optional_float", "a number > 0, or null (batch size / 8)",
            lambda v: v is None or v > 0, None,
            "preference pairs added per training step, on average (0.5: one pair every other step)"),
    Setting("mapo_cases_per_round", "optional_int", "an integer >= 1, or null (all training cases)",
            lambda v: v is None or v >= 1, 100, "training cases sampled per round (bounds round time and memory)"),
    Setting("mapo_patches_per_case", "int", "an integer >= 1", lambda v: v >= 1, 1,
            "foreground-centred patches per case and round (other slices or places): more pairs, each reused less"),
    Setting("mapo_mirror_pairs", "bool", "true or false", lambda v: True, False,
            "draw each pair in a mirrored view (the axes nnU-Net mirrors at inference): patch and masks augmented "
            "alike, reference log-likelihoods of every view computed by the round"),
    Setting("mapo_round_batch_size", "optional_int", "an integer >= 1, or null (K: one item per pass)",
            lambda v: v is None or v >= 1, None, "forward passes batched together while sampling hypotheses"),
    Setting("mapo_seed", "int", "an integer >= 0", lambda v: v >= 0, 12345,
            "seed of the preference rounds (patch choice, dropout masks, pair sampling)"),
    Setting("mapo_round_pictures", "int", "an integer >= 0", lambda v: v >= 0, 4,
            "items drawn per round in mapo_rounds/round_NNNN.png (0: no pictures)"),
)

# nnU-Net's own attributes that the variable may override as well.
NNUNET_SETTINGS: tuple[Setting, ...] = (
    Setting("num_epochs", "int", "an integer >= 1", lambda v: v >= 1, 1000, "nnU-Net: training epochs"),
    Setting("num_iterations_per_epoch", "int", "an integer >= 1", lambda v: v >= 1, 250,
            "nnU-Net: training iterations per epoch"),
    Setting("num_val_iterations_per_epoch", "int", "an integer >= 1", lambda v: v >= 1, 50,
            "nnU-Net: validation iterations per epoch"),
    Setting("initial_lr", "float", "a number > 0", lambda v: v > 0, 1e-2, "nnU-Net: initial learning rate"),
    Setting("weight_decay", "float", "a number >= 0", lambda v: v >= 0, 3e-5, "nnU-Net: weight decay"),
    Setting("oversample_foreground_percent", "float", "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0, 0.33,
            "nnU-Net: share of foreground-centred patches"),
    Setting("save_every", "int", "an integer >= 1", lambda v: v >= 1, 50, "nnU-Net: epochs between checkpoints"),
)

# Unlabeled scans: read by nnUNetTrainerMAPO_Unlabeled and nnUNetTrainerPseudoLabel only (the others refuse them).
UNLABELED_SETTINGS: tuple[Setting, ...] = (
    Setting("mapo_unlabeled_folder", "optional_str", "a folder of raw images named as in imagesTr, or null",
            lambda v: v is None or bool(v.strip()), None,
            "unlabeled scans (CASE_0000<file_ending>, one file per channel), preprocessed with the plans at the first "
            "start and cached beside the labeled data"),
    Setting("mapo_unlabeled_cases_per_round", "optional_int", "an integer >= 1, or null (all unlabeled cases)",
            lambda v: v is None or v >= 1, 100, "unlabeled cases sampled per round (one patch each)"),
    Setting("mapo_unlabeled_confidence", "float", "a number in [0.5, 1]", lambda v: 0.5 <= v <= 1.0, 0.8,
            "the confidence gate: an unlabeled patch gives a pair (or a pseudo-label) only when this share of the "
            "votes agrees on its foreground, on average"),
)

ALL_SETTINGS: dict[str, Setting] = {s.name: s for s in MAPO_SETTINGS + NNUNET_SETTINGS + UNLABELED_SETTINGS}
# What nnUNetTrainerMAPO reads; its variants for unlabeled scans add UNLABELED_SETTINGS.
TRAINER_SETTINGS: tuple[str, ...] = tuple(s.name for s in MAPO_SETTINGS + NNUNET_SETTINGS)
UNLABELED_SETTING_NAMES: tuple[str, ...] = tuple(s.name for s in UNLABELED_SETTINGS)


def _typed(setting: Setting, value: Any) -> Any:
    """Converts a JSON value to the setting's type, or raises MAPOConfigError."""

    def fail() -> MAPOConfigError:
        return MAPOConfigError(f"MAPO setting '{setting.name}' = {value!r} is invalid: expected {setting.allowed}.")

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise fail()
        return float(v)

    kind = setting.kind
    if kind in ("optional_int", "optional_float", "optional_str") and value is None:
        return None
    if kind in ("int", "optional_int"):
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or float(value) != int(value)):
            raise fail()
        return int(value)
    if kind in ("float", "optional_float"):
        return number(value)
    if kind == "bool":
        if not isinstance(value, bool):  # JSON true/false only: 0, 1 or "yes" are more likely a mistake
            raise fail()
        return value
    if kind in ("str", "optional_str"):
        if not isinstance(value, str):
            raise fail()
        return value
    if kind == "rates":
        if not isinstance(value, (list, tuple)):
            raise fail()
        return tuple(number(v) for v in value)
    raise AssertionError(f"unknown setting kind {kind}")


def validate_setting(name: str, value: Any) -> Any:
    """Checks one setting's name, type and range.

    Args:
        name: A key of :data:`ALL_SETTINGS`.
        value: The proposed value (JSON types).

    Returns:
        The value converted to the setting's Python type.

    Raises:
        MAPOConfigError: Unknown name, wrong type, or value out of range.
    """
    if name not in ALL_SETTINGS:
        close = difflib.get_close_matches(name, ALL_SETTINGS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise MAPOConfigError(
            f"Unknown MAPO setting '{name}'.{hint} Allowed keys: {', '.join(sorted(ALL_SETTINGS))}."
        )
    setting = ALL_SETTINGS[name]
    typed = _typed(setting, value)
    if not setting.check(typed):
        raise MAPOConfigError(f"MAPO setting '{name}' = {value!r} is out of range: expected {setting.allowed}.")
    return typed


def parse_config_source(source: str) -> dict[str, Any]:
    """Reads ``nnUNet_mapo_config``: an inline JSON object or the path to a JSON file holding one.

    Args:
        source: The variable's value.

    Returns:
        The JSON object, checked key by key with :func:`validate_setting`.

    Raises:
        MAPOConfigError: Missing file, malformed JSON, not an object, or an invalid key or value.
    """
    text = source.strip()
    origin = "inline JSON"
    if not text.startswith("{"):
        if not os.path.isfile(text):
            raise MAPOConfigError(
                f"{ENV_VAR}={source!r} is neither an inline JSON object nor an existing file. Set it to a path to a "
                f"JSON file or to an object such as '{{\"mapo_beta\": 0.5}}', or unset it."
            )
        origin = f"file {text}"
        try:
            with open(text, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as err:
            raise MAPOConfigError(f"{ENV_VAR} ({origin}) cannot be read: {err}. Fix the file or unset it.") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MAPOConfigError(f"{ENV_VAR} ({origin}) is not valid JSON: {err}. Fix the JSON or unset it.") from err
    if not isinstance(data, dict):
        raise MAPOConfigError(f"{ENV_VAR} ({origin}) must hold a JSON object of settings, got {type(data).__name__}.")
    return {key: validate_setting(key, value) for key, value in data.items()}


def config_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Returns the validated overrides from ``nnUNet_mapo_config`` (empty when unset)."""
    environ = os.environ if environ is None else environ
    source = environ.get(ENV_VAR, "")
    return parse_config_source(source) if source.strip() else {}


def refuse_unread_settings(overrides: Mapping[str, Any], read: Sequence[str], trainer: str) -> None:
    """Refuses settings that ``trainer`` would not read (they would change nothing, silently).

    Raises:
        MAPOConfigError: Naming the keys and the trainers that read them.
    """
    unread = sorted(set(overrides) - set(read))
    if not unread:
        return
    unlabeled = [key for key in unread if key in UNLABELED_SETTING_NAMES]
    hint = (f" {unlabeled} are read by nnUNetTrainerMAPO_Unlabeled and nnUNetTrainerPseudoLabel: train one of them "
            f"(-tr nnUNetTrainerMAPO_Unlabeled)." if unlabeled else "")
    raise MAPOConfigError(f"{ENV_VAR} sets {unread}, which {trainer} does not read, so they would have no effect."
                          f"{hint} Otherwise remove them from {ENV_VAR}.")


def resolve_and_check(values: dict[str, Any], batch_size: int | None) -> dict[str, Any]:
    """Fills the derived defaults and checks the settings against each other.

    Args:
        values: Every setting of :data:`ALL_SETTINGS` with its current value.
        batch_size: The batch size of one process (for ``mapo_pairs_per_step``; with several GPUs nnU-Net gives each
            rank its share of the configuration's batch size), or None to leave ``mapo_pairs_per_step`` as it is.

    Returns:
        A copy of ``values`` with no ``None`` left (but ``mapo_pairs_per_step`` when ``batch_size`` is None).

    Raises:
        MAPOConfigError: A value out of range, a warm-up that leaves no epoch for MAPO, or several objectives with
            the pairing that has one pair per case.
    """
    resolved = {name: validate_setting(name, value) for name, value in values.items()}
    if resolved["mapo_warmup_epochs"] is None:
        resolved["mapo_warmup_epochs"] = int(round(0.1 * resolved["num_epochs"]))
    if resolved["mapo_warmup_epochs"] >= resolved["num_epochs"]:
        raise MAPOConfigError(
            f"MAPO setting 'mapo_warmup_epochs' = {resolved['mapo_warmup_epochs']} is out of range: expected an "
            f"integer >= 0 and < num_epochs ({resolved['num_epochs']}), otherwise no preference round would run. "
            f"Lower mapo_warmup_epochs or raise num_epochs."
        )
    if resolved["mapo_pairing"] in PREDICTION_PAIRINGS and resolved["mapo_objectives"] != "dice":
        raise MAPOConfigError(
            f"MAPO setting 'mapo_objectives' = {resolved['mapo_objectives']!r} does not go with 'mapo_pairing' = "
            f"'ground_truth_over_prediction': that pairing gives one pair per case (the ground truth over the "
            f"network's prediction), whatever it is ranked by. Use 'mapo_objectives' = 'dice', or another pairing."
        )
    if resolved["mapo_pairs_per_step"] is None and batch_size is not None:
        resolved["mapo_pairs_per_step"] = batch_size / 8
    if resolved["mapo_round_batch_size"] is None:
        resolved["mapo_round_batch_size"] = resolved["mapo_num_hypotheses"]
    return resolved


def markdown_table() -> str:
    """The settings as a markdown table (kept in sync with ``docs/settings.md`` by a test)."""
    rows = ["| setting | default | allowed | meaning |", "|---|---|---|---|"]
    for s in MAPO_SETTINGS + NNUNET_SETTINGS + UNLABELED_SETTINGS:
        default = "derived" if s.default is None else json.dumps(list(s.default) if isinstance(s.default, tuple)
                                                                 else s.default)
        rows.append(f"| `{s.name}` | {default} | {s.allowed} | {s.help} |")
    return "\n".join(rows)


def preference_loss_config(values: Mapping[str, Any]) -> PreferenceLossConfig:
    """The preference loss that the settings ``values`` (resolved, :data:`ALL_SETTINGS` keys) describe."""
    from nnunetv2_mapo.method.preference_loss import PreferenceLossConfig  # torch: not for the command's parsers

    return PreferenceLossConfig(
        loss_type=values["mapo_loss_type"], beta=values["mapo_beta"], label_smoothing=values["mapo_label_smoothing"],
        target_margin=values["mapo_target_margin"], simpo_gamma=values["mapo_simpo_gamma"],
        dpop_lambda=values["mapo_dpop_lambda"], rpo_alpha=values["mapo_rpo_alpha"])


def check_resumed_settings(saved: Mapping[str, Any], now: Mapping[str, Any], checkpoint: str,
                           resuming: bool) -> str | None:
    """Compares a checkpoint's MAPO settings with this run's.

    Args:
        saved: The settings the checkpoint's state recorded (settings added since are not compared).
        now: The settings in effect.
        checkpoint: The checkpoint's path, for the message.
        resuming: Whether the run continues training (``--c``), not only reads the weights.

    Returns:
        ``"key: saved -> now, ..."`` for the settings that differ, or None.

    Raises:
        MAPOSettingsChanged: A setting differs while resuming, and ``nnUNet_mapo_allow_changed_settings`` is not set.
    """
    changed = {key: (value, now.get(key)) for key, value in saved.items() if now.get(key) != value}
    if not changed:
        return None
    listing = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
    if resuming and os.environ.get(ALLOW_CHANGED_SETTINGS_VAR, "") not in ("1", "true", "True"):
        raise MAPOSettingsChanged(
            f"{checkpoint} was trained with other MAPO settings than this run's ({listing}). --c continues the "
            f"same training into the same folder, so a changed setting would silently change the experiment. "
            f"Set them back (nnUNet_mapo_config or the trainer class), or set {ALLOW_CHANGED_SETTINGS_VAR}=1 to "
            f"continue with the new values on purpose.")
    return listing


def describe_schedule(values: Mapping[str, Any], train_cases: int, optimum_margin: float) -> str:
    """The trainer's log line that says what MAPO will do, from the resolved settings ``values``."""
    if values["mapo_online_pairs"]:
        rounds = "then pairs drawn from each step's own batch (no rounds)"
    else:
        cases = min(train_cases, values["mapo_cases_per_round"] or train_cases)
        rounds = (f"then a preference round when the set is spent or after {values['mapo_regen_every']} epochs "
                  f"({cases} cases x {values['mapo_num_hypotheses']} hypotheses)")
    gate = f" and an EMA pseudo Dice of {values['mapo_start_dice']}" if values["mapo_start_dice"] > 0 else ""
    uses = values["mapo_max_pair_uses"] or "any number of"
    return (f"MAPO: warm-up {values['mapo_warmup_epochs']} epochs{gate}, {rounds}, {values['mapo_pairs_per_step']:g} "
            f"pairs per step on average, each drawn by at most {uses} steps; "
            f"loss {values['mapo_loss_type']} (beta {values['mapo_beta']}, stops at {optimum_margin:.3g} nats per "
            f"voxel), weight {values['mapo_weight']}, sized by {values['mapo_term_scale']}.")
