"""What every stage receives: the resolved config, the run directory, the device and test hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastwsss.config import RunConfig
from fastwsss.engine.rundir import RunDir

StepHook = Callable[[str, int], None]


@dataclass
class StageContext:
    config: RunConfig
    run: RunDir
    device: torch.device
    resume: bool = False
    on_step: StepHook | None = None
    """Called as on_step(stage, count) after every optimiser step or finished image (tests interrupt here)."""
    round: int | None = None
    """CONTA's round; `run` is then the view of RUNDIR/rounds/<round>. None for single-pass methods."""

    def previous_round(self) -> RunDir:
        """The run-directory view of the round before this one (CONTA rounds >= 1 only)."""
        if self.round is None or self.round < 1:
            raise ValueError(f"stage context of round {self.round} has no previous round")
        return self.run.round_view(self.round - 1)

    def step(self, stage: str, count: int) -> None:
        if self.on_step is not None:
            self.on_step(stage, count)

