"""`alm generate audiopalm EXPORT --task asr|ast|tts|s2st|asr_ast|asr_ast_s2st ...`: decoding with an exported
AudioPaLM model.

    --task asr --audio A.wav [B.flac ...] --out HYPS.jsonl     one line {"id": file stem, "text": ...} per file
    --task ast --audio ... --out HYPS.jsonl                    the same, text in data.target_language
    --task tts --text "..." --soundstorm EXPORT --out Y.wav    semantic tokens from the LM, then SoundStorm + codec
    --task s2st --audio A.wav --soundstorm EXPORT --out Y.wav  the target-language speech of A.wav
    --task asr_ast --audio ... --out HYPS.jsonl                lines {"id", "transcript", "text": the translation}
    --task asr_ast_s2st --audio ... --soundstorm EXPORT --out HYPS.jsonl [--wav-dir DIR]
                                                               the same lines + "wav": DIR/<id>.wav (default DIR:
                                                               HYPS's folder/<HYPS stem>-wav/)

Every audio output goes through SoundStorm (--soundstorm EXPORT) or AudioLM's coarse and fine stages
(--coarse C --fine F), trained on the same semantic tokenizer as the LM, then their codec. --voice
PROMPT.wav: a voice / acoustic prompt: its semantic tokens (the LM's tokenizer) and codec codes go in
front of the generated ones as the acoustic stages' known prefix, so the speaker and recording
conditions carry over; the prompt's own frames are cut from the output wav.

The wav is tokenized with the export's semantic tokenizer (EXPORT/tokenizer/), the prompt is
[BOS] [tag] source (the training layout), and the LM decodes with transformers' generate (KV cache):
greedy, beam search (--decoding beam --beams N) or sampling (--decoding sample: --temperature,
--top-k, --top-p). Only the target modality may be generated (a logits mask; the EOS ends the
output): text ids + EOS for asr / ast / asr_ast, audio ids + EOS for tts / s2st; asr_ast_s2st: text
or audio ids until the first audio id, then audio ids + EOS. The combined tasks' text is split at
the first occurrence of data.separator's ids (the training layout, alm/stages/audiopalm.py). The
lines are what `alm eval text --task asr` (or `--task translation`) reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from alm.errors import UserError

DECODINGS = ("greedy", "beam", "sample")
TEXT_TASKS = ("asr", "ast", "asr_ast")  # audio in, text out (HYPS.jsonl)
AUDIO_IN = ("asr", "ast", "s2st", "asr_ast", "asr_ast_s2st")
SPEAKING = ("tts", "s2st", "asr_ast_s2st")  # need an acoustic stage


def add_arguments(p) -> None:
    p.add_argument("export_dir", help="an `alm export` of an audiopalm run")
    p.add_argument("--task", required=True, choices=("asr", "ast", "tts", "s2st", "asr_ast", "asr_ast_s2st"))
    p.add_argument("--audio", nargs="+", default=None, help="asr / ast / s2st / asr_ast / asr_ast_s2st: recordings to "
                   "transcribe or translate (any readable format; s2st: one)")
    p.add_argument("--text", default=None, help="tts: the text to speak")
    p.add_argument("--soundstorm", default=None, help="tts / s2st / asr_ast_s2st: a soundstorm export trained on the "
                   "same semantic tokenizer")
    p.add_argument("--coarse", default=None, help="instead of --soundstorm: AudioLM's coarse export (with --fine)")
    p.add_argument("--fine", default=None, help="instead of --soundstorm: AudioLM's fine export (with --coarse)")
    p.add_argument("--voice", default=None, help="a voice / acoustic prompt recording for the acoustic stages")
    p.add_argument("--out", required=True, help="asr / ast / asr_ast / asr_ast_s2st: HYPS.jsonl; tts / s2st: a "
                   ".wav / .flac / .ogg file")
    p.add_argument("--wav-dir", default=None, help="asr_ast_s2st: where <id>.wav go (default: <out stem>-wav/ "
                   "beside --out)")
    p.add_argument("--decoding", choices=DECODINGS, default="greedy")
    p.add_argument("--beams", type=int, default=4, help="beam search width (--decoding beam)")
    p.add_argument("--temperature", type=float, default=1.0, help="--decoding sample")
    p.add_argument("--top-k", type=int, default=0, help="--decoding sample: 0 = all tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="--decoding sample")
    p.add_argument("--max-new-tokens", type=int, default=0, help="0: up to the LM's context")
    p.add_argument("--min-new-tokens", type=int, default=0, help="EOS is not allowed before this many tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


class Export:
    """An exported AudioPaLM model: the LM (rebuilt from config.yaml), its extended tokenizer, its layout."""

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import AutoTokenizer

        from alm.export import load_pretrained
        from alm.generate import check_export
        from alm.models.audiopalm import layout_of, lm_config

        self.path = Path(path)
        self.cfg = check_export(path, "audiopalm", "export")
        self.layout = layout_of(self.cfg.model)
        hf_dir = self.path / "transformers"
        if not (hf_dir / "tokenizer_config.json").is_file():
            raise UserError(f"{path}: no transformers/ tokenizer inside (exported before the stage wrote one?)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        self.model = load_pretrained(path, device)
        self.device = device
        config = lm_config(self.cfg.model)
        self.context = int(config.get("max_position_embeddings") or config.get("n_positions") or self.cfg.data.max_len)

    def tag(self, task: str) -> int:
        from alm.stages.audiopalm import task_tag

        return self.layout.tag_id(task_tag(self.cfg.data, task))

    def prompt(self, task: str, source: list[int]) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + [self.tag(task)] + list(source)

    def allowed(self, task: str) -> torch.Tensor:
        """(N,) bool: what the task may generate (the target modality and EOS; asr_ast_s2st: both modalities,
        narrowed to audio once an audio id came: see decode)."""
        mask = torch.zeros(self.layout.total, dtype=torch.bool)
        for ids in ([self.layout.audio_ids()] if task in ("tts", "s2st") else [self.layout.text_ids()] +
                    ([self.layout.audio_ids()] if task == "asr_ast_s2st" else [])):
            mask[ids.start : ids.stop] = True
        mask[self.tokenizer.eos_token_id] = True
        return mask

    def separator_ids(self) -> list[int]:
        from alm.stages.audiopalm import AudioPalmDataConfig

        sep = getattr(self.cfg.data, "separator", AudioPalmDataConfig.separator)
        return self.tokenizer.encode(sep, add_special_tokens=False)

    def semantic_tokenizer(self):
        """The export's semantic tokenizer (EXPORT/tokenizer/, the LM's own), loaded once."""
        from alm.tokenizers.semantic import SemanticTokenizer

        if not hasattr(self, "_semtok"):
            tok_dir = self.path / "tokenizer"
            if not tok_dir.is_dir():
                raise UserError(f"{self.path}: no tokenizer/ (the semantic tokenizer travels with the export)")
            self._semtok = SemanticTokenizer.load(tok_dir, self.device)
        return self._semtok

    def semantic(self, path: str) -> np.ndarray:
        """A recording's semantic ids (S,)."""
        tok = self.semantic_tokenizer()
        return tok(read_audio(path, tok.cfg.sample_rate)).astype(np.int64)


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    from alm.generate import read_prompt

    return read_prompt(path, sample_rate, "--audio")


