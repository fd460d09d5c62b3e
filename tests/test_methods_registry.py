"""The method registry: one contract every method honours, run over every registered method (as timm's
tests run over list_models()) and over a toy method that a fixture registers through `register_method`.

The toy method is the walk-through of CONTRIBUTING.md's "Add a method": the baseline plus one stage that
counts the CAM files, declared in one `Method` and registered in one call; `TestToyMethod` is the one
test subclass it needs, and it trains the toy end to end through the CLI.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.config import (
    PRESETS,
    DataConfig,
    RunConfig,
    apply_options,
    config_from_dict,
    get_preset,
    parse_setting,
    validate,
)
from fastwsss.engine.rundir import open_run_dir
from fastwsss.errors import ConfigError
from fastwsss.methods import METHODS, Method, ReportSection, get_method, register_method, unregister_method
from fastwsss.methods.base import Need
from fastwsss.stages import BASELINE, Stage, all_stages, get_stage, plan
from fastwsss.stages.context import StageContext

runner = CliRunner()


@dataclasses.dataclass
class ToyConfig:
    """The toy's settings section `toy`."""

    key: str = "cams"
    """The key under which the stage writes its count."""


def check_toy(config: RunConfig, need: Need) -> None:
    """The toy's range check: a key is a plain name."""
    need(re.fullmatch(r"[a-z_]+", config.toy.key) is not None, "toy.key", f"a lower-case name, got {config.toy.key!r}")


def run_cam_count(ctx: StageContext) -> None:
    """The toy's stage: count this run's CAM files into cam_count/count.json, under the key `toy.key`."""
    count = sum(1 for _ in ctx.run.cams_dir.rglob("*.npz"))
    folder = ctx.run.stage_dir("cam_count")
    (folder / "count.json").write_text(json.dumps({ctx.config.toy.key: count}))
    ctx.run.mark_done("cam_count", {"cams": count})


def cam_count_section(info: object) -> str:
    """The toy's report section."""
    return f"<p>{(info.path / 'cam_count' / 'count.json').read_text()}</p>"  # type: ignore[attr-defined]


TOY = Method(
    name="toy",
    description="the IRNet baseline plus a stage that counts the CAM files",
    stages=("cls", "cam", "cam_count", "ir_label", "irn", "pseudo", "seg", "eval"),
    added_stages=(Stage("cam_count", "cam_count", run_cam_count),),
    report_sections=(ReportSection("cam-count", "CAM files", cam_count_section),),
    section="toy",
    settings=ToyConfig,
    preset_settings={"tiny": functools.partial(ToyConfig, key="tiny_cams")},
    check=check_toy,
)


def _bad_value(value: object) -> object | None:
    """A value of the same type that no sane range allows, or None where there is none to try."""
    if isinstance(value, bool) or isinstance(value, tuple):
        return None
    if isinstance(value, int):
        return -(10**9)
    if isinstance(value, float):
        return -1e9
    if isinstance(value, str):
        return "no-such-value"
    return None


def _flat(text: str) -> str:
    """Help text with rich's box and line wrapping removed."""
    return re.sub(r"[\s│]+", " ", text)


class MethodContract:
    """What every registered method must satisfy; a subclass provides the `method` fixture."""

    def test_registered_under_its_name(self, method: Method) -> None:
        assert get_method(method.name) is method
        assert re.fullmatch(r"[a-z][a-z0-9_]*", method.name)
        assert method.description and "\n" not in method.description

    def test_plan_is_well_formed(self, method: Method) -> None:
        assert len(set(method.stages)) == len(method.stages)
        assert set(method.first_round_skips) <= set(method.stages)
        for stage in method.added_stages:
            assert stage.name in method.stages and all_stages()[stage.name] is stage
        planned = plan(method.name, 2)
        names = [p.stage.name for p in planned]
        if method.rounds is None:
            assert names == list(method.stages) and all(p.round is None for p in planned)
        else:
            first = [name for name in method.stages if name not in method.first_round_skips]
            assert [(p.stage.name, p.round) for p in planned] == (
                [(n, 0) for n in first] + [(n, t) for t in (1, 2) for n in method.stages]
            )
        assert [p.stage.name for p in plan(method.name, 1, names[-1])][-1] == names[-1]

    def test_stages_exist_and_the_classifier_comes_from_one_of_them(self, method: Method) -> None:
        folders = {get_stage(name).folder for name in method.stages}
        assert method.classifier_stage in folders
        for name in method.stages:
            stage = get_stage(name)
            assert callable(stage.run) and (stage.batch_section is None or stage.batch_section in get_preset("tiny").to_dict())
            assert set(stage.reads) <= {f.name for f in dataclasses.fields(DataConfig) if f.name.endswith(("_split", "_splits"))}

    @pytest.mark.parametrize("preset", list(PRESETS))
    def test_config_round_trips_through_config_json(self, method: Method, preset: str) -> None:
        config = get_preset(preset, method.name)
        if config.data.name != "synthetic":
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, root="/data"))
        assert config.method == method.name
        assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
        if method.section is not None:
            assert dataclasses.is_dataclass(getattr(config, method.section))
        if method.rounds is not None:
            assert method.round_count(config) is not None and method.round_count(config) >= 0

    def test_validation_errors_name_the_method_settings(self, method: Method) -> None:
        assert (method.section is None) == (method.settings is None)
        if method.section is None:
            assert method.check is None and not method.preset_settings
            return
        assert isinstance(get_preset("voc", "cam").sections[method.section], method.settings)
        config = get_preset("tiny", method.name)
        section = getattr(config, method.section)
        messages = []
        for field in dataclasses.fields(section):
            bad = _bad_value(getattr(section, field.name))
            if bad is None:
                continue
            changed = dataclasses.replace(config, **{method.section: dataclasses.replace(section, **{field.name: bad})})
            try:
                validate(changed)
            except ConfigError as exc:
                messages.append(str(exc))
        assert messages, f"no setting of {method.section} is range-checked"
        assert all(m.startswith(f"{method.section}.") for m in messages), messages

    def test_help_and_presets_list_it(self, method: Method) -> None:
        result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert f"{method.name} (" in _flat(result.output)
        assert f"--method <{'|'.join(METHODS)}>" in _flat(result.output)  # the choices, read when the command runs
        shown = runner.invoke(app, ["presets", "tiny", "--method", method.name])
        assert shown.exit_code == 0 and "method" in shown.output and method.name in shown.output

    def test_dry_run_lists_its_stages(self, method: Method, tmp_path) -> None:
        result = runner.invoke(app, ["train", "--preset", "tiny", "--method", method.name, "--dry-run",
                                     "--out", str(tmp_path / "run")])
        assert result.exit_code == 0, result.output
        for name in method.stages:
            assert name in result.output
        assert not (tmp_path / "run").exists()


