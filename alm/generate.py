"""Generation from exported models (the `alm generate` command).

AudioLM chain:  semantic LM  -> semantic tokens (sampled from BOS, or continuing a prompt's tokens)
                coarse LM    -> RVQ levels 0..Q'-1, window by window, conditioned on the semantic tokens
                fine LM      -> levels Q'..Q-1, window by window, conditioned on the coarse levels
                codec        -> waveform
Every AR stage samples with its KV cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alm.export import load_config, load_pretrained
from alm.tokenizers.semantic import special_tokens


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="tok", disable=not progress, leave=True)


def sample_semantic(
    export_dir: str,
    num_tokens: int,
    num: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
    prompt: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Sample `num` sequences of `num_tokens` semantic tokens (after the prompt's, if given) from BOS.

    Sequences longer than the model's context are generated with a sliding window: the last half
    of the context is kept as the prompt of the next chunk. -> (num, num_tokens) cluster ids.
    """
    cfg = load_config(export_dir)
    model = load_pretrained(export_dir, device)
    bos, eos = special_tokens(cfg.model.vocab_size)
    allowed = torch.ones(cfg.model.vocab_size, dtype=torch.bool, device=device)
    allowed[[bos, eos]] = False  # continue the stream: only cluster ids
    g = torch.Generator(device=device).manual_seed(seed)
    body = torch.as_tensor(np.asarray(prompt if prompt is not None else [], dtype=np.int64), device=device)
    body = body[None].repeat(num, 1)
    context = cfg.model.max_seq_len
    bar = _bar(num_tokens, "semantic", progress)
    produced = 0
    while produced < num_tokens:
        keep = body[:, -(context // 2) :] if body.size(1) + 1 >= context else body
        start = torch.cat([torch.full((num, 1), bos, dtype=torch.long, device=device), keep], dim=1)
        n = min(num_tokens - produced, context - start.size(1))
        out = model.generate(start, n, temperature, top_k, top_p, generator=g, allowed=allowed,
                             on_token=lambda i: bar.update(1))
        body = torch.cat([body, out[:, start.size(1) :]], dim=1)
        produced += n
    bar.close()
    return body[:, -num_tokens:].cpu().numpy()


def acoustic_codes(export_dir: str, condition: np.ndarray, frames: int, temperature: float, top_k: int, seed: int,
                   device: str = "cpu", progress: bool = False, known: np.ndarray | None = None) -> np.ndarray:
    """Run a coarse or fine export over `frames` codec frames with sliding windows.

    condition: semantic ids (S,) for a coarse export, coarse codes (Q', frames) for a fine one.
    known: target-level codes (target_levels, K) of the first K frames (e.g. a prompt's), kept as they are.
    Each window spans model.window_s; after the first, it overlaps the previous one by half a window
    whose codes are given after [SEP] as an acoustic prompt (teacher forcing, exactly the training
    format), so the acoustics continue across windows. -> codes (target_levels, frames).
    """
    cfg = load_config(export_dir)
    m = cfg.model
    model = load_pretrained(export_dir, device)
    lay, q, first = model.layout, m.target_levels, model.first_target_level
    g = torch.Generator(device=device).manual_seed(seed)
    per = m.frames(m.window_s)
    overlap = per // 2
    codes = np.zeros((q, frames), dtype=np.int64)
    done = 0
    if known is not None and known.shape[1]:
        done = min(frames, known.shape[1])
        codes[:, :done] = known[:q, :done]
    bar = _bar((frames - done) * q, cfg.stage, progress)
    while done < frames:
        start = max(0, done - overlap)
        end = min(frames, start + per)
        if m.semantic_vocab:
            s0, s1 = int(round(start / m.frame_rate * m.semantic_rate)), int(round(end / m.frame_rate * m.semantic_rate))
            prefix = model.prefix_ids(semantic=condition[s0:s1])
        else:
            prefix = model.prefix_ids(coarse=condition[:, start:end])
        prefix = np.concatenate([prefix, lay.flatten(codes[:, start:done], first_level=first)])
        p = torch.as_tensor(prefix, device=device)[None]
        allowed = lay.level_masks(first, q, end - done).to(device)
        ids = model.generate(p, (end - done) * q, temperature, top_k, generator=g, allowed=allowed,
                             on_token=lambda i: bar.update(1))
        codes[:, done:end] = lay.unflatten(ids[0, p.size(1) :], first, q).cpu().numpy()
        done = end
    bar.close()
    return codes


def prompt_codes(export_dir: str, wav: str, device: str = "cpu") -> np.ndarray:
    """Codec codes (all levels the codec has, (Q, T)) of a prompt recording, with an acoustic export's codec."""
    from alm.data.audio import load_mono
    from alm.tokenizers.codec import encode, load_codec

    codec = load_codec(codec_of(export_dir), device)
    audio, _ = load_mono(Path(wav).read_bytes(), int(codec.config.sampling_rate))
    return encode(codec, torch.as_tensor(audio)[None])[0].cpu().numpy()


def codec_of(export_dir: str) -> str:
    """The codec an acoustic export was trained on: its copied codec/ folder, else the configured name."""
    local = Path(export_dir) / "codec"
    if local.is_dir():
        return str(local)
    codec = load_config(export_dir).data.codec
    if not codec:
        raise ValueError(f"{export_dir}: no codec recorded (data.codec) — cannot decode to audio")
    return codec


def prompt_semantic(semantic_dir: str, wav: str, device: str = "cpu") -> np.ndarray:
    """Semantic tokens of a prompt recording, with the tokenizer exported beside the semantic LM."""
    from alm.data.audio import load_mono
    from alm.tokenizers.semantic import SemanticTokenizer

    tok = SemanticTokenizer.load(Path(semantic_dir) / "tokenizer", device)
    audio, _ = load_mono(Path(wav).read_bytes(), tok.cfg.sample_rate)
    return tok(audio).astype(np.int64)


def chain_semantic(semantic: str, semantic_rate: float, seconds: float, prompt_wav: str | None, temperature: float,
                   top_k: int, seed: int, device: str, progress: bool) -> np.ndarray:
    """The semantic tokens a chain renders: the prompt's (if any) followed by `seconds` of sampled ones."""
    prompt = prompt_semantic(semantic, prompt_wav, device) if prompt_wav else None
    sem = sample_semantic(semantic, int(round(seconds * semantic_rate)), 1, temperature, top_k, seed=seed,
                          device=device, prompt=prompt, progress=progress)[0]
    return np.concatenate([prompt, sem]) if prompt is not None else sem


def write_codes_audio(export_dir: str, codes: np.ndarray, out_wav: str, device: str = "cpu") -> tuple[int, int]:
    """Decode codes (Q, T) with the codec of an acoustic export and write a 16-bit wav -> (samples, rate)."""
    import soundfile as sf

    from alm.tokenizers.codec import decode, load_codec

    codec = load_codec(codec_of(export_dir), device)
    audio = decode(codec, torch.as_tensor(codes)[None])[0].cpu().numpy()
    rate = int(codec.config.sampling_rate)
    os.makedirs(os.path.dirname(os.path.abspath(out_wav)), exist_ok=True)
    sf.write(out_wav, audio, rate, subtype="PCM_16")
    return len(audio), rate


def generate_audiolm(semantic: str, coarse: str, fine: str, seconds: float, out_wav: str, prompt_wav: str | None = None,
                     temperature: float = 0.9, top_k: int = 0, seed: int = 0, device: str = "cpu",
                     progress: bool = True) -> dict:
    """semantic -> coarse -> fine -> codec: write `seconds` of audio (after the prompt, if any) to out_wav."""
    cc, fc = load_config(coarse).model, load_config(fine).model
    sem_vocab = load_config(semantic).model.vocab_size - 2
    if cc.semantic_vocab != sem_vocab:
        raise ValueError(f"coarse export expects {cc.semantic_vocab} semantic ids, the semantic export has {sem_vocab}")
    if fc.prefix_levels != cc.target_levels or fc.codebook_size != cc.codebook_size or fc.frame_rate != cc.frame_rate:
        raise ValueError("fine export does not continue the coarse export (levels, codebook size or frame rate differ)")
    sem = chain_semantic(semantic, cc.semantic_rate, seconds, prompt_wav, temperature, top_k, seed, device, progress)
    frames = int(round(len(sem) / cc.semantic_rate * cc.frame_rate))
    known = prompt_codes(coarse, prompt_wav, device) if prompt_wav else np.zeros((fc.prefix_levels + fc.target_levels, 0))
    known = known[:, :frames]  # the prompt's own codes: speaker and recording conditions carry over
    coarse_codes = acoustic_codes(coarse, sem, frames, temperature, top_k, seed + 1, device, progress,
                                  known=known[: cc.target_levels])
    fine_codes = acoustic_codes(fine, coarse_codes, frames, temperature, top_k, seed + 2, device, progress,
                                known=known[cc.target_levels : cc.target_levels + fc.target_levels])
    codes = np.concatenate([coarse_codes, fine_codes], axis=0)  # (Q, T)
    n, rate = write_codes_audio(coarse, codes, out_wav, device)
    return {"wav": out_wav, "seconds": n / rate, "sample_rate": rate, "semantic_tokens": len(sem), "codes": codes}


def soundstorm_codes(export_dir: str, semantic: np.ndarray, frames: int, steps: list[int] | None = None,
                     temperature: float = 1.0, top_k: int = 0, seed: int = 0, device: str = "cpu",
                     progress: bool = False, known: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """All RVQ levels for `frames` codec frames from semantic ids (S,), window by window.

    known: codes (Q, K) of the first K frames (a prompt's), kept. Each window is prompted with up to
    one second of the codes before it, so the acoustics continue across window boundaries.
    -> (codes (Q, frames), forward passes)."""
    from alm.models.acoustic_lm import semantic_per_frame

    cfg = load_config(export_dir)
    m = cfg.model
    model = load_pretrained(export_dir, device)
    g = torch.Generator(device=device).manual_seed(seed)
    per_frame = semantic_per_frame(np.asarray(semantic), frames, m.frame_rate, m.semantic_rate)
    window = int(round(m.window_s * m.frame_rate))
    overlap = min(int(round(m.frame_rate)), window // 2)
    codes = np.zeros((m.n_q, frames), dtype=np.int64)
    passes, f0 = 0, 0
    if known is not None and known.shape[1]:
        f0 = min(frames, known.shape[1])
        codes[:, :f0] = known[: m.n_q, :f0]
    bar = tqdm(total=frames - f0, desc="soundstorm", unit="frame", disable=not progress)
    while f0 < frames:
        p = min(overlap, f0)  # prompt frames from the previous window
        start, end = f0 - p, min(frames, f0 - p + window)
        sem = torch.as_tensor(per_frame[start:end], device=device)[None]
        prompt = torch.as_tensor(codes[:, start:f0], device=device)[None] if p else None
        out = model.generate(sem, steps_per_level=steps, temperature=temperature, top_k=top_k, prompt_codes=prompt,
                             generator=g)
        codes[:, f0:end] = out[0, :, p:].cpu().numpy()
        passes += model.last_forward_passes
        bar.update(end - f0)
        f0 = end
    bar.close()
    return codes, passes


def generate_soundstorm(semantic: str, soundstorm: str, seconds: float, out_wav: str, prompt_wav: str | None = None,
                        steps: list[int] | None = None, temperature: float = 0.9, top_k: int = 0, seed: int = 0,
                        device: str = "cpu", progress: bool = True) -> dict:
    """semantic LM -> SoundStorm (parallel decoding of all levels) -> codec: write a wav."""
    m = load_config(soundstorm).model
    sem_vocab = load_config(semantic).model.vocab_size - 2
    if m.semantic_vocab != sem_vocab:
        raise ValueError(f"SoundStorm export expects {m.semantic_vocab} semantic ids, the semantic export has {sem_vocab}")
    sem = chain_semantic(semantic, m.semantic_rate, seconds, prompt_wav, temperature, top_k, seed, device, progress)
    frames = int(round(len(sem) / m.semantic_rate * m.frame_rate))
    known = prompt_codes(soundstorm, prompt_wav, device)[:, :frames] if prompt_wav else None
    codes, passes = soundstorm_codes(soundstorm, sem, frames, steps, temperature, top_k, seed + 1, device, progress,
                                     known=known)
    n, rate = write_codes_audio(soundstorm, codes, out_wav, device)
    return {"wav": out_wav, "seconds": n / rate, "sample_rate": rate, "semantic_tokens": len(sem), "codes": codes,
            "forward_passes": passes}
