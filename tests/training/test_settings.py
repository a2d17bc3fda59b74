"""Tests of ``nnunetv2_mapo.training.settings``: ranges, ``nnUNet_mapo_config``, derived defaults."""

from __future__ import annotations

import json
import re

import pytest

from nnunetv2_mapo.training.settings import (
    ALL_SETTINGS,
    ENV_VAR,
    MAPO_SETTINGS,
    NNUNET_SETTINGS,
    TRAINER_SETTINGS,
    UNLABELED_SETTING_NAMES,
    UNLABELED_SETTINGS,
    MAPOConfigError,
    config_from_environment,
    markdown_table,
    parse_config_source,
    refuse_unread_settings,
    resolve_and_check,
    validate_setting,
)


def defaults() -> dict:
    """The settings nnUNetTrainerMAPO reads, at their defaults."""
    return {name: ALL_SETTINGS[name].default for name in TRAINER_SETTINGS}


def assert_error_names(err: pytest.ExceptionInfo, key: str, value_repr: str, allowed: str) -> None:
    message = str(err.value)
    assert f"'{key}'" in message
    assert value_repr in message
    assert allowed in message


# ------------------------------------------------------------------------------------------------ the table itself
def test_settings_are_unique_and_defaults_are_valid():
    names = [s.name for s in MAPO_SETTINGS + NNUNET_SETTINGS + UNLABELED_SETTINGS]
    assert len(names) == len(set(names)) == len(ALL_SETTINGS)
    for setting in ALL_SETTINGS.values():
        if setting.default is not None:
            validate_setting(setting.name, list(setting.default) if isinstance(setting.default, tuple)
                             else setting.default)


def test_paper_defaults():
    assert ALL_SETTINGS["mapo_regen_every"].default == 50  # the paper's Figure 2
    assert ALL_SETTINGS["mapo_num_hypotheses"].default == 8
    assert ALL_SETTINGS["mapo_pair_margin"].default == 0.05
    rates = ALL_SETTINGS["mapo_dropout_rates"].default
    assert min(rates) == 0.05 and max(rates) == 0.4


# ------------------------------------------------------------------------------------------------ valid values
@pytest.mark.parametrize(("name", "value", "expected"), [
    ("mapo_beta", 0.1, 0.1),
    ("mapo_beta", 2, 2.0),
    ("mapo_weight", 0, 0.0),
    ("mapo_pair_margin", 0, 0.0),
    ("mapo_pair_margin", 1, 1.0),
    ("mapo_num_hypotheses", 2, 2),
    ("mapo_num_hypotheses", 4.0, 4),  # JSON numbers like 4.0 are whole
    ("mapo_regen_every", 1, 1),
    ("mapo_warmup_epochs", 0, 0),
    ("mapo_warmup_epochs", None, None),
    ("mapo_pairs_per_step", None, None),
    ("mapo_cases_per_round", None, None),
    ("mapo_round_batch_size", 3, 3),
    ("mapo_seed", 0, 0),
    ("mapo_dropout_rates", [0.0, 0.5, 0.99], (0.0, 0.5, 0.99)),
    ("mapo_dropout_rates", [0.3], (0.3,)),
    ("mapo_dropout_mode", "channel", "channel"),
    ("mapo_loss_type", "ipo", "ipo"),
    ("mapo_loss_type", "hinge", "hinge"),
    ("mapo_mirror_pairs", True, True),
    ("mapo_mirror_pairs", False, False),
    ("num_epochs", 1, 1),
    ("initial_lr", 1e-3, 1e-3),
    ("weight_decay", 0, 0.0),
    ("oversample_foreground_percent", 1.0, 1.0),
    ("save_every", 1, 1),
])
def test_valid_values_are_converted(name, value, expected):
    result = validate_setting(name, value)
    assert result == expected
    assert type(result) is type(expected)


