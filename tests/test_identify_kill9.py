"""Kill -9 during enrolment leaves an intact gallery (eval/ident_kill9.py, 5 kills)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "eval" / "ident_kill9.py"


@pytest.mark.slow
def test_kill9_during_enrolment(tmp_path):
    out = tmp_path / "k.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--kills", "5", "--gallery", str(tmp_path / "g.db"),
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["intact"] == 5
    last = res["kills"][-1]
    assert last["reported"] > 0  # the worker did commit before the kills
    assert last["faces"] == 50 * last["people"]  # whole enrolments only
    assert all(k["problems"] == [] and k["reported_missing"] == 0 for k in res["kills"])