def decode(ex: Export, task: str, prompt: list[int], decoding: str = "greedy", beams: int = 4,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, max_new_tokens: int = 0,
           min_new_tokens: int = 0, seed: int = 0) -> list[int]:
    """The generated ids after `prompt` (EOS dropped), restricted to the task's target modality."""
    from transformers import LogitsProcessor, LogitsProcessorList

    if decoding not in DECODINGS:
        raise UserError(f"--decoding {decoding!r}: expected one of {', '.join(DECODINGS)}")
    room = ex.context - len(prompt)
    if room < 1:
        raise UserError(f"the prompt has {len(prompt)} tokens: no room left in the LM's context of {ex.context}")
    n = room if max_new_tokens <= 0 else min(max_new_tokens, room)
    blocked = ~ex.allowed(task)
    speech_only = ~ex.allowed("s2st")  # asr_ast_s2st after its first audio id: audio ids + EOS
    start, audio = len(prompt), ex.layout.audio_ids()

    class Allowed(LogitsProcessor):
        def __call__(self, input_ids, scores):
            mask = blocked.to(scores.device)[None].expand(scores.shape[0], -1)
            if task == "asr_ast_s2st":
                out = input_ids[:, start:]
                spoke = ((out >= audio.start) & (out < audio.stop)).any(dim=1)  # (B,)
                mask = torch.where(spoke[:, None], speech_only.to(scores.device)[None], mask)
            return scores.masked_fill(mask[:, : scores.shape[-1]], float("-inf"))

    eos = ex.tokenizer.eos_token_id
    kwargs = dict(max_new_tokens=n, min_new_tokens=min(max(0, min_new_tokens), n), eos_token_id=eos, pad_token_id=eos,
                  logits_processor=LogitsProcessorList([Allowed()]), use_cache=True)
    if decoding == "greedy":
        kwargs.update(do_sample=False, num_beams=1)
    elif decoding == "beam":
        kwargs.update(do_sample=False, num_beams=max(1, beams))
    else:
        from alm.models.sampling import check_sampling

        check_sampling(temperature, top_k, top_p)
        kwargs.update(do_sample=True, temperature=temperature, top_k=top_k or None, top_p=top_p)
    torch.manual_seed(seed)
    x = torch.as_tensor([prompt], dtype=torch.long, device=ex.device)
    with torch.no_grad():
        out = ex.model.generate(x, attention_mask=torch.ones_like(x), **kwargs)[0, x.shape[1]:].tolist()
    eos = ex.tokenizer.eos_token_id
    return out[: out.index(eos)] if eos in out else out


