"""Typer options whose help, choices and completion are read when the command runs, not at import.

`--method` lists the registry `fastwsss.methods.METHODS`, to which `register_method` adds at run time, so
its choices must be read each time typer builds the command from `app`; the other fixed vocabularies
(`--data`, `--preset`, `--backend`, `--device`, ...) use the same option type so that every one shows
`<a|b|c>` in `--help`, completes in the shell and refuses a wrong value with one line listing the names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import typer
from typer.models import OptionInfo

from fastwsss.errors import FastwsssError

Text = str | Callable[[], str]


def _read(value: Text) -> str:
    return value() if callable(value) else value


class LiveOption(OptionInfo):
    """A typer option whose help and `<a|b|c>` choices are built at the moment typer reads them.

    `choices` gives the valid names; `check` (default: membership in `choices`) returns the value to use
    or raises, e.g. for `cuda:N`, a vocabulary that is not a closed list.
    """

    def __init__(
        self,
        help: Text,
        *param_decls: str,
        choices: Callable[[], Sequence[str]] | None = None,
        check: Callable[[str], str] | None = None,
    ) -> None:
        self._help, self._choices, self._check = help, choices, check
        super().__init__(
            default=...,
            param_decls=param_decls,
            parser=self._parse if choices is not None else None,
            autocompletion=self._complete if choices is not None else None,
        )

    @property  # type: ignore[override]
    def help(self) -> str:
        return _read(self._help)

    @help.setter
    def help(self, value: str | None) -> None:
        """OptionInfo.__init__ assigns the static help; the live text replaces it."""

    @property  # type: ignore[override]
    def metavar(self) -> str | None:
        return f"<{'|'.join(self._choices())}>" if self._choices is not None else None

    @metavar.setter
    def metavar(self, value: str | None) -> None:
        """OptionInfo.__init__ assigns no metavar; the live choices replace it."""

    def _parse(self, value: Any) -> str:
        assert self._choices is not None
        value = str(value)
        if self._check is not None:
            try:
                return self._check(value)
            except FastwsssError as exc:
                raise typer.BadParameter(str(exc)) from None
        names = list(self._choices())
        if value not in names:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(names)}")
        return value

    def _complete(self, incomplete: str) -> list[str]:
        assert self._choices is not None
        return [name for name in self._choices() if name.startswith(incomplete) and not name.endswith(":N")]


def choice(help: Text, choices: Callable[[], Sequence[str]], *param_decls: str) -> LiveOption:
    """An option that takes one of `choices()`, read when the command runs."""
    return LiveOption(help, *param_decls, choices=choices)


def method_names() -> list[str]:
    from fastwsss.methods import METHODS

    return list(METHODS)


def preset_names() -> list[str]:
    from fastwsss.config import PRESETS

    return list(PRESETS)


def dataset_names() -> list[str]:
    from fastwsss.config import DATASET_NAMES

    return list(DATASET_NAMES)


def device_option(help: str = "") -> LiveOption:
    """--device in every command: one vocabulary (auto, cpu, cuda, cuda:N) and one default (auto)."""
    from fastwsss.engine.device import DEVICE_NAMES, check_device_name

    text = help or "auto: the first CUDA GPU when torch sees one, else the CPU"
    return LiveOption(text, choices=lambda: DEVICE_NAMES, check=lambda name: check_device_name(name, setting=""))


def method_help() -> str:
    """--method: every registered method with its one-line description."""
    from fastwsss.methods import METHODS

    return "; ".join(f"{name} ({method.description})" for name, method in METHODS.items())


def rounds_help() -> str:
    """--rounds: the round count of the methods that run in rounds."""
    from fastwsss.methods import METHODS

    rounded = [f"{name} ({preset_values(method.rounds, name)})" for name, method in METHODS.items() if method.rounds]
    return (f"Rounds after the baseline round 0, for a method that runs in rounds (default: the preset's "
            f"setting): {'; '.join(rounded) or 'none'}")


def stages_help() -> str:
    """--stages: the baseline's stages and what each method adds."""
    from fastwsss.methods import METHODS
    from fastwsss.stages import BASELINE

    extra = []
    for name, method in METHODS.items():
        added = [stage for stage in method.stages if stage not in BASELINE]
        if added:
            repeat = " and runs them in every round" if method.rounds else ""
            extra.append(f"{name} adds {','.join(added)}{repeat}")
    return "; ".join([f"Comma-separated subset of the method's stages: {','.join(BASELINE)}", *extra])


def rounds_settings(rounds: int | None) -> dict[str, int | None]:
    """--rounds as settings: the round count of every method that runs in rounds."""
    from fastwsss.methods import METHODS

    return {method.rounds: rounds for method in METHODS.values() if method.rounds}


def preset_value(config: Any, dotted: str) -> Any:
    """The setting `dotted` ("cls.epochs") of a RunConfig."""
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def preset_values(dotted: str, method: str = "cam") -> str:
    """"cls.epochs: tiny 3, synthetic 8, ...": the setting in every preset, as `method` gets it."""
    from fastwsss.config import PRESETS, get_preset

    return f"{dotted}: " + ", ".join(f"{name} {preset_value(get_preset(name, method), dotted)}" for name in PRESETS)


def preset_default(dotted: str, what: str) -> Callable[[], str]:
    """Help for an option that overrides a preset's setting: what it is, then its value in every preset."""

    def build() -> str:
        return f"{what} (default: the preset's {preset_values(dotted)}; `fastwsss presets NAME` shows them all)"

    return build
