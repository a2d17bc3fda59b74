"""The benchmark's low-data split: a fixed draw, split files, and splits_final.json."""

from __future__ import annotations

import json

import pytest

from nnunetv2_mapo.benchmark.spec import BenchmarkInputError
from nnunetv2_mapo.benchmark.split import (
    SplitError,
    case_groups,
    check_groups_apart,
    dataset_cases,
    held_out_groups,
    held_out_split,
    install_split,
    read_split_file,
    split_for,
)
from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset

CASES = [f"case_{i:03d}" for i in range(12)]


def test_held_out_split_is_a_fixed_partition() -> None:
    split = held_out_split(CASES, 5)
    assert len(split["train"]) == 5 and len(split["val"]) == 7
    assert sorted(split["train"] + split["val"]) == CASES and not set(split["train"]) & set(split["val"])
    assert held_out_split(list(reversed(CASES)), 5) == split  # the draw does not depend on the listing order
    assert held_out_split(CASES, 5, seed=1) != split
    for bad in (0, 12):
        with pytest.raises(SplitError, match="train on 1 to 11"):
            held_out_split(CASES, bad)


def test_split_files_in_both_layouts_and_their_errors(tmp_path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"train": ["case_001", "case_000"], "val": ["case_005"]}))
    assert read_split_file(str(plain), CASES) == {"train": ["case_000", "case_001"], "val": ["case_005"]}
    nnunet = tmp_path / "splits_final.json"
    nnunet.write_text(json.dumps([{"train": ["case_002"], "val": ["case_003"]}, {"train": ["x"], "val": ["y"]}]))
    assert read_split_file(str(nnunet), CASES) == {"train": ["case_002"], "val": ["case_003"]}
    for content, message in (({"train": ["case_001"]}, "expected"), ({"train": ["nope"], "val": ["case_000"]},
                                                                     "not in the dataset"),
                             ({"train": ["case_001"], "val": ["case_001"]}, "both trained on and held out")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(SplitError, match=message):
            read_split_file(str(bad), CASES)
    with pytest.raises(BenchmarkInputError, match="cannot read"):  # a SplitError is a benchmark input error
        read_split_file(str(tmp_path / "missing.json"), CASES)


def test_install_writes_once_and_refuses_another_split(tmp_path) -> None:
    split = held_out_split(CASES, 4)
    assert install_split(str(tmp_path), split) is True
    assert json.loads((tmp_path / "splits_final.json").read_text()) == [split]
    assert install_split(str(tmp_path), split) is False  # the same split: nothing to do
    with pytest.raises(SplitError, match="another --workdir"):
        install_split(str(tmp_path), held_out_split(CASES, 6))


def test_split_for_reads_the_raw_datasets_cases(tmp_path) -> None:
    folder = write_synthetic_dataset(str(tmp_path), 977, "SplitToy", dim=2, num_cases=6, shape=(16, 16), seed=1)
    cases = dataset_cases(folder)
    assert len(cases) == 6 and cases == sorted(cases)
    assert split_for(None, None, folder) is None
    split = split_for(2, None, folder)
    assert len(split["train"]) == 2 and sorted(split["train"] + split["val"]) == cases


SEQUENCES = [f"seq{s}_{f:03d}" for s in range(5) for f in range(s + 2)]  # 5 groups of 2 to 6 frames, 20 cases


def test_groups_are_named_by_the_first_group_of_the_pattern_and_every_case_needs_one() -> None:
    groups = case_groups(SEQUENCES, r"(seq\d+)_")
    assert groups["seq3_004"] == "seq3" and len(set(groups.values())) == 5
    with pytest.raises(SplitError, match=r"does not match 1 case\(s\), e.g. \['other_1'\]"):
        case_groups([*SEQUENCES, "other_1"], r"(seq\d+)_")


def test_a_grouped_draw_keeps_every_group_on_one_side_and_is_fixed() -> None:
    groups = case_groups(SEQUENCES, r"(seq\d+)_")
    for train_cases in (1, 5, 9, 13):
        split = held_out_groups(SEQUENCES, train_cases, groups)
        assert sorted(split["train"] + split["val"]) == sorted(SEQUENCES)
        assert not {groups[c] for c in split["train"]} & {groups[c] for c in split["val"]}
        largest = max(sum(g == name for g in groups.values()) for name in set(groups.values()))
        assert train_cases <= len(split["train"]) < train_cases + largest  # whole groups, at most one too many
        check_groups_apart(split, groups)
        assert held_out_groups(list(reversed(SEQUENCES)), train_cases, groups) == split
    with pytest.raises(SplitError, match="leaves no group to hold out"):
        held_out_groups(SEQUENCES, 19, groups)


def test_split_for_keeps_the_groups_of_a_raw_dataset_apart(tmp_path) -> None:
    folder = write_synthetic_dataset(str(tmp_path), 978, "GroupToy", dim=2, num_cases=8, shape=(16, 16), seed=1)
    halves = r"((?=case_00[0-3])case|(?=case_00[4-7])c)"  # two groups: cases 0-3 ("case") and 4-7 ("c")
    split = split_for(2, None, folder, halves)
    assert split["train"] in (["case_000", "case_001", "case_002", "case_003"],
                              ["case_004", "case_005", "case_006", "case_007"])
    assert len(split["val"]) == 4
    (tmp_path / "split.json").write_text(json.dumps({"train": ["case_000", "case_004"], "val": ["case_001"]}))
    with pytest.raises(SplitError, match=r"group\(s\) \['case'\] both in training and in the held-out"):
        split_for(None, str(tmp_path / "split.json"), folder, halves)
    (tmp_path / "apart.json").write_text(json.dumps({"train": ["case_000", "case_001"], "val": ["case_004"]}))
    assert split_for(None, str(tmp_path / "apart.json"), folder, halves)["val"] == ["case_004"]
    with pytest.raises(SplitError, match="does not match 4 case"):
        split_for(2, None, folder, r"(case_00[0-3])")
    with pytest.raises(SplitError, match="train on 1 to 7"):
        split_for(8, None, folder, halves)