# ------------------------------------------------------------------------------------------------ out of range
@pytest.mark.parametrize(("name", "value"), [
    ("mapo_beta", -0.5),
    ("mapo_beta", 0),
    ("mapo_weight", -1e-9),
    ("mapo_num_hypotheses", 1),
    ("mapo_num_hypotheses", 0),
    ("mapo_pair_margin", -0.01),
    ("mapo_pair_margin", 1.01),
    ("mapo_regen_every", 0),
    ("mapo_warmup_epochs", -1),
    ("mapo_pairs_per_step", 0),
    ("mapo_pairs_per_step", -0.5),
    ("mapo_cases_per_round", 0),
    ("mapo_round_batch_size", 0),
    ("mapo_seed", -1),
    ("mapo_dropout_rates", [0.1, 1.0]),
    ("mapo_dropout_rates", [-0.1]),
    ("mapo_dropout_rates", []),
    ("mapo_dropout_mode", "gaussian"),
    ("mapo_loss_type", "kto"),
    ("num_epochs", 0),
    ("num_iterations_per_epoch", 0),
    ("num_val_iterations_per_epoch", 0),
    ("initial_lr", 0),
    ("weight_decay", -1),
    ("oversample_foreground_percent", 1.5),
    ("save_every", 0),
])
def test_out_of_range_names_key_value_and_range(name, value):
    with pytest.raises(MAPOConfigError, match="out of range") as err:
        validate_setting(name, value)
    assert_error_names(err, name, repr(value), ALL_SETTINGS[name].allowed)


# ------------------------------------------------------------------------------------------------ wrong types
@pytest.mark.parametrize(("name", "value"), [
    ("mapo_num_hypotheses", True),  # bool is an int in Python, never a valid count
    ("mapo_num_hypotheses", False),
    ("mapo_warmup_epochs", True),
    ("num_epochs", 2.5),
    ("num_epochs", "10"),
    ("num_epochs", float("inf")),
    ("num_epochs", float("nan")),
    ("mapo_seed", [1]),
    ("mapo_mirror_pairs", 1),  # JSON true/false only
    ("mapo_mirror_pairs", "true"),
    ("mapo_mirror_pairs", None),
    ("mapo_beta", True),
    ("mapo_beta", "1.0"),
    ("mapo_beta", None),
    ("mapo_beta", float("nan")),
    ("mapo_beta", float("inf")),
    ("mapo_dropout_rates", 0.1),
    ("mapo_dropout_rates", "0.1"),
    ("mapo_dropout_rates", [0.1, "0.2"]),
    ("mapo_dropout_rates", [True]),
    ("mapo_dropout_rates", [float("nan")]),
    ("mapo_dropout_mode", 1),
    ("mapo_loss_type", None),
    ("mapo_regen_every", None),  # only optional_int settings accept null
])
def test_wrong_types_name_key_value_and_expected(name, value):
    with pytest.raises(MAPOConfigError, match="is invalid") as err:
        validate_setting(name, value)
    assert_error_names(err, name, repr(value), ALL_SETTINGS[name].allowed)


def test_config_error_is_a_value_error():
    assert issubclass(MAPOConfigError, ValueError)


# ------------------------------------------------------------------------------------------------ unknown keys
def test_unknown_key_suggests_the_closest_and_lists_allowed():
    with pytest.raises(MAPOConfigError) as err:
        validate_setting("mapo_betta", 1.0)
    message = str(err.value)
    assert "Unknown MAPO setting 'mapo_betta'" in message
    assert "Did you mean 'mapo_beta'?" in message
    for name in ALL_SETTINGS:
        assert name in message


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(MAPOConfigError) as err:
        validate_setting("zzzzzzzz", 1)
    assert "Did you mean" not in str(err.value)
    assert "'zzzzzzzz'" in str(err.value)


