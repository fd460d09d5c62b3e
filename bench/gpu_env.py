"""What the GPU machine has, and what each phase of bench/gpu.sh lacks there (docs/gpu.md).

    python -m bench.gpu_env [--json PATH]          # versions, device, and the missing packages of every phase
    python -m bench.gpu_env --missing PHASE        # the names PHASE lacks, space-separated (nothing: it can run)

A GPU machine without network access cannot install a package it lacks, so bench/gpu.sh asks this
module first and runs only the phases whose needs are met, saying which it skipped and why.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

# Python modules (import names) and programs each phase cannot run without.
NEEDS: dict[str, dict[str, list[str]]] = {
    "env": {"modules": ["torch"], "programs": []},
    "setup": {"modules": ["torch", "setuptools", "pip"], "programs": []},
    "tests": {"modules": ["torch", "triton", "numpy", "pytest"], "programs": []},
    "kernels": {"modules": ["torch", "triton", "numpy"], "programs": []},
    "walk": {"modules": ["torch", "triton", "numpy"], "programs": []},
    "pseudo": {"modules": ["torch", "triton", "numpy", "PIL", "torchvision"], "programs": []},
    "serving": {"modules": ["torch", "numpy", "PIL", "torchvision", "onnx", "onnxruntime", "onnxscript"], "programs": []},
}
# Wanted but not required: without them a phase runs with less (plain tables, no CUDA extension).
OPTIONAL = {"modules": ["rich", "typer", "ninja"], "programs": ["nvcc", "ninja", "nvidia-smi"]}
DISTRIBUTIONS = {"PIL": "pillow"}


def missing(phase: str) -> list[str]:
    """The modules and programs `phase` needs that are not here (a KeyError names the known phases)."""
    try:
        needs = NEEDS[phase]
    except KeyError:
        raise KeyError(f"unknown phase {phase!r}; phases: {', '.join(NEEDS)}") from None
    absent = [m for m in needs["modules"] if importlib.util.find_spec(m) is None]
    return absent + [p for p in needs["programs"] if shutil.which(p) is None]


def _version(module: str) -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> dict[str, Any]:
    """Versions of every module named above, the programs found, the device, and per phase what it lacks."""
    modules = sorted({m for n in NEEDS.values() for m in n["modules"]} | set(OPTIONAL["modules"]))
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "modules": {m: _version(m) if importlib.util.find_spec(m) else None for m in modules},
        "programs": {p: shutil.which(p) for p in OPTIONAL["programs"]},
        "phases_missing": {phase: missing(phase) for phase in NEEDS},
    }
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": props.name, "sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
                           "l2_bytes": getattr(props, "L2_cache_size", None), "capability": f"{props.major}.{props.minor}"}
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missing", metavar="PHASE", default=None, help="print what PHASE lacks and exit")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.missing is not None:
        try:
            print(" ".join(missing(args.missing)))
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
        return 0
    info = report()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=2) + "\n")
    for name, version in info["modules"].items():
        print(f"{name:>12}: {version or 'MISSING'}")
    for name, path in info["programs"].items():
        print(f"{name:>12}: {path or 'not found'}")
    print(f"{'gpu':>12}: {info.get('gpu') or 'none'}")
    for phase, absent in info["phases_missing"].items():
        print(f"phase {phase:>8}: {'ready' if not absent else 'SKIPPED, lacks ' + ' '.join(absent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
