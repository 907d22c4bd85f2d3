"""`alm eval run MUSICGEN_EXPORT --task text_to_audio --shards SPEC`: generate audio from the captions of
held-out clips, then score it against those clips as `alm eval audio` does (FAD with --embedder, KLD
with --classifier, CLAP score with --clap-model: a transformers ClapModel or an alm CLAP export).

Each held-out clip with a caption gives one prompt (its first caption, in file order) and one
reference (its own audio, written as WORK/reference/<key>.wav); the generated wav for it is
WORK/generated/<key>.wav, so KLD pairs them by name and CLAP score scores each against its prompt
(WORK/captions.jsonl). WORK is --work-dir (default: beside --out). A clip without a caption is
counted in config["no_caption"], never prompted with an empty text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alm.errors import UserError
from alm.stages.spec import EvalTask


def add_arguments(p) -> None:
    p.add_argument("--embedder", default=None, help="FAD embedder (as alm eval audio: clap, encodec, vggish, panns, PATH)")
    p.add_argument("--embedder-model", default=None)
    p.add_argument("--classifier", default=None, help="KLD: an audio-classification model")
    p.add_argument("--clap-model", default=None, help="CLAP score: a transformers ClapModel or an alm CLAP export")
    p.add_argument("--seconds", type=float, default=0.0, help="seconds per generated clip (0: data.segment_seconds)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated at once")
    p.add_argument("--window-seconds", type=float, default=10.0)
    p.add_argument("--work-dir", default=None, help="where generated / reference wavs go (default: beside --out)")
    p.add_argument("--device", default="cpu")


def run(export_dir: str, spec: str, args) -> tuple[dict, int, dict]:
    import soundfile as sf

    from alm.data.audio import load_mono, shard_audio_ext
    from alm.eval import audio as eval_audio
    from alm.eval.heldout import held_out_samples
    from alm.export import load_config
    from alm.io import atomic_write_text
    from alm.stages.musicgen import captions_of
    from alm.stages.musicgen_generate import generate_musicgen

    if not (args.embedder or args.classifier or args.clap_model):
        raise UserError("--task text_to_audio: nothing to score: give --embedder (FAD), --classifier (KLD) "
                        "and/or --clap-model (CLAP score)")
    cfg = load_config(export_dir)
    seconds = args.seconds or float(cfg.data.segment_seconds)
    out = Path(getattr(args, "out", None) or "results.json")
    work = Path(args.work_dir) if args.work_dir else out.parent / f"{out.stem}-audio"
    ref_dir, gen_dir, tmp = work / "reference", work / "generated", work / ".generating"
    for d in (ref_dir, gen_dir):
        d.mkdir(parents=True, exist_ok=True)
    report: dict = {"no_caption": 0}
    rows = []
    for sample in held_out_samples(spec, args.limit, report):
        captions = captions_of(sample)
        ext = shard_audio_ext(sample)
        if ext is None:
            raise UserError(f"sample {sample['__key__']!r} has no audio member: evaluate on prep shards (the references)")
        if not captions:
            report["no_caption"] += 1
            continue
        audio, rate = load_mono(sample[ext])
        sf.write(ref_dir / f"{sample['__key__']}.wav", audio, rate, subtype="PCM_16")
        rows.append((sample["__key__"], captions[0]))
    if not rows:
        raise UserError(f"--shards {spec}: no held-out clip with a caption")
    r = generate_musicgen(export_dir, [c for _, c in rows], seconds, str(tmp), cfg_scale=args.cfg, top_k=args.top_k,
                          batch_size=args.batch_size, seed=args.seed, device=args.device, progress=False)
    for (key, _), wav in zip(rows, r["wavs"]):
        Path(wav).replace(gen_dir / f"{key}.wav")
    tmp.rmdir()  # emptied by the moves above
    captions_file = work / "captions.jsonl"
    atomic_write_text(captions_file, "".join(json.dumps({"id": k, "text": c}, ensure_ascii=False) + "\n" for k, c in rows))
    ns = argparse.Namespace(generated=str(gen_dir), reference=str(ref_dir), embedder=args.embedder,
                            embedder_model=args.embedder_model, generated_embeddings=None, reference_embeddings=None,
                            save_stats=None, reference_stats=None, classifier=args.classifier,
                            captions=str(captions_file) if args.clap_model else None, clap_model=args.clap_model,
                            window_seconds=args.window_seconds, batch_size=args.batch_size, device=args.device)
    metrics, n, config = eval_audio.score(ns)
    return metrics, n, {**config, **report, "seconds": seconds, "cfg": args.cfg, "top_k": args.top_k, "seed": args.seed,
                        "work_dir": str(work)}


EVAL_TASKS = (EvalTask("text_to_audio", "generate from the held-out clips' captions; FAD / KLD / CLAP score against "
                                        "those clips", run, add_arguments),)