# ------------------------------------------------------------------------------------------------ the variable
def test_inline_json_is_parsed_and_typed():
    result = parse_config_source(' {"mapo_beta": 0.5, "num_epochs": 20, "mapo_dropout_rates": [0.1, 0.2]} ')
    assert result == {"mapo_beta": 0.5, "num_epochs": 20, "mapo_dropout_rates": (0.1, 0.2)}
    assert isinstance(result["num_epochs"], int)


def test_json_file_is_parsed(tmp_path):
    path = tmp_path / "mapo.json"
    path.write_text(json.dumps({"mapo_loss_type": "ipo", "mapo_warmup_epochs": None}), encoding="utf-8")
    assert parse_config_source(str(path)) == {"mapo_loss_type": "ipo", "mapo_warmup_epochs": None}
    assert parse_config_source(f"  {path}\n") == {"mapo_loss_type": "ipo", "mapo_warmup_epochs": None}


def test_empty_object_gives_no_overrides():
    assert parse_config_source("{}") == {}


@pytest.mark.parametrize("text", ['{"mapo_beta": 0.5,}', '{"mapo_beta": }', "{mapo_beta: 1}", '{"a": 1'])
def test_malformed_inline_json(text):
    with pytest.raises(MAPOConfigError, match="not valid JSON") as err:
        parse_config_source(text)
    assert ENV_VAR in str(err.value)
    assert "inline JSON" in str(err.value)


def test_malformed_json_file_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"mapo_beta": 0.5', encoding="utf-8")
    with pytest.raises(MAPOConfigError, match="not valid JSON") as err:
        parse_config_source(str(path))
    assert str(path) in str(err.value)


