"""alm: train audio-language models (AudioLM, MusicGen, MuLan/CLAP, AudioPaLM, ...) at cluster scale."""

__version__ = "0.1.0"


def load_pretrained(path, device="cpu"):
    """Rebuild an exported model (`alm export`) from its folder: config.yaml + model.safetensors."""
    from alm.export import load_pretrained as _load

    return _load(path, device)
