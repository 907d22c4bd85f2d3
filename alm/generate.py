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

from alm.errors import UserError
from alm.export import load_config, load_pretrained, read_export_meta, weight_files
from alm.models.sampling import check_sampling
from alm.stages.semantic import clusters, condition_prefix
from alm.tokenizers.semantic import special_tokens

AUDIO_OUT = (".wav", ".flac", ".ogg")


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="tok", disable=not progress, leave=True)


# --------------------------------------------------------------------------------------------
# Checks of the exports and arguments, all made before any sampling


def check_export(path: str, stage: str, flag: str) -> object:
    """The export at `path` must be a `stage` export (a run dir or another stage's export -> UserError)."""
    cfg = load_config(path)
    weight_files(path)
    if cfg.stage != stage:
        raise UserError(f"{flag} {path}: this is a {cfg.stage} export; {flag} needs a {stage} export")
    return cfg


def check_out_path(path: str, flag: str = "--out", suffixes: tuple[str, ...] | None = None) -> None:
    """The output's folder must exist (and its suffix be one we can write)."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: the directory {parent} does not exist")
    if suffixes and Path(path).suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: expected a {' / '.join(suffixes)} file")


def read_prompt(path: str, sample_rate: int, flag: str = "--prompt") -> np.ndarray:
    """Mono audio of a recording given by `flag` at `sample_rate`; an unreadable file -> UserError naming it."""
    from alm.data.audio import load_mono

    f = Path(path)
    if not f.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        audio, _ = load_mono(f.read_bytes(), sample_rate)
    except ValueError as exc:
        raise UserError(f"{flag} {path}: cannot read it as audio ({exc}); use flac, wav, aiff, mp3, ogg, opus, m4a, aac or webm") from None
    if audio.size == 0:
        raise UserError(f"{flag} {path}: the recording is empty")
    return audio


def check_counts(seconds: float, rate: float, what: str = "semantic token") -> int:
    """--seconds -> a number of tokens at `rate` Hz, at least one."""
    if not seconds > 0:
        raise UserError(f"--seconds must be > 0, got {seconds}")
    n = int(round(seconds * rate))
    if n < 1:
        raise UserError(f"--seconds {seconds} is less than one {what} at {rate:g} Hz (at least {1 / rate:g} s)")
    return n


def _fingerprint(export_dir: str, key: str, field: str) -> str | None:
    entry = read_export_meta(export_dir).get(key) or {}
    return entry.get(field)


def check_same_tokenizer(semantic: str, other: str, flag: str) -> None:
    """The semantic export's k-means must be the one `other` was trained on (when both recorded)."""
    a, b = _fingerprint(semantic, "tokenizer", "fingerprint"), _fingerprint(other, "tokenizer", "fingerprint")
    if a and b and a != b:
        raise UserError(f"--semantic {semantic} and {flag} {other} were trained on different semantic tokenizers "
                        f"(k-means {a[:12]} vs {b[:12]}): their semantic ids mean different things; use exports "
                        "trained on the same token shards")


def check_same_codec(coarse: str, fine: str) -> None:
    """The fine export must continue the codes of the coarse export's codec (when both recorded)."""
    a, b = read_export_meta(coarse).get("codec") or {}, read_export_meta(fine).get("codec") or {}
    if a.get("files_sha256") and b.get("files_sha256"):
        same = a["files_sha256"] == b["files_sha256"]
    elif a.get("name") and b.get("name") and not (a.get("files_sha256") or b.get("files_sha256")):
        from alm.tokenizers.codec import CODEC_NAMES

        same = CODEC_NAMES.get(a["name"], a["name"]) == CODEC_NAMES.get(b["name"], b["name"])
    else:
        return
    if not same:
        raise UserError(f"--coarse {coarse} and --fine {fine} were trained on codes of different codecs "
                        f"({a.get('name')} vs {b.get('name')}): use exports of the same codec")


def check_coarse_fine(coarse: str, fine: str):
    """--coarse / --fine exports where the fine stage continues the coarse one (levels, codebook size,
    frame rate, codec) -> their model configs."""
    cc, fc = check_export(coarse, "coarse", "--coarse").model, check_export(fine, "fine", "--fine").model
    if fc.prefix_levels != cc.target_levels or fc.codebook_size != cc.codebook_size or fc.frame_rate != cc.frame_rate:
        raise UserError(f"--fine {fine} does not continue --coarse {coarse} (levels, codebook size or frame rate differ)")
    check_same_codec(coarse, fine)
    return cc, fc


