"""Zero-shot audio classification by a CLAP export: each class is the text embedding of a prompt.

    alm eval zeroshot EXPORT --shards SPEC --labels FILE [--template "the sound of {label}"] [--label-key KEY]

FILE: one class label per line (blank lines skipped; a label twice is an error). Each label becomes
the prompt `--template` with {label} replaced, embedded by the export's text tower (alm/embed.py);
each clip of SPEC (a directory: its test split, else validation; a glob: every sample it matches) is
embedded by the audio tower and scored against every prompt by cosine similarity. The true class
of a clip is its json's `--label-key` (dots reach into nested objects: the synthetic set keeps its
class at `metadata.kind`); a clip whose label is not in FILE, or that has no such key, is an error
naming it (no clip is dropped silently). Metrics (alm.eval.retrieval.zeroshot_accuracy): top1, and
top5 when there are more than 5 classes, as fractions; a tie with the true class counts as a miss.

results.json: {"task": "zeroshot", "metrics": {"top1", "top5"}, "n": clips, "config": {"labels",
"template", "label_key", "n_classes", "per_class": {label: clips}, ...}}. The same task runs as
`alm eval run EXPORT --task zeroshot --shards SPEC --labels FILE` (stage clap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alm.errors import UserError
from alm.eval.results import add_report_arguments

NAME = "zeroshot"
HELP = "zero-shot classification of a CLAP export on shards: top-1 / top-5 accuracy of label prompts"
TEMPLATE = "the sound of {label}"
LABEL_KEY = "label"


def task_arguments(p) -> None:
    p.add_argument("--labels", required=True, metavar="FILE", help="class labels, one per line")
    p.add_argument("--template", default=TEMPLATE, help="the prompt of a class; {label} is replaced by its label")
    p.add_argument("--label-key", default=LABEL_KEY,
                   help="the json key of a clip's class (dotted for nested keys; the synthetic set: metadata.kind)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward")


def add_arguments(p) -> None:
    p.add_argument("export", metavar="EXPORT", help="a CLAP export (alm export of a clap run, or alm convert clap)")
    p.add_argument("--shards", required=True, metavar="SPEC",
                   help="prep shards (a directory: its test split, else validation; a glob: every sample it matches)")
    task_arguments(p)
    add_report_arguments(p)


def read_labels(path: str) -> list[str]:
    if not Path(path).is_file():
        raise UserError(f"--labels {path}: no such file")
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise UserError(f"--labels {path}: no labels (expected one class label per line)")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise UserError(f"--labels {path}: label(s) listed twice: {', '.join(twice)}")
    return labels


def prompts(labels: list[str], template: str) -> list[str]:
    if "{label}" not in template:
        raise UserError(f"--template {template!r}: must contain {{label}}")
    return [template.replace("{label}", label) for label in labels]


def label_of(meta: dict[str, Any], key: str) -> Any:
    """meta's value at a dotted key, or KeyError."""
    value: Any = meta
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def export_zeroshot(export: str, spec: str, labels_file: str, template: str = TEMPLATE, label_key: str = LABEL_KEY,
                    batch_size: int = 16, limit: int = 0) -> tuple[dict, int, dict]:
    """Zero-shot accuracy of a CLAP export on the clips of `spec` -> (metrics, clips, config)."""
    from alm.embed import load_encoder
    from alm.eval.heldout import embed_clips, heldout_shards
    from alm.eval.retrieval import zeroshot_accuracy

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be >= 1")
    labels = read_labels(labels_file)
    texts = prompts(labels, template)
    urls = heldout_shards(spec, evaluation=True)
    index = {label: i for i, label in enumerate(labels)}
    truth: list[int] = []

    def keep(clip) -> bool:  # every clip is kept; its class is checked before its audio is decoded
        try:
            value = label_of(clip.meta, label_key)
        except KeyError:
            raise UserError(f"{clip.url}: sample {clip.key!r} has no {label_key!r} in its json (keys: "
                            f"{', '.join(sorted(clip.meta))}); name the class key with --label-key "
                            "(the synthetic set: metadata.kind)") from None
        if not isinstance(value, str) or value not in index:
            raise UserError(f"{clip.url}: sample {clip.key!r} has {label_key}={value!r}, which is not a label of "
                            f"{labels_file} ({', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''})")
        truth.append(index[value])
        return True

    encoder = load_encoder(export)
    audio, kept, _ = embed_clips(encoder, urls, keep=keep, batch_size=batch_size, limit=limit)
    if not kept:
        raise UserError(f"--shards {spec}: no clips in {len(urls)} shard(s)")
    truth = truth[: len(kept)]
    scores = audio @ encoder.texts(texts).T  # (n_clips, n_classes) cosine similarities
    metrics = zeroshot_accuracy(scores, truth)
    counts = np.bincount(np.asarray(truth), minlength=len(labels))
    config = {"export": export, "shards": spec, "n_shards": len(urls), "labels": labels_file, "template": template,
              "label_key": label_key, "n_classes": len(labels),
              "per_class": {label: int(c) for label, c in zip(labels, counts)}, "similarity": "cosine",
              "audio": encoder.description}
    return metrics, len(kept), config


def task_run(export: str, spec: str, args) -> tuple[dict, int, dict]:
    """The clap stage's `zeroshot` task of `alm eval run` (alm/stages/spec.py EvalTask)."""
    return export_zeroshot(export, spec, args.labels, args.template, args.label_key, args.batch_size,
                           getattr(args, "limit", 0))


def run(a) -> int:
    from alm.eval.results import report, results

    if not Path(a.export).is_dir():
        raise UserError(f"{a.export}: no such export directory")
    metrics, n, config = export_zeroshot(a.export, a.shards, a.labels, a.template, a.label_key, a.batch_size)
    report(results(NAME, metrics, n, config), a.out, a.run)
    return 0
