"""Text tokenizer: a sentencepiece model trained on the captions/transcripts of a shard set.

`train_text_tokenizer` reads every caption of every sample (`captions` list, `caption`,
`transcript` or `text` in the `json` member), trains sentencepiece and writes

    out_dir/spm.model, out_dir/spm.vocab    the sentencepiece model
    out_dir/text_tokenizer.json             vocab size, special ids, training settings, source

The json is written last, so its presence means the model is complete. Special ids are fixed:
pad=0, unk=1, bos=2, eos=3. Training is deterministic for the same input (fixed seed, input
order kept, one thread by default).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_FILE = "spm.model"
META_FILE = "text_tokenizer.json"
TEXT_FIELDS = ("captions", "caption", "transcript", "text")


class TextTokenizer:
    """A loaded sentencepiece model: `encode(str) -> list[int]`, `decode(ids) -> str`.

    Picklable (DataLoader workers get a copy of the model)."""

    def __init__(self, model_file: str | os.PathLike):
        import sentencepiece as spm

        self.model_file = str(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        self.vocab_size = int(self.sp.get_piece_size())
        self.pad_id = int(self.sp.pad_id())
        self.unk_id = int(self.sp.unk_id())
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """text -> token ids, optionally wrapped in bos/eos."""
        ids = self.sp.encode(text, out_type=int)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """token ids -> text; pad/bos/eos and negative (padding) ids are dropped."""
        drop = {self.pad_id, self.bos_id, self.eos_id}
        return self.sp.decode([int(i) for i in ids if int(i) >= 0 and int(i) not in drop])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"TextTokenizer({self.model_file!r}, vocab_size={self.vocab_size})"


def load_text_tokenizer(path_or_dir: str | os.PathLike) -> TextTokenizer:
    """Load `spm.model` from a directory written by `train_text_tokenizer`, or a .model file."""
    path = Path(os.path.expanduser(str(path_or_dir)))
    model = path / MODEL_FILE if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(f"no sentencepiece model at {model} (train one with `alm tokenize text`)")
    return TextTokenizer(model)


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def sample_texts(meta: dict[str, Any]) -> list[str]:
    """All non-empty texts of one sample's json: every caption, the transcript, ..."""
    out: list[str] = []
    for field in TEXT_FIELDS:
        value = meta.get(field)
        values = value if isinstance(value, list) else [value]
        out.extend(t for t in (_clean(v) for v in values if isinstance(v, str)) if t)
    return out


def iter_texts(shards_spec, stats: dict[str, int] | None = None) -> Iterator[str]:
    """Texts of every sample of the shards, in shard and sample order. Samples without a json
    member, or with unreadable json, are skipped with a warning (counted in `stats`)."""
    from alm.data.shards import expand_shards, read_shard

    stats = stats if stats is not None else {}
    for key in ("samples", "texts", "skipped"):
        stats.setdefault(key, 0)
    for url in expand_shards(shards_spec):
        for sample in read_shard(url):
            stats["samples"] += 1
            try:
                meta = json.loads(sample["json"])
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                log.warning("%s:%s: no usable json member (%s)", url, sample.get("__key__"), exc)
                stats["skipped"] += 1
                continue
            for text in sample_texts(meta):
                stats["texts"] += 1
                yield text


