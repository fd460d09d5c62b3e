"""Shared test setup: CPU-only Triton interpreter, the voc-mini locator, small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

# Must be set before any Triton kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FASTWSSS_NO_PROGRESS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_voc_mini() -> Path | None:
    """The VOC2012 folder of voc-mini: $FASTWSSS_VOC_MINI, else ../shared/data/voc-mini beside the clone."""
    candidates = []
    if os.environ.get("FASTWSSS_VOC_MINI"):
        candidates.append(Path(os.environ["FASTWSSS_VOC_MINI"]))
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "voc-mini")
    for base in candidates:
        for root in (base / "VOCdevkit" / "VOC2012", base / "VOC2012", base):
            if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
                return root
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201 - a hook wrapper
    """FASTWSSS_REQUIRE_GPU=1 (bench/gpu.sh): a `gpu` test that skips (no GPU, the Triton interpreter, no
    compiled extension) fails instead, so that a GPU run cannot pass by skipping everything."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("FASTWSSS_REQUIRE_GPU") == "1" and item.get_closest_marker("gpu"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"FASTWSSS_REQUIRE_GPU=1 and this GPU test skipped: {reason}"


@pytest.fixture(scope="session")
def voc_mini() -> Path:
    root = find_voc_mini()
    if root is None:
        pytest.skip("voc-mini not found: set FASTWSSS_VOC_MINI or place it at ../shared/data/voc-mini")
    return root


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated synthetic data goes to a per-session temporary cache, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "fastwsss-data-cache"
    monkeypatch.setenv("FASTWSSS_DATA_DIR", str(cache))
