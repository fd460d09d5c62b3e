"""Settings for end-to-end runs inside tests: the tiny preset cut down to seconds (imported by test modules)."""

from __future__ import annotations

import dataclasses

from fastwsss.config import RunConfig, SynthConfig, get_preset


def fast_config(method: str = "cam", *, num_train: int = 40, seed: int = 2, rounds: int = 1) -> RunConfig:
    """Tiny preset on `num_train` 64 px images: 2 cls epochs, one CAM scale, 1 IRN and 1 seg epoch, 16 walk
    steps; C2AM fine-tunes 1 epoch on a 16x16 global CAM; CONTA runs `rounds` rounds on an 8x8 grid."""
    config = get_preset("tiny", method)
    synth = SynthConfig(size=64, num_train=num_train, num_val=8, num_debiased=8, seed=seed)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, synth=synth),
        cls=dataclasses.replace(config.cls, epochs=2, batch_size=16),
        cam=dataclasses.replace(config.cam, scales=(1.0,)),
        irn=dataclasses.replace(config.irn, epochs=1),
        seg=dataclasses.replace(config.seg, epochs=1),
        pseudo=dataclasses.replace(config.pseudo, exp_times=4),
        c2am=dataclasses.replace(config.c2am, epochs=1, global_size=16),
        conta=dataclasses.replace(config.conta, rounds=rounds, mask_size=8),
    )
