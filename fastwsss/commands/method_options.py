"""CLI options whose help lists the registered methods (fastwsss.methods.METHODS).

The help text is rebuilt each time typer builds the command from `app`, not once at import, so a method
registered at run time (`register_method`) is listed by `--help` like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable

from typer.models import OptionInfo

from fastwsss.methods import METHODS
from fastwsss.stages import BASELINE


class LiveHelpOption(OptionInfo):
    """A typer option whose `help` is `build()` at the moment it is read."""

    def __init__(self, build: Callable[[], str]) -> None:
        self._build = build
        super().__init__(default=..., param_decls=())

    @property  # type: ignore[override]
    def help(self) -> str:
        return self._build()

    @help.setter
    def help(self, value: str | None) -> None:
        """OptionInfo.__init__ assigns the static help; the live text replaces it."""


def method_help() -> str:
    """--method: every registered method with its one-line description."""
    return "; ".join(f"{name} ({method.description})" for name, method in METHODS.items())


def rounds_help() -> str:
    """--rounds: the round count of the methods that run in rounds."""
    rounded = [f"{name} ({method.rounds})" for name, method in METHODS.items() if method.rounds]
    return f"Rounds after the baseline round 0, for a method that runs in rounds: {', '.join(rounded) or 'none'}"


def stages_help() -> str:
    """--stages: the baseline's stages and what each method adds."""
    extra = []
    for name, method in METHODS.items():
        added = [stage for stage in method.stages if stage not in BASELINE]
        if added:
            repeat = " and runs them in every round" if method.rounds else ""
            extra.append(f"{name} adds {','.join(added)}{repeat}")
    return "; ".join([f"Comma-separated subset of the method's stages: {','.join(BASELINE)}", *extra])


def method_choice_help() -> str:
    """`presets --method`: the valid names."""
    return f"Show the settings as this method gets them ({', '.join(METHODS)})"


def rounds_settings(rounds: int | None) -> dict[str, int | None]:
    """--rounds as settings: the round count of every method that runs in rounds."""
    return {method.rounds: rounds for method in METHODS.values() if method.rounds}
