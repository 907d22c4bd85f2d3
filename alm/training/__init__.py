"""Training: the one Trainer builder, strategies, checkpoints, loggers and callbacks (stage-agnostic)."""
