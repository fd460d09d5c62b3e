"""A small real run attacked after the fact: outputs deleted under a DONE marker, a flipped bit in a
checkpoint, a full disk while a checkpoint is written, rich markup in paths. Through the real commands."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from test_hostile_input import cli, one_error_line

from fastwsss.config import SynthConfig
from fastwsss.data.synthetic import generate_synthetic
from fastwsss.errors import CheckpointError, RunDirError
from fastwsss.models.checkpoint import save_torch_file
from fastwsss.models.deeplab import build_seg_model, load_seg_model, save_seg_checkpoint

QUICK = ["--preset", "tiny", "--set", "cls.epochs=1", "--set", "cls.batch_size=8", "--set", "cam.scales=1.0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, run): the cls and cam stages of a 16-image synthetic run."""
    root = tmp_path_factory.mktemp("hostile-runs")
    data = generate_synthetic(root / "data", SynthConfig(size=48, num_train=16, num_val=4, num_debiased=0, seed=5),
                              progress=False)
    run = root / "run"
    code, output = cli("train", *QUICK, "--data", "synthetic", "--root", data, "--out", run, "--stages", "cls,cam")
    assert code == 0, output
    return data, run


def test_resume_redoes_outputs_deleted_under_done(finished: tuple[Path, Path], tmp_path: Path) -> None:
    _, original = finished
    run = Path(shutil.copytree(original, tmp_path / "run"))
    cams = sorted((run / "cams").glob("*.npz"))
    assert len(cams) == 16 and (run / "cams" / "DONE").is_file()
    kept = {p.name: p.read_bytes() for p in cams[8:]}
    for path in cams[:8]:
        path.unlink()
    code, output = cli("train", "--resume", "--out", run, "--stages", "cls,cam")
    assert code == 0, output
    assert "8 output(s) are missing" in output and "cls: already finished" in output, output
    assert sorted(p.name for p in (run / "cams").glob("*.npz")) == [p.name for p in cams]
    assert all((run / "cams" / name).read_bytes() == data for name, data in kept.items())  # not redone
    code, output = cli("train", "--resume", "--out", run, "--stages", "cls,cam")
    assert code == 0 and "cam: already finished" in output, output


def test_flipped_bit_in_a_checkpoint_is_one_line(finished: tuple[Path, Path], tmp_path: Path) -> None:
    _, original = finished
    run = Path(shutil.copytree(original, tmp_path / "run"))
    ckpt = run / "cls" / "ckpt.pt"
    payload = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 100)
    tensor = payload["state_dict"][name]
    tensor.view(torch.int32).view(-1)[7] ^= 1 << 20  # one bit of one weight, as a bad disk would flip it
    torch.save(payload, ckpt)  # rewritten without recomputing the checksum
    shutil.rmtree(run / "cams")
    code, output = cli("train", "--resume", "--out", run, "--stages", "cls,cam")
    line = one_error_line(output)
    assert code == 2 and str(ckpt) in line and "checksum" in line, output


def test_checksum_round_trip_and_mismatch(tmp_path: Path) -> None:
    model = build_seg_model("deeplabv2", "resnet18_quarter", 3)
    path = tmp_path / "seg.pt"
    save_seg_checkpoint(path, model, {"class_names": ["a", "b"]})
    load_seg_model(path, "cpu", 3)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"][next(iter(payload["state_dict"]))].add_(1)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_seg_model(path, "cpu", 3)


def test_full_disk_while_saving_a_checkpoint_names_the_file(finished: tuple[Path, Path], tmp_path: Path) -> None:
    """On a 1 MB tmpfs (where this suite may mount one) a checkpoint of several MB cannot be written."""
    data, _ = finished
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        target = mount / "ckpt.pt"
        with pytest.raises(RunDirError, match=f"cannot write {target}"):
            save_torch_file({"w": torch.zeros(1_000_000)}, target)
        assert list(mount.iterdir()) == []  # no temporary left behind
        run = mount / "run"
        code, output = cli("train", *QUICK, "--data", "synthetic", "--root", data, "--out", run, "--stages", "cls")
        line = one_error_line(output)
        assert code == 2 and f"cannot write {run / 'cls'}" in line, output
        assert not [p for p in run.rglob(".*.tmp*")], "a temporary was left behind"
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)  # lazy: a handle still open must not keep it


def test_rich_markup_in_out_is_shown_as_text(finished: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = finished
    out = tmp_path / "run[/x]"
    code, output = cli("train", *QUICK, "--data", "synthetic", "--root", data, "--out", out, "--stages", "cls",
                       "--set", "cls.lr=-1")
    assert code == 2 and "cls.lr" in one_error_line(output)
    code, output = cli("train", "--resume", "--out", out)
    assert code == 2 and str(out) in one_error_line(output), output


def test_triton_forced_on_the_cpu_without_the_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, output = cli("train", *QUICK, "--device", "cpu", "--out", tmp_path / "run", env={"FASTWSSS_KERNELS": "triton"})
    assert code == 2 and "FASTWSSS_KERNELS=triton" in one_error_line(output)
    assert not (tmp_path / "run").exists()


def test_markup_in_class_names_and_ctrl_c_in_segment(
    finished: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, original = finished
    run = Path(shutil.copytree(original, tmp_path / "run"))
    row = {"stage": "cam", "split": "[/x]", "method": "cam", "miou": 0.5, "per_class_iou": [0.5, 0.25],
           "class_names": ["[/c]", "[bold]b"]}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    code, output = cli("eval", run, "--no-rescore", "-v")
    assert code == 0 and "[/c]" in output and "[bold]b" in output and "[/x]" in output, output

    def interrupted(*_args: object, **_kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("fastwsss.commands.segment.segment_command", interrupted)
    code, output = cli("segment", tmp_path, "--model", run, "--out", tmp_path / "masks")
    assert code == 130 and "interrupted" in output and "--resume" not in output, output
