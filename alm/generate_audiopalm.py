"""`alm generate audiopalm EXPORT --task asr|ast|tts ...`: decoding with an exported AudioPaLM model.

    --task asr --audio A.wav [B.flac ...] --out HYPS.jsonl     one line {"id": file stem, "text": ...} per file
    --task ast --audio ... --out HYPS.jsonl                    the same, text in data.target_language
    --task tts --text "..." --soundstorm EXPORT --out Y.wav    semantic tokens from the LM, then SoundStorm + codec

The wav is tokenized with the export's semantic tokenizer (EXPORT/tokenizer/), the prompt is
[BOS] [tag] source (the training layout), and the LM decodes with transformers' generate (KV cache):
greedy, beam search (--decoding beam --beams N) or sampling (--decoding sample: --temperature,
--top-k, --top-p). Only the target modality may be generated: text ids + EOS for ASR, audio ids + EOS
for TTS (a logits mask; the EOS ends the output). The lines are what `alm eval text --task asr`
(or `--task translation`) reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from alm.errors import UserError

DECODINGS = ("greedy", "beam", "sample")


def add_arguments(p) -> None:
    p.add_argument("export_dir", help="an `alm export` of an audiopalm run")
    p.add_argument("--task", required=True, choices=("asr", "ast", "tts"))
    p.add_argument("--audio", nargs="+", default=None, help="asr / ast: recordings to transcribe or translate (any readable format)")
    p.add_argument("--text", default=None, help="tts: the text to speak")
    p.add_argument("--soundstorm", default=None, help="tts: a soundstorm export trained on the same semantic tokenizer")
    p.add_argument("--out", required=True, help="asr / ast: HYPS.jsonl; tts: a .wav / .flac / .ogg file")
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
        """(N,) bool: what the task may generate (the target modality and EOS)."""
        mask = torch.zeros(self.layout.total, dtype=torch.bool)
        ids = self.layout.audio_ids() if task == "tts" else self.layout.text_ids()
        mask[ids.start : ids.stop] = True
        mask[self.tokenizer.eos_token_id] = True
        return mask

    def semantic(self, path: str) -> np.ndarray:
        from alm.tokenizers.semantic import SemanticTokenizer

        tok_dir = self.path / "tokenizer"
        if not tok_dir.is_dir():
            raise UserError(f"{self.path}: no tokenizer/ (the semantic tokenizer travels with the export)")
        if not hasattr(self, "_semtok"):
            self._semtok = SemanticTokenizer.load(tok_dir, self.device)
        audio = read_audio(path, self._semtok.cfg.sample_rate)
        return self._semtok(audio).astype(np.int64)


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

    class Allowed(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.masked_fill(blocked.to(scores.device)[: scores.shape[-1]], float("-inf"))

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


def transcribe(ex: Export, audio_paths: list[str], task: str = "asr", **decoding) -> list[dict]:
    """[{"id": file stem, "text": ...}] for each recording (task asr: its transcript; ast: its translation)."""
    rows = []
    for path in audio_paths:
        units = ex.semantic(path)
        ids = decode(ex, task, ex.prompt(task, list(units + ex.layout.audio_start)), **decoding)
        rows.append({"id": Path(path).stem, "text": ex.tokenizer.decode(ids, skip_special_tokens=True).strip()})
    return rows


def speak(ex: Export, text: str, **decoding) -> np.ndarray:
    """Semantic ids (S,) the LM generates for `text`."""
    words = ex.tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(decode(ex, "tts", ex.prompt("tts", words), **decoding), dtype=np.int64)
    return ids - ex.layout.audio_start


def run(a) -> int:
    from alm.generate import check_out_path

    if a.task in ("asr", "ast"):
        if not a.audio:
            raise UserError(f"--task {a.task} needs --audio FILE [FILE ...]")
        check_out_path(a.out)
        for path in a.audio:
            if not Path(path).is_file():
                raise UserError(f"--audio {path}: no such file")
        stems = [Path(p).stem for p in a.audio]
        if len(set(stems)) != len(stems):
            raise UserError(f"--audio: two files share a stem (the hypothesis id): {sorted(stems)}")
    else:
        if not a.text or not a.soundstorm:
            raise UserError("--task tts needs --text \"...\" and --soundstorm EXPORT (semantic -> acoustic tokens)")
        from alm.generate import AUDIO_OUT, check_export, check_same_tokenizer

        check_out_path(a.out, suffixes=AUDIO_OUT)
        check_export(a.soundstorm, "soundstorm", "--soundstorm")
        check_same_tokenizer(a.export_dir, a.soundstorm, "--soundstorm")
    ex = Export(a.export_dir, a.device)
    decoding = dict(decoding=a.decoding, beams=a.beams, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                    max_new_tokens=a.max_new_tokens, min_new_tokens=a.min_new_tokens, seed=a.seed)
    if a.task in ("asr", "ast"):
        from alm.io import atomic_write_text

        rows = transcribe(ex, a.audio, a.task, **decoding)
        atomic_write_text(Path(a.out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        for r in rows:
            print(f"{r['id']}\t{r['text']}")
        print(f"[alm] wrote {len(rows)} hypotheses to {a.out}")
        return 0
    return _tts(ex, a, decoding)


def _tts(ex: Export, a, decoding: dict) -> int:
    from alm.export import load_config
    from alm.generate import soundstorm_codes, write_codes_audio

    semantic = speak(ex, a.text, **decoding)
    if semantic.size == 0:
        raise UserError(f"the LM produced no audio tokens for {a.text!r} (EOS first)")
    m = load_config(a.soundstorm).model
    if m.semantic_vocab != ex.layout.audio:
        raise UserError(f"--soundstorm {a.soundstorm} expects {m.semantic_vocab} semantic ids; {a.export_dir} has "
                        f"{ex.layout.audio} audio tokens")
    frames = max(1, int(round(len(semantic) / m.semantic_rate * m.frame_rate)))
    codes, _ = soundstorm_codes(a.soundstorm, semantic, frames, temperature=a.temperature, top_k=a.top_k,
                                seed=a.seed, device=a.device)
    n, rate = write_codes_audio(a.soundstorm, codes, a.out, a.device)
    print(f"[alm] {len(semantic)} semantic tokens -> {n / rate:.2f} s at {rate} Hz: {a.out}")
    return 0
