"""The run engine: a run directory and its paths, the stage pipeline, training loops, processes, provenance and progress."""
