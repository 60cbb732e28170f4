"""Kill -9 at a random moment of each long command (eval/kill_sweep.py's COMMANDS: align,
pack, train, distill, prune, multiexit, export, teacher-output caching on its own and the
results runner), rerun, compare with an uninterrupted run (issue 30; eval/kill_sweep.py
runs many kills per command and writes the table)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "eval"))
from kill_sweep import COMMANDS, build_cases, sweep  # noqa: E402


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return build_cases(tmp_path_factory.mktemp("inputs"))


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_killed_then_rerun_matches_an_uninterrupted_run(cases, tmp_path, command):
    row = sweep(cases[command], tmp_path, kills=2, rng=random.Random(command))
    assert row["kills"] == 2 and row["finished"] == 2, row["failures"]
    assert row["torn_after_kill"] == 0, row["failures"]  # every file the kill left is whole or absent
    assert row["bit_for_bit"] == row["finished"], f"largest difference {row['max_diff']}"
