"""Random hostile mutations of what a shared run directory or a model file holds, through the real commands:
config.json through `train --resume`, metrics.jsonl through `report`, checkpoint meta and ONNX metadata
through `segment`. Every outcome must be a normal exit or one error line: no traceback, no markup or HTML
injected, nothing written outside the run or the output folder. The mutations are seeded (reproducible).
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_hostile_input import cli
from test_report import check_page, make_run

from fastwsss.config import SynthConfig, get_preset
from fastwsss.data.synthetic import generate_synthetic
from fastwsss.models.deeplab import build_seg_model, save_seg_checkpoint

SCRIPT = "<script>alert(1)</script>"
DEEP_JSON = "[" * 100_000 + "]" * 100_000
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**63), 1e308, -1e-308, 0.5, "", "3", SCRIPT, "[/x]", "[bold]", "../../victim",
    "/etc/passwd", "\x00", "é" * 300, [], {}, [[1]], [1, 2, 3], [[256, -1, 3]], {"a": 1}, ["x"] * 300,
    [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]],
]


def snapshot(folder: Path, skip: Path) -> dict[str, int]:
    """Every file under `folder` except those under `skip`, with its size and modification time."""
    return {
        str(p): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and skip not in p.parents and not p.is_symlink()
    }


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON value (the root excluded)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*prefix, key))
            found += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((*prefix, index))
            found += paths_of(item, (*prefix, index))
    return found


def mutate(value: Any, rng: random.Random, keep: tuple[tuple, ...] = ()) -> Any:
    """A copy of `value` with one to three random changes: a hostile value, a deleted key or an unknown key."""
    value = copy.deepcopy(value)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in paths_of(value) if not any(p[: len(k)] == k for k in keep)]
        if not paths:
            return value
        path = rng.choice(paths)
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.75:
            parent[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        elif action < 0.9 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(["bogus", SCRIPT, "[/y]"])] = rng.choice(HOSTILE)
    return value


def assert_clean(code: int, output: str, allowed: tuple[int, ...]) -> None:
    assert "Traceback" not in output and "File \"" not in output, output
    assert code in allowed, (code, output)
    if code == 2:
        assert sum(line.startswith("error:") for line in output.splitlines()) == 1, output


def test_config_json_mutations_through_train_resume(tmp_path: Path) -> None:
    data = generate_synthetic(tmp_path / "data", SynthConfig(size=32, num_train=4, num_val=2, num_debiased=2, seed=3),
                              progress=False)
    base = get_preset("tiny")
    base.data.root = str(data)
    clean = json.loads(json.dumps(base.to_dict()))
    rng = random.Random(1)
    run = tmp_path / "run"
    codes = []
    for trial in range(100):
        if run.exists():
            for path in sorted(run.rglob("*"), reverse=True):
                path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        run.mkdir(exist_ok=True)
        config = mutate(clean, rng, keep=(("data", "root"), ("data", "name"), ("data", "synth")))
        text = json.dumps(config) if trial % 25 else DEEP_JSON
        (run / "config.json").write_text(text)
        before = snapshot(tmp_path, run)
        code, output = cli("train", "--resume", "--out", run, "--stages", "eval")
        assert_clean(code, output, (0, 2))
        assert snapshot(tmp_path, run) == before, (config, output)
        codes.append(code)
    assert codes.count(0) >= 5 and codes.count(2) >= 50, codes  # both kinds of outcome were exercised


def test_metrics_jsonl_mutations_through_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rng = random.Random(2)
    for trial in range(150):
        lines = [json.dumps(mutate(row, rng) if rng.random() < 0.5 else row) for row in rows]
        if trial % 30 == 0:
            lines.insert(rng.randint(0, len(lines)), DEEP_JSON)
        if trial % 11 == 0:  # every row of one bogus round: the page shows that round's name
            lines = [json.dumps({**row, "round": SCRIPT}) for row in rows]
        if trial % 7 == 0:
            lines.append(json.dumps({"stage": "seg", "round": SCRIPT, "split": "[/x]", "miou": 0.5, "per_class_iou": [0.5],
                                     "class_names": [SCRIPT]}))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        before = snapshot(tmp_path, run)
        code, output = cli("report", run, "--sample", "0")
        assert_clean(code, output, (0,))
        check_page(run / "report.html")  # balanced tags, no script, no URL: nothing from the rows became markup
        assert snapshot(tmp_path, run) == before


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz-models")
    torch.manual_seed(0)
    model = build_seg_model("deeplabv2", "resnet18_quarter", 4).eval()
    names = ["cat", "dog", "cow"]
    ckpt = root / "seg.pt"
    save_seg_checkpoint(ckpt, model, {"class_names": names})
    from fastwsss.export.onnx import build_metadata, export_seg_onnx

    onnx_path = export_seg_onnx(model, root / "model.onnx", metadata=build_metadata(names), example_hw=(32, 32))
    inputs = root / "inputs"
    inputs.mkdir()
    for index in range(2):
        Image.fromarray(np.full((24, 30, 3), 60 * index, np.uint8)).save(inputs / f"im{index}.png")
    return {"root": root, "ckpt": ckpt, "onnx": onnx_path, "inputs": inputs}


def test_checkpoint_meta_mutations_through_segment(model_files: dict[str, Any], tmp_path: Path) -> None:
    payload = torch.load(model_files["ckpt"], weights_only=True)
    rng = random.Random(3)
    for trial in range(40):
        meta = mutate({"class_names": ["cat", "dog", "cow"], "palette": [[0, 0, 0]] * 4, "x": {"y": [1]}}, rng)
        if trial % 10 == 0:
            meta = rng.choice(HOSTILE)
        crafted = tmp_path / f"ckpt{trial}.pt"
        torch.save({**payload, "meta": meta}, crafted)
        out = tmp_path / f"out{trial}"
        before = snapshot(tmp_path, out)
        code, output = cli("segment", model_files["inputs"], "--model", crafted, "--out", out)
        assert_clean(code, output, (0, 1, 2))
        assert snapshot(tmp_path, out) == before


def test_onnx_metadata_mutations_through_segment(model_files: dict[str, Any], tmp_path: Path) -> None:
    import onnx

    from fastwsss.export.onnx import METADATA_KEY

    proto = onnx.load(str(model_files["onnx"]))
    prop = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    clean = json.loads(prop.value)
    rng = random.Random(4)
    for trial in range(40):
        prop.value = DEEP_JSON if trial % 20 == 0 else json.dumps(mutate(clean, rng))
        crafted = tmp_path / f"model{trial}.onnx"
        onnx.save(proto, str(crafted))
        out = tmp_path / f"out{trial}"
        before = snapshot(tmp_path, out)
        code, output = cli("segment", model_files["inputs"], "--model", crafted, "--out", out, "--backend", "onnxruntime")
        assert_clean(code, output, (0, 1, 2))
        assert snapshot(tmp_path, out) == before
        crafted.unlink()
