"""Training: the loop, schedules, checkpoints, logging and distributed set-up."""
