"""bench/training_step.py runs its rows on the CPU and writes the JSON it documents."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # bench/ is a folder of the repository, not of the package
    return importlib.import_module("bench.training_step")


def test_rows_and_json(bench, tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    assert bench.main(["--repeats", "1", "--cases", "path max fwd+bwd,DeepLab prediction", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = {row["case"]: row for row in payload["rows"]}
    assert set(rows) == {"path max fwd+bwd", "DeepLab prediction"}
    for row in rows.values():
        assert row["before_ms"]["median_ms"] > 0 and row["after_ms"]["median_ms"] > 0
        assert row["speedup"] == pytest.approx(row["before_ms"]["median_ms"] / row["after_ms"]["median_ms"], abs=0.01)
    assert payload["repeats"] == 1 and payload["environment"]["device"] == "cpu"


def test_unknown_case_is_refused(bench, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--cases", "warp drive"])
    assert exit_info.value.code == 2 and "valid: path max fwd+bwd" in capsys.readouterr().err