def coarse_fine_codes(coarse: str, fine: str, semantic: np.ndarray, frames: int, known: np.ndarray, temperature: float,
                      top_k: int, seed: int, device: str = "cpu", progress: bool = False,
                      condition: np.ndarray | None = None) -> np.ndarray:
    """Semantic ids -> the coarse then the fine stage's codes (Q, frames); known: a prompt's own codes
    (Q, <= frames) the stages continue (its speaker and recording conditions carry over); condition:
    MuLan tokens of a conditioned coarse stage (MusicLM)."""
    cc, fc = load_config(coarse).model, load_config(fine).model
    coarse_codes = acoustic_codes(coarse, semantic, frames, temperature, top_k, seed + 1, device, progress,
                                  known=known[: cc.target_levels], mulan=condition)
    fine_codes = acoustic_codes(fine, coarse_codes, frames, temperature, top_k, seed + 2, device, progress,
                                known=known[cc.target_levels : cc.target_levels + fc.target_levels])
    return np.concatenate([coarse_codes, fine_codes], axis=0)


def _check_prompt_tokenizer(semantic: str, prompt_wav: str | None) -> None:
    if prompt_wav and not (Path(semantic) / "tokenizer").is_dir():
        raise UserError(f"--prompt needs the semantic tokenizer, and {semantic} has no tokenizer/ (was it trained "
                        "with data.tokenizer set?)")


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
    condition: np.ndarray | None = None,
) -> np.ndarray:
    """Sample `num` sequences of `num_tokens` semantic tokens (after the prompt's, if given) from BOS.

    Sequences longer than the model's context are generated with a sliding window: the last half
    of the context is kept as the prompt of the next chunk. A conditioned export (MusicLM) needs
    `condition`, its (L,) MuLan tokens, in front of every window. -> (num, num_tokens) cluster ids.
    """
    cfg = check_export(export_dir, "semantic", "export")
    if num_tokens < 1 or num < 1:
        raise UserError(f"--tokens and --num must be >= 1, got --tokens {num_tokens} --num {num}")
    check_sampling(temperature, top_k, top_p)
    if cfg.model.condition_levels and condition is None:
        raise UserError(f"{export_dir}: a conditioned semantic stage (MusicLM, model.condition_levels="
                        f"{cfg.model.condition_levels}): generate with `alm generate musiclm --text ...`")
    model = load_pretrained(export_dir, device)
    k = clusters(cfg.model)
    bos, eos = special_tokens(k + 2)
    allowed = torch.zeros(cfg.model.vocab_size, dtype=torch.bool, device=device)
    allowed[:k] = True  # continue the stream: only cluster ids (no BOS / EOS / condition ids)
    cond = torch.as_tensor(condition_prefix(cfg.model, condition), device=device)[None].repeat(num, 1)
    g = torch.Generator(device=device).manual_seed(seed)
    body = torch.as_tensor(np.asarray(prompt if prompt is not None else [], dtype=np.int64), device=device)
    body = body[None].repeat(num, 1)
    context = cfg.model.max_seq_len
    bar = _bar(num_tokens, "semantic", progress)
    produced = 0
    while produced < num_tokens:
        room = context - cond.size(1)  # the condition stays in front of every window
        keep = body[:, -(room // 2) :] if body.size(1) + 1 >= room else body
        start = torch.cat([cond, torch.full((num, 1), bos, dtype=torch.long, device=device), keep], dim=1)
        n = min(num_tokens - produced, context - start.size(1))
        out = model.generate(start, n, temperature, top_k, top_p, generator=g, allowed=allowed,
                             on_token=lambda i: bar.update(1))
        body = torch.cat([body, out[:, start.size(1) :]], dim=1)
        produced += n
    bar.close()
    return body[:, -num_tokens:].cpu().numpy()


def acoustic_codes(export_dir: str, condition: np.ndarray, frames: int, temperature: float, top_k: int, seed: int,
                   device: str = "cpu", progress: bool = False, known: np.ndarray | None = None,
                   mulan: np.ndarray | None = None) -> np.ndarray:
    """Run a coarse or fine export over `frames` codec frames with sliding windows.

    condition: semantic ids (S,) for a coarse export, coarse codes (Q', frames) for a fine one.
    known: target-level codes (target_levels, K) of the first K frames (e.g. a prompt's), kept as they are.
    mulan: the (L,) MuLan tokens in front of every window of a conditioned coarse export (MusicLM).
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
            prefix = model.prefix_ids(semantic=condition[s0:s1], condition=mulan)
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
    from alm.tokenizers.codec import encode, load_codec

    codec = load_codec(codec_of(export_dir), device)
    audio = read_prompt(wav, int(codec.config.sampling_rate))
    return encode(codec, torch.as_tensor(audio)[None])[0].cpu().numpy()


def codec_of(export_dir: str) -> str:
    """The codec an acoustic export was trained on: its copied codec/ folder, else data.codec."""
    from alm.export import bundled

    return bundled(export_dir, "codec", load_config(export_dir).data.codec, "data.codec")


def prompt_semantic(semantic_dir: str, wav: str, device: str = "cpu") -> np.ndarray:
    """Semantic tokens of a prompt recording, with the tokenizer exported beside the semantic LM."""
    from alm.tokenizers.semantic import SemanticTokenizer

    _check_prompt_tokenizer(semantic_dir, wav)
    tok = SemanticTokenizer.load(Path(semantic_dir) / "tokenizer", device)
    return tok(read_prompt(wav, tok.cfg.sample_rate)).astype(np.int64)


def chain_semantic(semantic: str, semantic_rate: float, seconds: float, prompt_wav: str | None, temperature: float,
                   top_k: int, seed: int, device: str, progress: bool, condition: np.ndarray | None = None) -> np.ndarray:
    """The semantic tokens a chain renders: the prompt's (if any) followed by `seconds` of sampled ones."""
    prompt = prompt_semantic(semantic, prompt_wav, device) if prompt_wav else None
    sem = sample_semantic(semantic, int(round(seconds * semantic_rate)), 1, temperature, top_k, seed=seed,
                          device=device, prompt=prompt, progress=progress, condition=condition)[0]
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


def _check_wav_request(semantic: str, acoustic: str, semantic_rate: float, frame_rate: float, seconds: float,
                       temperature: float, top_k: int, out_wav: str, prompt_wav: str | None) -> None:
    """What every semantic -> acoustic -> wav chain checks before sampling: at least one codec frame,
    sampling settings, the output path, the acoustic export's codec, a readable prompt of the same tokenizer."""
    if round(check_counts(seconds, semantic_rate) / semantic_rate * frame_rate) < 1:
        raise UserError(f"--seconds {seconds} is less than one codec frame at {frame_rate:g} Hz")
    check_sampling(temperature, top_k)
    check_out_path(out_wav, suffixes=AUDIO_OUT)
    codec_of(acoustic)
    if prompt_wav:
        _check_prompt_tokenizer(semantic, prompt_wav)
        read_prompt(prompt_wav, 16000)


def generate_audiolm(semantic: str, coarse: str, fine: str, seconds: float, out_wav: str, prompt_wav: str | None = None,
                     temperature: float = 0.9, top_k: int = 0, seed: int = 0, device: str = "cpu",
                     progress: bool = True) -> dict:
    """semantic -> coarse -> fine -> codec: write `seconds` of audio (after the prompt, if any) to out_wav."""
    for path, flag, stage in ((semantic, "--semantic", "semantic"), (coarse, "--coarse", "coarse")):
        if check_export(path, stage, flag).model.condition_levels:
            raise UserError(f"{flag} {path} is conditioned on MuLan tokens (MusicLM): use `alm generate musiclm --mulan "
                            "CLAP_EXPORT --text ...`")
    return _audiolm_chain(semantic, coarse, fine, seconds, out_wav, prompt_wav, temperature, top_k, seed, device, progress)


def _audiolm_chain(semantic: str, coarse: str, fine: str, seconds: float, out_wav: str, prompt_wav: str | None,
                   temperature: float, top_k: int, seed: int, device: str, progress: bool,
                   condition: np.ndarray | None = None) -> dict:
    """The AudioLM chain; condition: MuLan tokens (L,) for conditioned semantic and coarse exports (MusicLM)."""
    sc = check_export(semantic, "semantic", "--semantic").model
    cc, fc = check_coarse_fine(coarse, fine)
    sem_vocab = clusters(sc)
    if cc.semantic_vocab != sem_vocab:
        raise UserError(f"--coarse {coarse} expects {cc.semantic_vocab} semantic ids; --semantic {semantic} has {sem_vocab}")
    check_same_tokenizer(semantic, coarse, "--coarse")
    _check_wav_request(semantic, coarse, cc.semantic_rate, cc.frame_rate, seconds, temperature, top_k, out_wav, prompt_wav)
    sem = chain_semantic(semantic, cc.semantic_rate, seconds, prompt_wav, temperature, top_k, seed, device, progress,
                         condition=condition)
    frames = int(round(len(sem) / cc.semantic_rate * cc.frame_rate))
    known = prompt_codes(coarse, prompt_wav, device) if prompt_wav else np.zeros((fc.prefix_levels + fc.target_levels, 0))
    known = known[:, :frames]  # the prompt's own codes: speaker and recording conditions carry over
    codes = coarse_fine_codes(coarse, fine, sem, frames, known, temperature, top_k, seed, device, progress,
                              condition=condition)  # (Q, T)
    n, rate = write_codes_audio(coarse, codes, out_wav, device)
    return {"wav": out_wav, "seconds": n / rate, "sample_rate": rate, "semantic_tokens": len(sem), "codes": codes}


def mulan_text_tokens(mulan: str, stage_exports: list[tuple[str, str]], text: str, device: str = "cpu") -> np.ndarray:
    """MusicLM's generation-time conditioning: the MuLan/CLAP TEXT embedding of `text`, quantised with
    the MuLan tokenizer the stages were trained with (each export's condition_tokenizer/, fitted on
    AUDIO embeddings of the same CLAP export) -> (L,) ids. Every stage must hold the same tokenizer,
    fitted with this very CLAP export."""
    from alm.embed import load_encoder
    from alm.stages.lm import CONDITION_DIR
    from alm.tokenizers.mulan import MulanTokenizer, export_fingerprint

    want = export_fingerprint(mulan)
    tokenizers = []
    for path, flag in stage_exports:
        d = Path(path) / CONDITION_DIR
        if not d.is_dir():
            raise UserError(f"{flag} {path}: no {CONDITION_DIR}/ (not trained on MuLan tokens: model.condition_levels 0?)")
        tok = MulanTokenizer.load(d)
        if tok.meta.get("clap_fingerprint") != want:
            raise UserError(f"{flag} {path} was trained on MuLan tokens of another CLAP export "
                            f"({tok.meta.get('clap_export')}), not --mulan {mulan}")
        tokenizers.append(tok)
    if any(not np.array_equal(t.codebooks, tokenizers[0].codebooks) for t in tokenizers[1:]):
        raise UserError(f"{stage_exports[1][1]} {stage_exports[1][0]}: its MuLan tokenizer differs from "
                        f"{stage_exports[0][1]}'s (the stages must share one `alm tokenize mulan` run)")
    embedding = load_encoder(mulan, device).texts([text])
    return tokenizers[0](embedding)[0]


def generate_musiclm(mulan: str, semantic: str, coarse: str, fine: str, text: str, seconds: float, out_wav: str,
                     temperature: float = 0.9, top_k: int = 0, seed: int = 0, device: str = "cpu",
                     progress: bool = True) -> dict:
    """MusicLM: text -> MuLan tokens (CLAP text tower + RVQ) -> conditioned semantic -> conditioned
    coarse -> fine -> codec: write `seconds` of audio to out_wav."""
    for path, flag, stage in ((semantic, "--semantic", "semantic"), (coarse, "--coarse", "coarse")):
        if not check_export(path, stage, flag).model.condition_levels:
            raise UserError(f"{flag} {path} is not conditioned on MuLan tokens (model.condition_levels 0): "
                            "use `alm generate audiolm`")
    check_export(mulan, "clap", "--mulan")
    if not text.strip():
        raise UserError("--text is empty: MusicLM generates from a text prompt")
    tokens = mulan_text_tokens(mulan, [(semantic, "--semantic"), (coarse, "--coarse")], text, device)
    r = _audiolm_chain(semantic, coarse, fine, seconds, out_wav, None, temperature, top_k, seed, device, progress,
                       condition=tokens)
    return {**r, "mulan_tokens": tokens}


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
    sc = check_export(semantic, "semantic", "--semantic").model
    m = check_export(soundstorm, "soundstorm", "--soundstorm").model
    sem_vocab = clusters(sc)
    if m.semantic_vocab != sem_vocab:
        raise UserError(f"--soundstorm {soundstorm} expects {m.semantic_vocab} semantic ids; --semantic {semantic} has {sem_vocab}")
    check_same_tokenizer(semantic, soundstorm, "--soundstorm")
    if steps is not None and (len(steps) != m.n_q or min(steps) < 1):
        raise UserError(f"--steps: expected {m.n_q} comma-separated counts >= 1 (one per RVQ level), got {steps}")
    _check_wav_request(semantic, soundstorm, m.semantic_rate, m.frame_rate, seconds, temperature, top_k, out_wav,
                       prompt_wav)
    sem = chain_semantic(semantic, m.semantic_rate, seconds, prompt_wav, temperature, top_k, seed, device, progress)
    frames = int(round(len(sem) / m.semantic_rate * m.frame_rate))
    known = prompt_codes(soundstorm, prompt_wav, device)[:, :frames] if prompt_wav else None
    codes, passes = soundstorm_codes(soundstorm, sem, frames, steps, temperature, top_k, seed + 1, device, progress,
                                     known=known)
    n, rate = write_codes_audio(soundstorm, codes, out_wav, device)
    return {"wav": out_wav, "seconds": n / rate, "sample_rate": rate, "semantic_tokens": len(sem), "codes": codes,
            "forward_passes": passes}
