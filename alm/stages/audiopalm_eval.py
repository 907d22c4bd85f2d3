"""`alm eval run AUDIOPALM_EXPORT --task asr|ast|asr_ast --shards SPEC`: transcribe (or translate) every
held-out clip with the export, then score as `alm eval text` does (asr: jiwer WER/CER after --normalize;
ast: sacreBLEU BLEU / chrF on the raw text, signature in the config; asr_ast: one decoding per clip of
the combined task, split at data.separator, its transcript scored as asr and its translation as ast).

Each sample's audio is tokenized by the export's own semantic tokenizer (the one the LM was trained
on), so prep shards alone are enough. References: the prep json's `transcript` (asr) or
`translation` (ast); a clip without one is counted in config["no_reference"], never scored as empty.
`--save-hyps FILE` keeps the hypotheses as JSON lines ({"id", "text", "reference"}; asr_ast also
"transcript" and "transcript_reference").
"""

from __future__ import annotations

import json
from typing import Any

from alm.errors import UserError
from alm.stages.spec import EvalTask


def _arguments(task: str):
    def add(p) -> None:
        if task in ("asr", "asr_ast"):
            p.add_argument("--normalize", default="whisper_en", choices=("whisper_en", "basic", "none"))
        if task in ("ast", "asr_ast"):
            p.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer")
        p.add_argument("--decoding", choices=("greedy", "beam"), default="greedy")
        p.add_argument("--beams", type=int, default=4)
        p.add_argument("--max-new-tokens", type=int, default=0)
        p.add_argument("--save-hyps", default=None, metavar="FILE", help="also write the hypotheses as JSON lines")
        p.add_argument("--device", default="cpu")
    return add


def _reference(sample: dict[str, Any], field: str) -> str | None:
    try:
        meta = json.loads(sample["json"])
    except (KeyError, ValueError) as exc:
        raise UserError(f"sample {sample.get('__key__')!r}: no readable json member ({exc}): are these prep shards?") from None
    value = meta.get(field)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _score(task: str):
    def run(export_dir: str, spec: str, args) -> tuple[dict, int, dict]:
        import numpy as np

        from alm.data.audio import load_mono, shard_audio_ext
        from alm.eval.heldout import held_out_samples
        from alm.eval.text import asr_metrics, translation_metrics
        from alm.generate_audiopalm import Export, translate_units
        from alm.io import atomic_write_text

        ex = Export(export_dir, args.device)
        semtok = ex.semantic_tokenizer()
        report: dict = {"no_reference": 0}
        rows = []
        fields = {"asr": ("transcript",), "ast": ("translation",), "asr_ast": ("transcript", "translation")}[task]
        for sample in held_out_samples(spec, args.limit, report):
            refs = [_reference(sample, f) for f in fields]
            if None in refs:
                report["no_reference"] += 1
                continue
            ext = shard_audio_ext(sample)
            if ext is None:
                raise UserError(f"sample {sample['__key__']!r} has no audio member: evaluate on prep shards")
            units = semtok(load_mono(sample[ext], semtok.cfg.sample_rate)[0]).astype(np.int64)
            row = translate_units(ex, units, task, sample["__key__"], decoding=args.decoding, beams=args.beams,
                                  max_new_tokens=args.max_new_tokens)
            if task == "asr_ast":
                row["transcript_reference"] = refs[0]
            rows.append({**row, "reference": refs[-1]})
        if not rows:
            raise UserError(f"--shards {spec}: no held-out sample with a {' and a '.join(fields)}")
        if args.save_hyps:
            atomic_write_text(args.save_hyps, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        hyps, refs = [r["text"] for r in rows], [r["reference"] for r in rows]
        config = {"decoding": args.decoding, **report}
        if task == "asr":
            return asr_metrics(hyps, refs, args.normalize), len(rows), {**config, "normalize": args.normalize}
        scores, signatures = translation_metrics(hyps, [[r] for r in refs], args.tokenize)
        config = {**config, "tokenize": args.tokenize, "signature": signatures["bleu"],
                  "chrf_signature": signatures["chrf"]}
        if task == "asr_ast":  # the transcript's WER / CER beside the translation's BLEU / chrF
            asr = asr_metrics([r["transcript"] for r in rows], [r["transcript_reference"] for r in rows], args.normalize)
            scores = {**asr, **scores}
            config["normalize"] = args.normalize
        return scores, len(rows), config
    return run


EVAL_TASKS = (
    EvalTask("asr", "transcribe the held-out clips, WER / CER against their transcripts (jiwer)", _score("asr"),
             _arguments("asr")),
    EvalTask("ast", "translate the held-out clips, BLEU / chrF against their translations (sacreBLEU)", _score("ast"),
             _arguments("ast")),
    EvalTask("asr_ast", "transcribe and translate the held-out clips in one decoding (the combined task): WER / CER of "
             "the transcripts and BLEU / chrF of the translations", _score("asr_ast"), _arguments("asr_ast")),
)
