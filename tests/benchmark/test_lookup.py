"""Tests of ``nnunetv2_mapo.benchmark.lookup``: the benchmark's trainers are listed only in its own processes."""

from __future__ import annotations

import os
import subprocess
import sys

from nnunetv2_mapo import discovery
from nnunetv2_mapo.benchmark.lookup import BENCHMARK_TRAINER_FOLDER, with_benchmark_trainers

LOOKUP = ("import sys; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find; "
          "print(find(sys.argv[1]).__module__)")


def test_the_folder_is_added_once_after_the_users_folders() -> None:
    environ = {discovery.ENV_VAR: os.pathsep.join(["/a", "/b"]), "OTHER": "1"}
    once = with_benchmark_trainers(environ)
    assert once[discovery.ENV_VAR].split(os.pathsep) == ["/a", "/b", BENCHMARK_TRAINER_FOLDER]
    assert with_benchmark_trainers(once) == once and once["OTHER"] == "1"
    assert with_benchmark_trainers({})[discovery.ENV_VAR] == BENCHMARK_TRAINER_FOLDER
    assert os.path.isfile(os.path.join(BENCHMARK_TRAINER_FOLDER, "nnunetv2_mapo_benchmark_trainers.py"))


def test_a_users_lookup_does_not_see_them_the_benchmarks_does() -> None:
    def lookup(environ: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", LOOKUP, "nnUNetTrainerBenchmarkBaseline"], capture_output=True,
                              text=True, env=environ, timeout=300)

    users = lookup(dict(os.environ))
    assert users.returncode != 0 and "nnUNetTrainerBenchmarkBaseline" in users.stderr
    benchmarks = lookup(with_benchmark_trainers(os.environ))
    assert benchmarks.returncode == 0, benchmarks.stderr[-2000:]
    assert benchmarks.stdout.strip().splitlines()[-1] == "nnunetv2_mapo.benchmark.trainers"  # after nnU-Net's lines