class TestRegisteredMethods(MethodContract):
    @pytest.fixture(params=list(METHODS))
    def method(self, request: pytest.FixtureRequest) -> Method:
        return METHODS[request.param]


class TestToyMethod(MethodContract):
    @pytest.fixture
    def method(self) -> Iterator[Method]:
        register_method(TOY)
        try:
            yield TOY
        finally:
            unregister_method(TOY.name)

    def test_its_settings_section_is_set_read_and_checked_like_a_generic_one(self, method: Method, tmp_path) -> None:
        config = get_preset("tiny", "toy")
        assert config.toy == ToyConfig(key="tiny_cams") and get_preset("synthetic", "cam").toy == ToyConfig()
        assert parse_setting(config, "toy.key=cam_files") == ("toy.key", "cam_files")
        changed = apply_options(config, {"toy.key": "cam_files"})
        assert changed.toy.key == "cam_files" and changed.cls == config.cls
        assert changed.to_dict()["toy"] == {"key": "cam_files"}
        assert config_from_dict(json.loads(json.dumps(changed.to_dict()))) == changed
        with pytest.raises(ConfigError, match="^toy.key: a lower-case name"):
            validate(apply_options(config, {"toy.key": "Bad Key"}))
        with pytest.raises(ConfigError, match="unknown name 'nope' in toy; valid: key"):
            parse_setting(config, "toy.nope=1")
        bad = runner.invoke(app, ["train", "--preset", "tiny", "--method", "toy", "--dry-run", "--set", "toy.key=Bad Key",
                                  "--out", str(tmp_path / "run")])
        assert bad.exit_code != 0 and "toy.key" in bad.output
        shown = runner.invoke(app, ["presets", "tiny", "--method", "toy"])
        assert "toy.key" in shown.output and "tiny_cams" in shown.output

    @pytest.mark.slow
    def test_trains_end_to_end_through_the_cli(self, method: Method, tmp_path, monkeypatch) -> None:
        monkeypatch.chdir(tmp_path)
        small = ["--set", "toy.key=cam_files", "--set", "data.synth.num_train=40", "--set", "data.synth.num_val=8", "--set", "data.synth.num_debiased=8",
                 "--set", "cam.scales=1.0", "--set", "irn.epochs=1", "--set", "seg.epochs=1"]
        result = runner.invoke(app, ["train", "--preset", "tiny", "--method", "toy", "--out", "run", "--seed", "0",
                                     "--epochs", "2", *small])
        assert result.exit_code == 0, result.output
        run = open_run_dir(tmp_path / "run")
        assert run.load_config().toy.key == "cam_files"
        count = json.loads((run.path / "cam_count" / "count.json").read_text())["cam_files"]
        assert count == 40 and run.is_done("cam_count")
        assert {r["stage"] for r in run.metrics()} >= {"cls", "cam", "pseudo", "seg"}
        assert runner.invoke(app, ["eval", "run"]).exit_code == 0
        report = runner.invoke(app, ["report", "run"])
        assert report.exit_code == 0, report.output
        assert "CAM files" in (run.path / "report.html").read_text()


def test_unknown_method_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"^method: unknown method 'x'; valid: cam, c2am, conta$"):
        get_method("x")
    with pytest.raises(ConfigError, match="valid: cam, c2am, conta"):
        get_preset("tiny", "x")


def test_a_taken_name_or_stage_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_method(dataclasses.replace(TOY, name="cam"))
    with pytest.raises(ConfigError, match="stage 'cls' is already registered"):
        register_method(dataclasses.replace(TOY, added_stages=(get_stage("cls"),)))
    assert "toy" not in METHODS


def test_the_baseline_is_the_generic_stages() -> None:
    assert get_method("cam").stages == BASELINE
    assert BASELINE == ("cls", "cam", "ir_label", "irn", "pseudo", "seg", "eval")