def train_text_tokenizer(
    shards_spec,
    out_dir: str | os.PathLike,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    byte_fallback: bool = False,
    num_threads: int = 1,
    seed: int = 0,
) -> TextTokenizer:
    """Train sentencepiece on the captions/transcripts of `shards_spec`; write `out_dir/spm.model`,
    `spm.vocab` and `text_tokenizer.json`; return the loaded tokenizer.

    `vocab_size` is an upper bound: on a corpus too small for it, sentencepiece stops earlier
    and the actual size is recorded (with a warning). `byte_fallback` maps unseen characters to
    byte pieces instead of unk (needs vocab_size > 260).
    """
    import sentencepiece as spm

    from alm.data.splits import resolve_split_spec

    fit_spec = resolve_split_spec(shards_spec, "fit") if isinstance(shards_spec, str) else shards_spec  # a directory: its training split(s)

    from alm.io import atomic_write_bytes, atomic_write_text

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    stats: dict[str, int] = {}
    texts = list(iter_texts(fit_spec, stats))
    if not texts:
        raise ValueError(f"shards {shards_spec!r}: no captions or transcripts found in the json members")
    corpus_hash = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(
        vocab_size=int(vocab_size),
        model_type=model_type,
        character_coverage=float(character_coverage),
        byte_fallback=bool(byte_fallback),
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        hard_vocab_limit=False,
        input_sentence_size=0,  # use every sentence, in order (no sampling)
        shuffle_input_sentence=False,
        num_threads=int(num_threads),
        max_sentence_length=1 << 16,
    )
    spm.set_random_generator_seed(int(seed))
    model = io.BytesIO()  # the model is returned in memory: no temp paths recorded inside it
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, minloglevel=2, **settings)
    except RuntimeError as exc:
        raise ValueError(f"sentencepiece training on {len(texts)} texts from {shards_spec!r} failed: {exc}") from exc
    proto = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{proto.id_to_piece(i)}\t{proto.get_score(i):g}\n" for i in range(proto.get_piece_size()))
    atomic_write_bytes(out_dir / MODEL_FILE, model.getvalue())
    atomic_write_text(out_dir / "spm.vocab", vocab)
    tok = TextTokenizer(out_dir / MODEL_FILE)
    if tok.vocab_size < vocab_size:
        log.warning("corpus too small for vocab_size=%d: trained %d pieces", vocab_size, tok.vocab_size)
    meta = {
        "vocab_size": tok.vocab_size,
        "requested_vocab_size": int(vocab_size),
        "model_type": model_type,
        "pad_id": tok.pad_id,
        "unk_id": tok.unk_id,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "model_file": MODEL_FILE,
        "settings": {k: settings[k] for k in ("character_coverage", "byte_fallback", "num_threads")} | {"seed": seed},
        "source": shards_spec if isinstance(shards_spec, str) else list(shards_spec),
        "fit_shards": fit_spec if isinstance(fit_spec, str) else list(fit_spec),
        "corpus": {**stats, "sha256": corpus_hash},
    }
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False))
    return tok


def main(argv: list[str] | None = None) -> int:
    """`alm tokenize text --shards SPEC --out DIR --vocab-size N [--model-type unigram|bpe] [--retrain]`."""
    from alm.cli_format import DefaultsFormatter

    parser = argparse.ArgumentParser(
        prog="alm tokenize text",
        description="Train a sentencepiece text tokenizer on the captions/transcripts of a shard set.",
        formatter_class=DefaultsFormatter,
        epilog="writes OUT/spm.model, OUT/spm.vocab and OUT/text_tokenizer.json (special ids: pad=0 unk=1 bos=2 eos=3)",
    )
    parser.add_argument("--shards", required=True, help="shards whose json members hold captions/transcripts "
                        "(a prepared directory: its training split(s); a test split only by explicit glob)")
    parser.add_argument("--out", required=True, help="output directory (spm.model, text_tokenizer.json)")
    parser.add_argument("--vocab-size", type=int, required=True, help="sentencepiece vocabulary size")
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="sentencepiece model type")
    parser.add_argument("--character-coverage", type=float, default=1.0, help="share of characters the vocabulary covers")
    parser.add_argument("--byte-fallback", action="store_true", help="unseen characters -> byte pieces, not unk")
    parser.add_argument("--threads", type=int, default=1, help="training threads (1 keeps training deterministic)")
    parser.add_argument("--retrain", action="store_true", help="train even if --out already holds a model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out)
    meta_path = out / META_FILE
    if meta_path.is_file() and (out / MODEL_FILE).is_file() and not args.retrain:
        meta = json.loads(meta_path.read_text())
        asked = {"requested_vocab_size": args.vocab_size, "model_type": args.model_type}
        differ = {k: (meta.get(k), v) for k, v in asked.items() if meta.get(k) != v}
        if differ:
            print(
                f"alm tokenize text: error: {out} holds a model trained with "
                + ", ".join(f"{k}={old!r} (asked {new!r})" for k, (old, new) in differ.items())
                + "; pass --retrain to replace it",
                file=sys.stderr,
            )
            return 2
        tok = load_text_tokenizer(out)
        print(f"using existing text tokenizer {out / MODEL_FILE} (vocab {tok.vocab_size}); --retrain to replace it")
        return 0
    try:
        tok = train_text_tokenizer(
            args.shards, out, args.vocab_size, args.model_type, character_coverage=args.character_coverage,
            byte_fallback=args.byte_fallback, num_threads=args.threads,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"alm tokenize text: error: {exc}", file=sys.stderr)
        return 2
    corpus = json.loads(meta_path.read_text())["corpus"]
    print(
        f"trained {args.model_type} text tokenizer {out / MODEL_FILE}: vocab {tok.vocab_size} from "
        f"{corpus['texts']} texts of {corpus['samples']} samples ({corpus['skipped']} skipped)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