def test_unreadable_json_file_raises_config_error(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(MAPOConfigError) as err:
        parse_config_source(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("content", "type_name"), [("[1, 2]", "list"), ('"mapo_beta"', "str"), ("3", "int"),
                                                    ("null", "NoneType")])
def test_non_object_json_in_file(tmp_path, content, type_name):
    path = tmp_path / "list.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MAPOConfigError, match="must hold a JSON object") as err:
        parse_config_source(str(path))
    assert type_name in str(err.value)


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(MAPOConfigError, match="neither an inline JSON object nor an existing file") as err:
        parse_config_source(missing)
    assert repr(missing) in str(err.value)
    assert ENV_VAR in str(err.value)


def test_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(MAPOConfigError, match="nor an existing file"):
        parse_config_source(str(tmp_path))


def test_one_bad_key_rejects_the_whole_object():
    with pytest.raises(MAPOConfigError) as err:
        parse_config_source('{"mapo_beta": 0.5, "mapo_num_hypotheses": 1}')
    assert_error_names(err, "mapo_num_hypotheses", "1", "an integer >= 2")


def test_unknown_key_in_inline_json():
    with pytest.raises(MAPOConfigError, match="Did you mean 'mapo_weight'"):
        parse_config_source('{"mapo_wieght": 0.1}')


@pytest.mark.parametrize("text", ['{"num_epochs": Infinity}', '{"num_epochs": NaN}', '{"mapo_beta": -Infinity}'])
def test_non_finite_json_numbers_are_config_errors(text):
    # Python's json module accepts these tokens; they must not escape as OverflowError or a bare ValueError.
    with pytest.raises(MAPOConfigError):
        parse_config_source(text)


def test_bool_for_int_in_json():
    with pytest.raises(MAPOConfigError) as err:
        parse_config_source('{"mapo_num_hypotheses": true}')
    assert_error_names(err, "mapo_num_hypotheses", "True", "an integer >= 2")


def test_config_from_environment():
    assert config_from_environment({}) == {}
    assert config_from_environment({ENV_VAR: "   "}) == {}
    assert config_from_environment({ENV_VAR: '{"mapo_seed": 7}'}) == {"mapo_seed": 7}
    with pytest.raises(MAPOConfigError):
        config_from_environment({ENV_VAR: '{"mapo_seed": -7}'})


def test_config_from_os_environ(monkeypatch):
    monkeypatch.setenv(ENV_VAR, '{"mapo_weight": 0.25}')
    assert config_from_environment() == {"mapo_weight": 0.25}
    monkeypatch.delenv(ENV_VAR)
    assert config_from_environment() == {}


# ------------------------------------------------------------------------------------------------ derived values
def test_resolve_fills_derived_defaults():
    values = defaults() | {"num_epochs": 100}
    resolved = resolve_and_check(values, batch_size=6)
    assert resolved["mapo_warmup_epochs"] == 10  # 10% of num_epochs
    assert resolved["mapo_pairs_per_step"] == 0.75  # 6 / 8 on average
    assert resolved["mapo_round_batch_size"] == 8  # K: one item (its K hypotheses) per forward pass
    assert resolved["mapo_cases_per_round"] == 100
    assert None not in resolved.values()
    assert values["mapo_warmup_epochs"] is None  # a copy, the input is untouched
    assert set(resolved) == set(TRAINER_SETTINGS)


@pytest.mark.parametrize(("batch_size", "pairs"), [(1, 0.125), (2, 0.25), (8, 1.0), (10, 1.25), (137, 17.125)])
def test_pairs_per_step_is_an_eighth_of_the_batch(batch_size, pairs):
    assert resolve_and_check(defaults(), batch_size)["mapo_pairs_per_step"] == pairs


@pytest.mark.parametrize("value", [0.5, 3, 2.25])
def test_pairs_per_step_takes_fractions_and_integers(value):
    assert validate_setting("mapo_pairs_per_step", value) == value
    assert isinstance(validate_setting("mapo_pairs_per_step", value), float)


def test_resolve_keeps_explicit_values():
    values = defaults() | {"num_epochs": 30, "mapo_warmup_epochs": 3, "mapo_pairs_per_step": 5,
                           "mapo_round_batch_size": 7, "mapo_num_hypotheses": 4, "mapo_cases_per_round": None}
    resolved = resolve_and_check(values, batch_size=2)
    assert (resolved["mapo_warmup_epochs"], resolved["mapo_pairs_per_step"], resolved["mapo_round_batch_size"]) \
        == (3, 5, 7)
    assert resolved["mapo_cases_per_round"] is None  # null means all cases, not derived


def test_round_batch_size_follows_num_hypotheses():
    resolved = resolve_and_check(defaults() | {"mapo_num_hypotheses": 3}, batch_size=2)
    assert resolved["mapo_round_batch_size"] == 3  # K, whatever the batch size
    assert resolve_and_check(defaults() | {"mapo_num_hypotheses": 3}, batch_size=9)["mapo_round_batch_size"] == 3


def test_derived_warmup_for_a_single_epoch_leaves_room():
    resolved = resolve_and_check(defaults() | {"num_epochs": 1}, batch_size=2)
    assert resolved["mapo_warmup_epochs"] == 0


@pytest.mark.parametrize(("warmup", "epochs"), [(10, 10), (11, 10), (1, 1)])
def test_warmup_at_or_beyond_num_epochs_is_rejected(warmup, epochs):
    with pytest.raises(MAPOConfigError) as err:
        resolve_and_check(defaults() | {"mapo_warmup_epochs": warmup, "num_epochs": epochs}, batch_size=2)
    message = str(err.value)
    assert "'mapo_warmup_epochs'" in message and f"= {warmup}" in message and f"< num_epochs ({epochs})" in message


def test_warmup_just_below_num_epochs_is_accepted():
    assert resolve_and_check(defaults() | {"mapo_warmup_epochs": 9, "num_epochs": 10}, 2)["mapo_warmup_epochs"] == 9


def test_resolve_validates_every_value():
    with pytest.raises(MAPOConfigError, match="'mapo_beta'"):
        resolve_and_check(defaults() | {"mapo_beta": -1.0}, batch_size=2)
    with pytest.raises(MAPOConfigError, match="Unknown MAPO setting 'typo'"):
        resolve_and_check(defaults() | {"typo": 1}, batch_size=2)


def test_resolve_accepts_tuple_rates_from_trainer_attributes():
    resolved = resolve_and_check(defaults(), batch_size=2)
    assert resolved["mapo_dropout_rates"] == ALL_SETTINGS["mapo_dropout_rates"].default


# ------------------------------------------------------------------------------------------------ docs table
def test_markdown_table_lists_every_setting_once():
    table = markdown_table()
    lines = table.splitlines()
    assert lines[0].startswith("| setting | default | allowed | meaning |")
    body = lines[2:]
    assert len(body) == len(ALL_SETTINGS)
    for line, setting in zip(body, MAPO_SETTINGS + NNUNET_SETTINGS):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells[0] == f"`{setting.name}`"
        assert cells[2] == setting.allowed
        assert cells[3] == setting.help
        if setting.default is None:
            assert cells[1] == "derived"
        else:
            expected = list(setting.default) if isinstance(setting.default, tuple) else setting.default
            assert json.loads(cells[1]) == expected


def test_markdown_table_has_no_python_reprs():
    table = markdown_table()
    assert "None" not in table
    assert not re.search(r"\(0\.05, ", table)  # tuples are written as JSON lists


def test_the_pairing_against_the_prediction_refuses_several_objectives():
    with pytest.raises(MAPOConfigError, match="mapo_objectives.*'dice'"):
        resolve_and_check(defaults() | {"mapo_pairing": "ground_truth_over_prediction",
                                        "mapo_objectives": "dice+boundary"}, batch_size=2)
    resolved = resolve_and_check(defaults() | {"mapo_pairing": "ground_truth_over_prediction"}, batch_size=2)
    assert resolved["mapo_pairing"] == "ground_truth_over_prediction"
    assert resolve_and_check(defaults() | {"mapo_objectives": "dice+boundary"}, batch_size=2)  # fine with dropout


# ------------------------------------------------------------------------------------------------ unlabeled scans
def test_the_unlabeled_settings_are_not_read_by_the_mapo_trainer():
    assert set(UNLABELED_SETTING_NAMES).isdisjoint(TRAINER_SETTINGS)
    assert set(TRAINER_SETTINGS) | set(UNLABELED_SETTING_NAMES) == set(ALL_SETTINGS)


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("/data/scans", "/data/scans")])
def test_an_optional_folder_takes_a_string_or_null(value, expected):
    assert validate_setting("mapo_unlabeled_folder", value) == expected


