"""What a WSSS method declares: its stages, its rounds, its settings and the hooks the generic stages call.

The generic code (the stage plan, the cls and cam stages, the run directory's final view, the CLI, the
report) never tests a method's name; it asks the method's `Method` record instead. A method is one module
that builds a `Method` and one line in `fastwsss.methods.METHODS` (or a `register_method` call).

Hooks, each optional, and who calls them:

- `classifier_input(ctx)` (stage cls): the extra input map the classifier is trained with in this stage
  context, or None. CONTA returns its M_t in rounds >= 1.
- `cam_input(ctx)` (stage cam): image id -> the classifier's extra input at CAM time, or None when the
  classifier takes the image alone. Must agree with `classifier_input`.
- `classifier_stage`: the stage folder whose ckpt.pt is the classifier the cam, irn and seg stages read
  (C2AM: its fine-tuned `c2am`).
- `rounds`: the dotted setting holding the round count, for a method that runs its stages in rounds
  (CONTA: `conta.rounds`). Round 0 runs the stages less `first_round_skips` and is the baseline; rounds
  1..N run every stage. Outputs go under RUNDIR/rounds/<t>; the last round holds the final artifacts and
  round 0's classifier, which needs no extra input, is the one exported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fastwsss.config import RunConfig
    from fastwsss.stages import Stage
    from fastwsss.stages.context import StageContext

Need = Callable[[bool, str, str], None]
"""need(ok, setting, message): raise ConfigError "setting: message" unless ok (see fastwsss.config.validate)."""
ExtraMap = Callable[[str], "torch.Tensor | None"]
"""image id -> the classifier's extra input (C, h, w) for that image, or None."""


class ClassifierInput(Protocol):
    """An extra input map the cls stage trains the classifier with (CONTA: M_t, one channel)."""

    channels: int
    """Extra input channels of the classifier (CAMNet's `extra_channels`)."""
    at: str
    """Where they are concatenated (CAMNet's `extra_at`)."""

    def wrap(self, net: nn.Module) -> nn.Module:
        """The model to train around `net`: `param_groups()` and `forward(image, extra)`."""

    def batch(self, ids: list[str]) -> torch.Tensor:
        """The extra inputs of one batch of training images, in the order of `ids`."""

    def save(self, model: nn.Module) -> None:
        """After training, on rank 0: save what `wrap` added to the classifier."""


@dataclass(frozen=True)
class ReportSection:
    """A section of `fastwsss report` that only this method's runs have."""

    key: str
    title: str
    build: Callable[[Any], str]
    """RunInfo (fastwsss.reporting.report) -> the section's HTML."""


@dataclass(frozen=True)
class Method:
    """One WSSS method: what `--method NAME` runs. See the module docstring for the hooks."""

    name: str
    description: str
    """One line, shown by `fastwsss train --help` and the README's methods table."""
    stages: tuple[str, ...]
    """Stage order of one pass (or of one round >= 1)."""
    links: tuple[str, ...] = ()
    """Paper and upstream code."""
    added_stages: tuple[Stage, ...] = ()
    """Stages this method brings beside the generic ones (fastwsss.stages)."""
    section: str | None = None
    """Name of the method's settings section: `config.<section>`, `--set <section>.NAME=...`, the top-level
    key of config.json; None for a method without settings."""
    settings: type | None = None
    """The section's dataclass, its defaults the method's released values (with `section`)."""
    preset_settings: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    """Preset name -> the section's values in that preset, for every run whatever its method (the small
    presets' schedules); a preset not named here gets `settings()`."""
    preset_changes: Mapping[str, Callable[[RunConfig], RunConfig]] = field(default_factory=dict)
    """Preset name -> the settings the method changes in that preset (C2AM's released VOC thresholds)."""
    check: Callable[[RunConfig, Need], None] | None = None
    """Range checks of the method's own section; runs for every config, whatever its method, as the
    section is part of every config.json."""
    sources: Callable[[str], dict[str, str]] | None = None
    """Preset -> where the method's released values come from (`fastwsss presets NAME --method`)."""
    rounds: str | None = None
    first_round_skips: tuple[str, ...] = ()
    classifier_stage: str = "cls"
    classifier_input: Callable[[StageContext], ClassifierInput | None] | None = None
    cam_input: Callable[[StageContext], ExtraMap | None] | None = None
    report_sections: tuple[ReportSection, ...] = ()

    def section_settings(self, preset: str | None = None) -> Any:
        """The settings section's values in `preset` (its defaults for None or a preset without its own)."""
        if self.settings is None:
            raise ValueError(f"method {self.name} has no settings section")
        make = self.preset_settings.get(preset) if preset is not None else None
        return (make or self.settings)()

    def round_count(self, config: RunConfig) -> int | None:
        """Rounds after round 0 in `config`, or None for a single-pass method."""
        if self.rounds is None:
            return None
        section, name = self.rounds.split(".")
        return int(getattr(getattr(config, section), name))

    def final_round(self, config: RunConfig) -> int | None:
        """The round whose outputs are the run's final ones (None: the run directory itself)."""
        return self.round_count(config)

    def export_round(self, config: RunConfig) -> int | None:
        """The round whose classifier is exported: round 0's, the one that needs no extra input."""
        return None if self.rounds is None else 0

    def with_preset(self, preset: str, config: RunConfig) -> RunConfig:
        """`config` (preset `preset`) with this method's changes to that preset."""
        config = dataclasses.replace(config, method=self.name)
        change = self.preset_changes.get(preset)
        return change(config) if change is not None else config
