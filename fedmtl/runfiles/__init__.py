"""Run files: the run directory, metric rows, the per-task summary, checkpoints."""