def split_combined(ids: list[int], separator: list[int], audio_start: int) -> tuple[list[int], list[int], list[int]]:
    """A combined task's output ids -> (transcript ids, translation ids, audio ids): the text ends at the
    first audio id (>= audio_start); it splits at the first occurrence of the separator's ids (none: all
    of it is the transcript, the translation empty)."""
    cut = next((i for i, t in enumerate(ids) if t >= audio_start), len(ids))
    text, speech = ids[:cut], ids[cut:]
    n = len(separator)
    at = next((i for i in range(len(text) - n + 1) if n and text[i : i + n] == separator), None)
    if at is None:
        return text, [], speech
    return text[:at], text[at + n :], speech


def translate(ex: Export, path: str, task: str, **decoding) -> dict:
    """One recording -> translate_units's row, its id the file stem."""
    return translate_units(ex, ex.semantic(path), task, Path(path).stem, **decoding)


def translate_units(ex: Export, units: np.ndarray, task: str, key: str, **decoding) -> dict:
    """A recording's semantic ids -> {"id": key, "text": ...} (asr: the transcript; ast: the translation),
    for the combined tasks also "transcript" ("text" is then the translation), and "semantic" (the
    target speech's semantic ids, an array) for s2st / asr_ast_s2st."""
    ids = decode(ex, task, ex.prompt(task, list(units + ex.layout.audio_start)), **decoding)
    text = lambda t: ex.tokenizer.decode(t, skip_special_tokens=True).strip()  # noqa: E731
    row: dict = {"id": key}
    if task == "s2st":
        row["semantic"] = np.asarray(ids, dtype=np.int64) - ex.layout.audio_start
    elif task in ("asr_ast", "asr_ast_s2st"):
        transcript, translation, speech = split_combined(ids, ex.separator_ids(), ex.layout.audio_start)
        row.update(transcript=text(transcript), text=text(translation))
        if task == "asr_ast_s2st":
            row["semantic"] = np.asarray(speech, dtype=np.int64) - ex.layout.audio_start
    else:
        row["text"] = text(ids)
    return row


def transcribe(ex: Export, audio_paths: list[str], task: str = "asr", **decoding) -> list[dict]:
    """[{"id": file stem, "text": ...}] for each recording (task asr: its transcript; ast: its translation;
    asr_ast: "transcript" and "text" = the translation)."""
    return [translate(ex, path, task, **decoding) for path in audio_paths]


def speak(ex: Export, text: str, **decoding) -> np.ndarray:
    """Semantic ids (S,) the LM generates for `text`."""
    words = ex.tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(decode(ex, "tts", ex.prompt("tts", words), **decoding), dtype=np.int64)
    return ids - ex.layout.audio_start


def check_acoustic(a, export_dir: str) -> None:
    """--soundstorm EXPORT or --coarse C --fine F: the stages exist, share the LM's semantic tokenizer and
    continue each other; --voice is readable; all before any decoding."""
    from alm.generate import check_coarse_fine, check_export, check_same_tokenizer, codec_of, read_prompt

    if bool(a.soundstorm) == bool(a.coarse or a.fine) or bool(a.coarse) != bool(a.fine):
        raise UserError(f"--task {a.task} needs --soundstorm EXPORT or --coarse EXPORT --fine EXPORT (semantic -> "
                        "acoustic tokens), one of the two")
    if a.soundstorm:
        check_export(a.soundstorm, "soundstorm", "--soundstorm")
        check_same_tokenizer(export_dir, a.soundstorm, "--soundstorm")
        codec_of(a.soundstorm)
    else:
        cc, _ = check_coarse_fine(a.coarse, a.fine)
        if cc.condition_levels:
            raise UserError(f"--coarse {a.coarse} is conditioned on MuLan tokens (MusicLM): not a speech stage")
        check_same_tokenizer(export_dir, a.coarse, "--coarse")
        codec_of(a.coarse)
    if a.voice:
        read_prompt(a.voice, 16000, "--voice")


