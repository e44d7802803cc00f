"""Training engine: trainer loop, checkpoints, schedules, distributed helpers."""
