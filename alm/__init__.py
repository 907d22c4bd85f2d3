"""alm: train audio-language models (AudioLM, SoundStorm; MusicGen, MuLan/CLAP, AudioPaLM to come) at cluster scale."""

__version__ = "0.1.0"


def load_pretrained(path, device="cpu", dtype=None):
    """Rebuild an exported model (`alm export`) from its folder: config.yaml + safetensors weights
    (one file or the sharded layout), in the stored dtype unless `dtype` is given."""
    from alm.export import load_pretrained as _load

    return _load(path, device, dtype)