def speech_to_wav(ex: Export, a, semantic: np.ndarray, out_wav: str) -> float:
    """Semantic ids (S,) -> the acoustic stages (--soundstorm, or --coarse then --fine) -> codec -> out_wav.
    With --voice, its semantic ids and codes are the known prefix and its frames are cut from the output.
    -> seconds written."""
    from alm.export import load_config
    from alm.generate import coarse_fine_codes, prompt_codes, soundstorm_codes, write_codes_audio

    if semantic.size == 0:
        raise UserError("the LM produced no audio tokens (EOS first): try --min-new-tokens N")
    stage = a.soundstorm or a.coarse
    m = load_config(stage).model
    if m.semantic_vocab != ex.layout.audio:
        raise UserError(f"{'--soundstorm' if a.soundstorm else '--coarse'} {stage} expects {m.semantic_vocab} semantic "
                        f"ids; {ex.path} has {ex.layout.audio} audio tokens")
    prompt_sem = ex.semantic(a.voice) if a.voice else np.zeros(0, dtype=np.int64)
    sem = np.concatenate([prompt_sem, semantic])
    frames = max(1, int(round(len(sem) / m.semantic_rate * m.frame_rate)))
    known = prompt_codes(stage, a.voice, a.device) if a.voice else np.zeros((0, 0), dtype=np.int64)
    skip = min(known.shape[1], int(round(len(prompt_sem) / m.semantic_rate * m.frame_rate)), frames - 1)
    known = known[:, :skip]
    if a.soundstorm:
        codes, _ = soundstorm_codes(a.soundstorm, sem, frames, temperature=a.temperature, top_k=a.top_k, seed=a.seed,
                                    device=a.device, known=known if skip else None)
    else:
        codes = coarse_fine_codes(a.coarse, a.fine, sem, frames, known, a.temperature, a.top_k, a.seed, a.device)
    n, rate = write_codes_audio(stage, codes[:, skip:], out_wav, a.device)
    return n / rate


def run(a) -> int:
    from alm.generate import AUDIO_OUT, check_out_path

    if a.task in AUDIO_IN:
        if not a.audio:
            raise UserError(f"--task {a.task} needs --audio FILE" + ("" if a.task == "s2st" else " [FILE ...]"))
        if a.task == "s2st" and len(a.audio) != 1:
            raise UserError(f"--task s2st writes one --out wav: give one --audio file, not {len(a.audio)} "
                            "(several: --task asr_ast_s2st writes one wav per file)")
        for path in a.audio:
            if not Path(path).is_file():
                raise UserError(f"--audio {path}: no such file")
        stems = [Path(p).stem for p in a.audio]
        if len(set(stems)) != len(stems):
            raise UserError(f"--audio: two files share a stem (the hypothesis id): {sorted(stems)}")
    elif not a.text:
        raise UserError("--task tts needs --text \"...\" and --soundstorm EXPORT (or --coarse C --fine F)")
    check_out_path(a.out, suffixes=AUDIO_OUT if a.task in ("tts", "s2st") else None)
    if a.task in SPEAKING:
        check_acoustic(a, a.export_dir)
    elif a.soundstorm or a.coarse or a.fine or a.voice:
        raise UserError(f"--task {a.task} writes text: --soundstorm / --coarse / --fine / --voice are for "
                        f"{', '.join(SPEAKING)}")
    ex = Export(a.export_dir, a.device)
    decoding = dict(decoding=a.decoding, beams=a.beams, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                    max_new_tokens=a.max_new_tokens, min_new_tokens=a.min_new_tokens, seed=a.seed)
    if a.task == "tts":
        semantic = speak(ex, a.text, **decoding)
        seconds = speech_to_wav(ex, a, semantic, a.out)
        print(f"[alm] {len(semantic)} semantic tokens -> {seconds:.2f} s: {a.out}")
        return 0
    if a.task == "s2st":
        row = translate(ex, a.audio[0], "s2st", **decoding)
        seconds = speech_to_wav(ex, a, row["semantic"], a.out)
        print(f"[alm] {len(row['semantic'])} semantic tokens -> {seconds:.2f} s: {a.out}")
        return 0
    from alm.io import atomic_write_text

    rows = transcribe(ex, a.audio, a.task, **decoding)
    if a.task == "asr_ast_s2st":
        out = Path(a.out)
        wav_dir = Path(a.wav_dir) if a.wav_dir else out.parent / f"{out.stem}-wav"
        wav_dir.mkdir(parents=True, exist_ok=True)
        for r in rows:
            r["wav"] = str(wav_dir / f"{r['id']}.wav")
            r["seconds"] = round(speech_to_wav(ex, a, r.pop("semantic"), r["wav"]), 3)
    atomic_write_text(Path(a.out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for r in rows:
        print("\t".join([r["id"], *([r["transcript"]] if "transcript" in r else []), r["text"]]))
    print(f"[alm] wrote {len(rows)} hypotheses to {a.out}")
    return 0
