"""Training loop, evaluation, checkpoints, metrics, schedules and visualisation."""
