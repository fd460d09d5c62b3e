import dataclasses
import re

import pytest

from fastwsss.commands.train import check_resume_options
from fastwsss.config import PRESETS, apply_options, config_from_dict, get_preset, parse_setting, validate
from fastwsss.errors import ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate_and_round_trip(name):
    config = get_preset(name)
    assert config.preset == name
    if config.data.name != "synthetic":
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root="/data"))
    assert config_from_dict(config.to_dict()) == validate(config)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="tiny, synthetic, voc"):
        get_preset("huge")


@pytest.mark.parametrize(
    "change, setting",
    [
        ({"method": "seam"}, "method"),
        ({"cls": {"epochs": 0}}, "cls.epochs"),
        ({"cls": {"lr": -1.0}}, "cls.lr"),
        ({"cls": {"output_stride": 12}}, "cls.output_stride"),
        ({"data": {"synth": {"context_prob": 1.5}}}, "synth.context_prob"),
        ({"eval": {"cam_bg_threshold": 2.0}}, "eval.cam_bg_threshold"),
        ({"data": {"name": "voc"}}, "root"),
    ],
)
def test_out_of_range_settings_name_the_setting(change, setting):
    config = get_preset("tiny")
    for key, value in change.items():
        if isinstance(value, dict):
            sub = getattr(config, key)
            for k2, v2 in value.items():
                if isinstance(v2, dict):
                    sub = dataclasses.replace(sub, **{k2: dataclasses.replace(getattr(sub, k2), **v2)})
                else:
                    sub = dataclasses.replace(sub, **{k2: v2})
            config = dataclasses.replace(config, **{key: sub})
        else:
            config = dataclasses.replace(config, **{key: value})
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        validate(config)


def test_unknown_key_in_config_json_is_named():
    values = get_preset("tiny").to_dict()
    values["cls"]["cam_crop_size"] = 512
    with pytest.raises(ConfigError, match="cam_crop_size"):
        config_from_dict(values)


def test_apply_options_sets_nested_values_and_skips_none():
    config = apply_options(get_preset("tiny"), {"cls.epochs": 7, "data.synth.seed": 3, "seed": None})
    assert config.cls.epochs == 7 and config.data.synth.seed == 3
    assert config.seed == get_preset("tiny").seed


def test_resume_refuses_conflicting_explicit_option(tmp_path):
    saved = get_preset("tiny")
    check_resume_options(saved, {"cls.epochs": saved.cls.epochs, "seed": None}, tmp_path)
    with pytest.raises(ConfigError, match="cls.epochs"):
        check_resume_options(saved, {"cls.epochs": saved.cls.epochs + 1}, tmp_path)


@pytest.mark.parametrize(
    "text, dotted, value",
    [
        ("cls.epochs=3", "cls.epochs", 3),
        ("cls.lr=0.5", "cls.lr", 0.5),
        ("cls.freeze_bn=true", "cls.freeze_bn", True),
        ("cls.freeze_bn=off", "cls.freeze_bn", False),
        ("cam.scales=1.0,0.5", "cam.scales", (1.0, 0.5)),
        ("cam.scales=[1, 2]", "cam.scales", (1.0, 2.0)),
        ("data.synth.num_train=64", "data.synth.num_train", 64),
        ("cls.weights=/w/resnet50.pth", "cls.weights", "/w/resnet50.pth"),
        ("cls.weights=none", "cls.weights", None),
        ("method=conta", "method", "conta"),
    ],
)
def test_set_option_converts_to_the_setting_type(text, dotted, value):
    got = parse_setting(get_preset("tiny"), text)
    assert got == (dotted, value) and type(got[1]) is type(value)
    if isinstance(value, tuple):
        assert all(type(v) is float for v in got[1])
    validate(apply_options(get_preset("tiny"), dict([got])))


@pytest.mark.parametrize(
    "text, message",
    [
        ("cls.epochs", "expected SECTION.NAME=VALUE"),
        ("cls.nope=1", "unknown name 'nope' in cls; valid: backbone"),
        ("clss.epochs=1", "unknown name 'clss' in settings; valid: "),
        ("cls=1", "a section, not a setting"),
        ("cls.epochs=three", "cls.epochs: cannot read 'three' as int"),
        ("cls.freeze_bn=maybe", "cls.freeze_bn: cannot read 'maybe' as bool"),
    ],
)
def test_set_option_errors_name_the_setting(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_setting(get_preset("tiny"), text)