@pytest.mark.parametrize("value", ["", "   ", 3, ["a"]])
def test_an_empty_or_non_string_folder_is_refused(value):
    with pytest.raises(MAPOConfigError, match="mapo_unlabeled_folder"):
        validate_setting("mapo_unlabeled_folder", value)


@pytest.mark.parametrize("value", [0.49, 1.01])
def test_the_confidence_gate_lies_between_a_half_and_one(value):
    with pytest.raises(MAPOConfigError, match=r"\[0.5, 1\]"):
        validate_setting("mapo_unlabeled_confidence", value)


def test_a_setting_the_trainer_does_not_read_is_refused_with_the_trainers_that_do():
    refuse_unread_settings({"mapo_beta": 0.5}, TRAINER_SETTINGS, "nnUNetTrainerMAPO")  # read: fine
    with pytest.raises(MAPOConfigError) as err:
        refuse_unread_settings({"mapo_unlabeled_folder": "/x", "mapo_beta": 1.0}, TRAINER_SETTINGS,
                               "nnUNetTrainerMAPO")
    message = str(err.value)
    assert "['mapo_unlabeled_folder']" in message and "nnUNetTrainerMAPO does not read" in message
    assert "-tr nnUNetTrainerMAPO_Unlabeled" in message
    with pytest.raises(MAPOConfigError, match="nnUNetTrainerX does not read") as err:
        refuse_unread_settings({"mapo_beta": 1.0}, ("num_epochs",), "nnUNetTrainerX")
    assert "Unlabeled" not in str(err.value)
