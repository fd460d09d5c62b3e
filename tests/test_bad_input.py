"""Bad input through the real command ("Scale and trust", item 4): `fastwsss train` on a small synthetic
folder that each test damages in one way. Every defect gives one line naming the file or the setting and
no traceback; where going on makes sense (a per-image stage, one bad training image among many) the run
goes on and the exit code is 0; where it does not (a listed image that does not exist, a bad setting) the
run stops before any work with exit code 2. Disk-full and permission errors are simulated at the write
(this suite may run as root, for whom a read-only folder is still writable) and must not lose the last
good checkpoint; so must a loss that turns NaN or inf, in one line naming the epoch, the step and the loss.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.config import SynthConfig
from fastwsss.data.synthetic import generate_synthetic

pytestmark = pytest.mark.slow

QUICK = ["--preset", "tiny", "--set", "cls.epochs=1", "--set", "cls.batch_size=8", "--set", "cam.scales=1.0"]
TRAIN_IDS = [f"train_{i:05d}" for i in range(16)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "synth"
    return generate_synthetic(out, SynthConfig(size=64, num_train=16, num_val=4, num_debiased=0, seed=5), progress=False)


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def train(data: Path, out: Path, *extra: str, stages: str = "cls,cam,eval") -> tuple[int, str]:
    args = ["train", *QUICK, "--data", "synthetic", "--root", str(data), "--out", str(out), "--stages", stages, *extra]
    result = CliRunner().invoke(app, args)
    output = result.output  # stdout and stderr, interleaved as printed
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    return result.exit_code, output


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output and "File \"" not in output, output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert_no_traceback(output)
    return lines[0]


def lines_naming(output: str, path: Path) -> list[str]:
    return [line for line in output.splitlines() if str(path) in line]


def image(data: Path, image_id: str) -> Path:
    return data / "JPEGImages" / f"{image_id}.jpg"


def test_corrupt_and_truncated_images_are_named_and_the_run_goes_on(data: Path, tmp_path: Path) -> None:
    garbage, truncated = image(data, TRAIN_IDS[3]), image(data, TRAIN_IDS[7])
    garbage.write_bytes(b"this is not a JPEG at all" * 40)
    truncated.write_bytes(truncated.read_bytes()[: 200])
    code, output = train(data, tmp_path / "run")
    assert code == 0, output
    assert_no_traceback(output)
    for path in (garbage, truncated):
        named = lines_naming(output, path)
        assert named and all(line.startswith("warning:") for line in named), output
        assert any("training uses the next readable image" in line for line in named)  # cls went on
    failed = (tmp_path / "run" / "cams" / "failed.txt").read_text()
    assert TRAIN_IDS[3] in failed and TRAIN_IDS[7] in failed
    assert len(list((tmp_path / "run" / "cams").glob("*.npz"))) == len(TRAIN_IDS) - 2


def _save_as(path: Path, picture: Image.Image, fmt: str, **options) -> None:  # noqa: ANN003
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    path.write_bytes(buffer.getvalue())  # the content decides how PIL reads it, not the .jpg name


def test_unusual_image_modes_are_converted_silently(data: Path, tmp_path: Path) -> None:
    base = {i: Image.open(image(data, i)).convert("RGB") for i in TRAIN_IDS[:4]}
    _save_as(image(data, TRAIN_IDS[0]), base[TRAIN_IDS[0]].convert("CMYK"), "JPEG")
    _save_as(image(data, TRAIN_IDS[1]), base[TRAIN_IDS[1]].convert("L"), "JPEG")
    _save_as(image(data, TRAIN_IDS[2]), base[TRAIN_IDS[2]].convert("RGBA"), "PNG")
    sixteen = np.asarray(base[TRAIN_IDS[3]].convert("L"), dtype=np.uint16) * 257
    _save_as(image(data, TRAIN_IDS[3]), Image.fromarray(sixteen), "PNG")
    code, output = train(data, tmp_path / "run")
    assert code == 0 and "warning" not in output, output
    for image_id, picture in base.items():
        cams = np.load(tmp_path / "run" / "cams" / f"{image_id}.npz")
        assert cams["high_res"].shape[-2:] == (picture.height, picture.width)


def test_mask_with_out_of_range_id_is_named(data: Path, tmp_path: Path) -> None:
    mask_path = data / "SegmentationClass" / f"{TRAIN_IDS[5]}.png"
    mask = Image.open(mask_path)
    values = np.asarray(mask).copy()
    values[:4, :4] = 42  # 10 classes: ids 0..10 and 255 are valid
    damaged = Image.fromarray(values)
    damaged.putpalette(mask.getpalette())  # an L image with a palette becomes P, its values unchanged
    damaged.save(mask_path)
    code, output = train(data, tmp_path / "run")
    assert code == 0, output
    named = lines_naming(output, mask_path)
    assert named and all(line.startswith("warning:") and "42" in line for line in named), output
    assert_no_traceback(output)


def test_list_naming_a_missing_image_stops_before_any_work(data: Path, tmp_path: Path) -> None:
    listing = data / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text(listing.read_text() + "train_99999\n")
    code, output = train(data, tmp_path / "run")
    line = one_error_line(output)
    assert code == 2 and str(image(data, "train_99999")) in line and "does not exist" in line
    assert not (tmp_path / "run" / "cls" / "last.pt").exists()


@pytest.mark.parametrize(
    "extra, setting",
    [
        (["--set", "cls.lr=-1"], "cls.lr"),
        (["--set", "cls.epochs=0"], "cls.epochs"),
        (["--set", "seg.crop=0", "--stages", "seg"], "seg.crop"),
        (["--set", "pseudo.beta=abc"], "pseudo.beta"),
        (["--set", "irn.radius=1"], "irn.radius"),
        (["--set", "cls.bogus=1"], "bogus"),
        (["--method", "seam"], "method"),
        (["--preset", "huge"], "huge"),
        (["--stages", "cls,fly"], "fly"),
        (["--set", "cls.batch_size=15", "--nproc", "2"], "cls.batch_size"),  # refused before any process starts
        (["--nproc", "0"], "--nproc"),
    ],
)
def test_bad_settings_are_one_line_naming_the_setting(data: Path, tmp_path: Path, extra: list[str], setting: str) -> None:
    code, output = train(data, tmp_path / "run", *extra)
    assert code == 2 and setting in one_error_line(output)
    assert not (tmp_path / "run" / "cls").exists()


def _failing_on_call(real, fail_at: int, error: OSError):  # noqa: ANN001, ANN202
    calls = [0]

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        if calls[0] == fail_at:
            raise error
        return real(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(
    "error, words",
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), os.strerror(errno.EACCES)),
    ],
    ids=["disk-full", "permission"],
)
def test_write_errors_are_one_line_and_keep_the_last_good_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, words: str
) -> None:
    """The second epoch's last.pt cannot be written: the error names the file, epoch 1's last.pt survives
    intact, and once the disk is fine again --resume finishes the stage."""
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", _failing_on_call(torch.save, 2, error))
    code, output = train(data, out, "--set", "cls.epochs=2", stages="cls")
    line = one_error_line(output)
    assert code == 2 and str(out / "cls" / "last.pt") in line and words in line
    kept = torch.load(out / "cls" / "last.pt", weights_only=True)
    assert kept["epoch"] == 0 and not list((out / "cls").glob(".*.tmp*"))
    monkeypatch.undo()
    code, output = train(data, out, "--set", "cls.epochs=2", "--resume", stages="cls")
    assert code == 0 and (out / "cls" / "DONE").is_file(), output


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_naming_step_and_loss_and_keeps_the_last_good_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    """The loss turns non-finite at the first step of epoch 2 (16 images, batch 8: step 3)."""
    real = torch.nn.functional.multilabel_soft_margin_loss
    calls = [0]

    def loss(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        value = real(*args, **kwargs)
        return value * bad if calls[0] == 3 else value

    monkeypatch.setattr(torch.nn.functional, "multilabel_soft_margin_loss", loss)
    out = tmp_path / "run"
    code, output = train(data, out, "--set", "cls.epochs=2", stages="cls")
    line = one_error_line(output)
    assert code == 2 and f"cls: loss is {bad} at epoch 2 step 3" in line, line
    assert str(out / "cls" / "last.pt") in line and "cls.lr" in line
    assert torch.load(out / "cls" / "last.pt", weights_only=True)["epoch"] == 0
    assert not (out / "cls" / "ckpt.pt").exists() and not (out / "cls" / "DONE").exists()
