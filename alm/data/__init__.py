"""Audio I/O, WebDataset shards, the one resumable training stream, and the synthetic dataset."""
