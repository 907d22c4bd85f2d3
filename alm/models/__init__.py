"""Model definitions: one file per model, pure PyTorch (no Lightning, no DeepSpeed)."""
