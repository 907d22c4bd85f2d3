"""`alm generate musicgen`: text (and melody) -> codes -> wav, from a musicgen export.

    alm generate musicgen EXPORT (--text "..." | --prompts FILE) [--melody WAV] --seconds S [--cfg 3.0]
        [--greedy | --temperature T --top-k K --top-p P] [--save-codes CODES.npy] --out OUT.wav|DIR

One prompt -> OUT.wav; several (a --prompts file, one prompt per line; blank lines are skipped) ->
DIR/000.wav, 001.wav, ... in prompt order. Prompts are generated --batch-size at a time: the frozen
T5 of the export (EXPORT/text_encoder, else model.text_encoder) encodes the batch's padded prompts,
the LM samples the codebook pattern's steps with its KV cache (self- and cross-attention) and
classifier-free guidance (`uncond + cfg * (cond - uncond)`, the null condition batched beside the
conditional rows; --cfg 1 turns it off), the pattern is undone into codes (B, K, T) and the export's
codec decodes them. --save-codes writes all prompts' codes (N, K, T) int64. Defaults are
MusicGen's: top-k 250, temperature 1, cfg 3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alm.errors import UserError

DEFAULT_TOP_K = 250  # MusicGen's sampling default (audiocraft, transformers' generation_config)


def read_prompts(text: str | None, prompts_file: str | None) -> list[str]:
    if text is not None:
        if not text.strip():
            raise UserError("--text: empty prompt")
        return [text]
    f = Path(prompts_file)
    if not f.is_file():
        raise UserError(f"--prompts {prompts_file}: no such file")
    prompts = [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts {prompts_file}: no prompts (one per line)")
    return prompts


def out_paths(out: str, n: int) -> list[Path]:
    """One prompt: OUT itself (a .wav/.flac/.ogg); several: OUT/000.wav ... (OUT a directory)."""
    from alm.generate import AUDIO_OUT, check_out_path

    if n == 1 and Path(out).suffix.lower() in AUDIO_OUT:
        check_out_path(out, suffixes=AUDIO_OUT)
        return [Path(out)]
    if Path(out).suffix.lower() in AUDIO_OUT:
        raise UserError(f"--out {out}: {n} prompts need a directory (they are written as DIR/000.wav ...)")
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    check_out_path(out)  # its parent must exist; the directory itself is made
    return [Path(out) / f"{i:03d}.wav" for i in range(n)]


@torch.no_grad()
def generate_codes(model, t5, pattern_name: str, prompts: list[str], frames: int, cfg_scale: float = 3.0,
                   temperature: float = 1.0, top_k: int = DEFAULT_TOP_K, top_p: float = 1.0,
                   melody: torch.Tensor | None = None, batch_size: int = 8, seed: int = 0,
                   progress: bool = True) -> torch.Tensor:
    """prompts -> codes (N, K, frames) int64, batch by batch, with the KV cache and guidance."""
    from tqdm import tqdm

    from alm.models.codebook_patterns import make_pattern

    K = model.cfg.codebooks
    pattern = make_pattern(pattern_name, K, frames)
    device = model.heads[0].weight.device
    g = torch.Generator(device=device).manual_seed(seed)
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    out = []
    with tqdm(total=len(batches) * (pattern.num_steps - 1), desc="musicgen", unit="step", disable=not progress) as bar:
        for chunk in batches:
            cond, mask = t5(chunk)
            mel = None if melody is None else melody.to(device)[None].expand(len(chunk), -1, -1)
            seq = model.generate(pattern.valid, cond.to(device, model.heads[0].weight.dtype), mask.to(device),
                                 melody=mel, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                                 top_p=top_p, generator=g, on_step=lambda s: bar.update(1))
            out.append(pattern.revert(seq).cpu())
    return torch.cat(out)


def generate_musicgen(export_dir: str, prompts: list[str], seconds: float, out: str, melody_wav: str | None = None,
                      cfg_scale: float = 3.0, temperature: float = 1.0, top_k: int = DEFAULT_TOP_K,
                      top_p: float = 1.0, save_codes: str | None = None, batch_size: int = 8, seed: int = 0,
                      device: str = "cpu", progress: bool = True) -> dict:
    """Everything `alm generate musicgen` does; -> {"wavs": [...], "codes": (N, K, T), "sample_rate"}."""
    from alm.conditioners.t5 import T5Conditioner
    from alm.export import load_pretrained
    from alm.convert_musicgen import text_encoder_of
    from alm.generate import check_export, check_out_path, codec_of, write_codes_audio
    from alm.models.sampling import check_sampling

    cfg = check_export(export_dir, "musicgen", "EXPORT")
    m = cfg.model
    check_sampling(temperature, top_k, top_p)
    if cfg_scale < 0:
        raise UserError(f"--cfg {cfg_scale}: must be >= 0 (1 = no guidance)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be >= 1")
    frames = int(round(seconds * m.frame_rate))
    if frames < 1:
        raise UserError(f"--seconds {seconds} is less than one codec frame at {m.frame_rate:g} Hz")
    if melody_wav and not m.melody_dim:
        raise UserError(f"--melody: {export_dir} is not a melody model (model.melody_dim = 0)")
    paths = out_paths(out, len(prompts))
    if save_codes:
        check_out_path(save_codes, "--save-codes", (".npy",))
    codec_of(export_dir)  # a codec to decode with, before any sampling
    melody = None
    if melody_wav:
        from alm.conditioners.chroma import chroma_of_file

        if not Path(melody_wav).is_file():
            raise UserError(f"--melody {melody_wav}: no such file")
        melody = chroma_of_file(melody_wav)
    model = load_pretrained(export_dir, device)
    t5 = T5Conditioner(text_encoder_of(export_dir, cfg), device=device, max_length=m.text_max_len)
    codes = generate_codes(model, t5, m.pattern, prompts, frames, cfg_scale, temperature, top_k, top_p, melody,
                           batch_size, seed, progress)
    if save_codes:
        from alm.data.shards import npy_bytes
        from alm.io import atomic_write_bytes

        atomic_write_bytes(Path(save_codes), npy_bytes(codes.numpy().astype(np.int64)))
    rate = 0
    for path, c in zip(paths, codes):
        _, rate = write_codes_audio(export_dir, c.numpy(), str(path), device)
    return {"wavs": [str(p) for p in paths], "codes": codes, "sample_rate": rate, "frames": frames}


def add_arguments(p) -> None:
    p.add_argument("export", metavar="EXPORT", help="a musicgen export (alm export of a musicgen run, or alm convert musicgen)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="one prompt")
    what.add_argument("--prompts", help="a file with one prompt per line")
    p.add_argument("--melody", default=None, help="a reference recording whose chroma conditions a melody model")
    p.add_argument("--seconds", type=float, required=True, help="seconds of audio per prompt")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--greedy", action="store_true", help="argmax at every step (no sampling)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--save-codes", default=None, help="also write the codes (N, K, T) int64 as .npy")
    p.add_argument("--out", required=True, help="OUT.wav for one prompt; a directory for several (DIR/000.wav ...)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(a) -> int:
    if a.greedy and (a.temperature != 1.0 or a.top_k != DEFAULT_TOP_K or a.top_p != 1.0):
        raise UserError("--greedy takes no --temperature / --top-k / --top-p")
    prompts = read_prompts(a.text, a.prompts)
    r = generate_musicgen(a.export, prompts, a.seconds, a.out, a.melody, a.cfg, 0.0 if a.greedy else a.temperature,
                          a.top_k, a.top_p, a.save_codes, a.batch_size, a.seed, a.device, not a.no_progress)
    K, T = r["codes"].shape[1:]
    for path in r["wavs"]:
        print(f"[alm] wrote {path}: {a.seconds:g} s at {r['sample_rate']} Hz (codes {K} x {T})")
    if a.save_codes:
        print(f"[alm] wrote {a.save_codes}: codes {tuple(r['codes'].shape)} int64")
    return 0
