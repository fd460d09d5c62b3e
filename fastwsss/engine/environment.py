"""What a run ran on: library versions, CPU and GPU, threads, the code's git commit and a data fingerprint.

Float rounding differs between CPUs and library builds, and eight epochs of training grow a difference in
the first step into different weights, so the same code and seed can give mIoUs a few points apart on two
machines (README, "What the default job gives"). Every start of `fastwsss train` (a resume included)
appends one row to RUNDIR/environment.jsonl, so two runs that disagree can be compared field by field
(`environment_differences`) before anyone suspects the code.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastwsss.config import RunConfig
from fastwsss.errors import FastwsssError

PACKAGES = ("fastwsss", "torch", "torchvision", "triton", "numpy", "pillow", "onnx", "onnxruntime")
FINGERPRINT_IMAGES = 4
VOLATILE = ("time", "argv", "pid")
"""Fields that differ between any two starts and say nothing about the numerics."""


def package_versions() -> dict[str, str | None]:
    """The installed version of each of PACKAGES (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16")
"""CPU features that decide which oneDNN / MKL kernels torch runs, hence the float rounding."""


def cpu_isa() -> list[str]:
    """Which of ISA_FLAGS the CPU has (from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [flag for flag in ISA_FLAGS if flag in flags]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(package: Path) -> str | None:
    """`<sha>` or `<sha>+dirty` of the checkout whose top level holds the package folder `package`.

    None outside a checkout, without git, or when the package only lies inside some other repository (a
    virtual environment kept in a user's project), whose commit would say nothing about this code.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / package.name != package.resolve():
        return None
    sha = git("rev-parse", "HEAD")
    if not sha:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return sha + ("+dirty" if dirty else "")


def data_fingerprint(source: Any, count: int = FINGERPRINT_IMAGES) -> str:
    """sha256 (16 hex digits) over the decoded pixels and masks of the split's first `count` images.

    Decoded arrays, not file bytes: two machines whose files differ only in PNG compression get the same
    fingerprint, while a different decoder (a Pillow that rounds a JPEG differently) shows up.
    """
    digest = hashlib.sha256()
    for image_id in source.ids[:count]:
        digest.update(image_id.encode())
        digest.update(np.ascontiguousarray(source.load_image(image_id)).tobytes())
        if source.mask_path(image_id) is not None:
            digest.update(np.ascontiguousarray(source.load_mask(image_id)).tobytes())
    return digest.hexdigest()[:16]


def training_source(config: RunConfig) -> Any | None:
    """The run's training split for the fingerprint; None where it cannot be opened (its stage says why)."""
    from fastwsss.data import build_source

    try:
        return build_source(config.data, config.data.train_split)
    except FastwsssError:
        return None


def environment_record(device: torch.device, processes: int, source: Any | None = None) -> dict[str, Any]:
    """One row of environment.jsonl for a run on `device` with `processes` ranks and training data `source`."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    row: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "argv": sys.argv,
        "pid": os.getpid(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpus": gpus,
        "device": str(device),
        "processes": processes,
    }
    if source is not None:
        try:
            row["data"] = {"split": source.split, "images": len(source.ids), "fingerprint": data_fingerprint(source)}
        except FastwsssError as exc:
            row["data"] = {"split": source.split, "error": str(exc)}
    return row


def nested_differences(a: dict[str, Any], b: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """The fields (dotted names, see `flatten`) whose values differ between two nested dicts; top-level
    `skip` keys left out."""
    left = flatten({k: v for k, v in a.items() if k not in skip})
    right = flatten({k: v for k, v in b.items() if k not in skip})
    return {key: (left.get(key), right.get(key)) for key in sorted(set(left) | set(right)) if left.get(key) != right.get(key)}


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields (dotted names) whose values differ between two environment rows, VOLATILE ones left out."""
    return nested_differences(a, b, VOLATILE)


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested fields as dotted names: {"packages": {"torch": "2.14"}} -> {"packages.torch": "2.14"}."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
