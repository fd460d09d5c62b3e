"""The memory budget of `fastwsss segment` (fastwsss/commands/segment_memory.py): batches sized from pixel
counts, an image above the budget failing alone, and the measured peak staying under the budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_hostile_input import cli, one_error_line
from test_hostile_segment import setup  # noqa: F401  (module-scoped run directory with a tiny DeepLab)

from fastwsss.commands.segment_memory import bytes_per_pixel, parse_bytes, plan_batches
from fastwsss.models.deeplab import build_seg_model

PEAK_SCRIPT = r"""
import json, sys
from pathlib import Path
from fastwsss.commands.segment import segment_command

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
model, warm, inputs, out, budget = sys.argv[1:6]
segment_command([warm], Path(model), Path(out) / "warm", "torch", 8, memory_budget=int(budget))
Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident size
base = status("VmRSS")
code = segment_command([inputs], Path(model), Path(out) / "masks", "torch", 8, memory_budget=int(budget))
print(json.dumps({"code": code, "peak": status("VmHWM") - base}))
"""


def test_parse_bytes_and_plan_batches() -> None:
    assert parse_bytes("2G") == 2 * 2**30 and parse_bytes("512m") == 512 * 2**20 and parse_bytes("1000") == 1000
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30)
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(Exception, match="--memory-budget"):
            parse_bytes(bad)
    batches, too_large = plan_batches([10, 10, 10, 50, 10, 200], batch_size=8, budget=100, per_pixel=2.0)
    assert batches == [[0, 1, 2], [3], [4]] and too_large == [5]
    assert plan_batches([1] * 5, batch_size=2, budget=10**9, per_pixel=1.0)[0] == [[0, 1], [2, 3], [4]]


def test_estimate_grows_with_width_and_classes() -> None:
    small = bytes_per_pixel(build_seg_model("deeplabv2", "resnet18_quarter", 3).eval(), 3)
    wide = bytes_per_pixel(build_seg_model("deeplabv2", "resnet18_half", 3).eval(), 3)
    many = bytes_per_pixel(build_seg_model("deeplabv2", "resnet18_quarter", 81).eval(), 81)
    assert small < wide and small < many and bytes_per_pixel(None, 3) > small


def test_image_above_the_budget_fails_alone(setup: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    inputs = tmp_path / "imgs"
    inputs.mkdir()
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(inputs / "big.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(inputs / "small.png")
    out = tmp_path / "out"
    code, output = cli("segment", inputs, "--model", setup["run"], "--out", out, "--memory-budget", "2M")
    assert code == 1 and (out / "small.png").is_file() and not (out / "big.png").exists(), output
    named = [line for line in output.splitlines() if "big.png" in line]
    assert len(named) == 1 and "--memory-budget" in named[0], output
    code, output = cli("segment", inputs, "--model", setup["run"], "--out", out, "--memory-budget", "plenty")
    assert code == 2 and "--memory-budget" in one_error_line(output)


def test_measured_peak_stays_under_the_budget(setup: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs to reset the peak resident size")
    inputs = tmp_path / "imgs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (1200, 1200, 3), dtype=np.uint8)).save(inputs / f"im{index}.png")
    warm = tmp_path / "warm.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(warm)
    model = build_seg_model("deeplabv2", "resnet18_quarter", 10).eval()
    one_image = 1200 * 1200 * bytes_per_pixel(model, 10)
    peaks = {}
    for name, budget in (("one per batch", int(1.3 * one_image)), ("four per batch", int(4.5 * one_image))):
        result = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(setup["run"]), str(warm), str(inputs), str(tmp_path / name),
             str(budget)], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "FASTWSSS_NO_PROGRESS": "1",
             "PATH": "/usr/bin:/bin"}, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        row = json.loads(result.stdout.strip().splitlines()[-1])
        assert row["code"] == 0
        peaks[name] = (row["peak"], budget)
        print(f"{name}: budget {budget / 2**20:.0f} MiB, measured peak above the warm process {row['peak'] / 2**20:.0f} MiB")
    for peak, budget in peaks.values():
        assert peak <= budget
    assert peaks["one per batch"][0] < peaks["four per batch"][0]
