"""Codec, semantic and text tokenizers."""
