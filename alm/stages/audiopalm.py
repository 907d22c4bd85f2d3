"""AudioPaLM (Rubenstein et al. 2023): a pretrained transformers causal LM (model.pretrained) with its
vocabulary extended by K audio tokens and task tags (alm/models/audiopalm.py), trained on tagged tasks.

Data: prep shards (a `json` member with the transcript: alm.tokenizers.text.sample_texts, the first
text) joined with semantic token shards (`semantic.npy`, `alm tokenize semantic`) of the same
names and keys: data.train_shards: "prep/train-*.tar + tokens/train-*.tar". data.tokenizer: the
semantic tokenizer (K = its n_clusters = model.audio_tokens; it travels with the export).
S2ST needs a third joined set: the TARGET speech's tokens under the member `target_semantic.npy`
(TARGET_MEMBER), made with the SAME tokenizer as the source's:
    alm prep cvss --src CVSS_C_FR_EN --out cvss --like prep   (keys and shard names = alm prep covost2's)
    alm tokenize semantic --shards cvss --tokenizer tokens/tokenizer --member target_semantic.npy --out target
    data.train_shards: "prep/train-*.tar + tokens/train-*.tar + target/train-*.tar"
Tasks (data.tasks, drawn per example with data.task_weights, equal when empty):

    asr           [BOS] [ASR English] <a_..> ... | transcript [EOS]
    tts           [BOS] [TTS English] transcript | <a_..> ... [EOS]
    continuation  [BOS] [Continuation English] <a_..> (a random 25-75 % prefix) | the rest [EOS]
    ast           [BOS] [AST English French] <a_..> ... | the json's `translation` [EOS]   (alm prep covost2)
    s2st          [BOS] [S2ST English French] <a_..> ... | <a_..> of target_semantic.npy [EOS]
    asr_ast       [BOS] [ASR AST English French] <a_..> ... | transcript SEP translation [EOS]
    asr_ast_s2st  [BOS] [ASR AST S2ST English French] <a_..> ... | transcript SEP translation <a_..> (target) [EOS]

SEP is data.separator (text, default " | "), encoded on its own between the transcript's and the
translation's ids, so a decoder splits the generated text ids at the first occurrence of SEP's ids
(alm.generate_audiopalm.split_combined); the translation -> target speech boundary needs none (text
ids end where audio ids begin).
Each example's task is drawn among the tasks the sample has data for (a sample without a
translation never becomes an AST / combined example, one without target tokens never an S2ST /
asr_ast_s2st one; the weights of the others are renormalised; each such lack is counted per task
in `lacking` and logged). The tag is data.tag_format with {task} and {languages} (data.language,
plus data.target_language for the translating tasks); every tag a recipe's tasks use must be one of
model.task_tags (each tag is one added token). Loss only on the part after `|` (labels -100 on the
prompt). A pair longer than data.max_len is skipped (a warning names it, counted in `skipped`); a
long continuation is a random window of data.max_len. A batch of data.batch_size examples is packed
into rows of data.max_len tokens (first fit, longest first); position ids restart at every example,
and transformers then lets each example attend only to itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alm.config import DataConfig, RunConfig
from alm.errors import UserError
from alm.models.audiopalm import AudioPalmConfig, AudioPalmLM, check_lora, layout_of, plain
from alm.stages.spec import Command, Stage

log = logging.getLogger(__name__)

IGNORE = -100
TASKS = {"asr": "ASR", "tts": "TTS", "continuation": "Continuation", "ast": "AST", "s2st": "S2ST",
         "asr_ast": "ASR AST", "asr_ast_s2st": "ASR AST S2ST"}
TRANSLATING = ("ast", "s2st", "asr_ast", "asr_ast_s2st")  # tags name both languages
TARGET_MEMBER = "target_semantic.npy"  # the target speech's semantic ids (S2ST), same tokenizer as semantic.npy
SYNTHETIC = "synthetic"
TINY_LM_VERSION = "v1"


@dataclass
class AudioPalmDataConfig(DataConfig):
    tasks: list = field(default_factory=lambda: ["asr", "tts"])  # of TASKS: asr | tts | continuation | ast | s2st | asr_ast | asr_ast_s2st
    task_weights: list = field(default_factory=list)  # one weight per task (empty: equal)
    language: str = "English"  # the language of the speech and transcripts, as the tags name it
    target_language: str = "French"  # ast / s2st / combined: the language of the translation and target speech
    tag_format: str = "[{task} {languages}]"  # the paper's: [ASR English], [TTS English], [AST English French]
    separator: str = " | "  # asr_ast, asr_ast_s2st: the text between the transcript and the translation


def task_tag(data: AudioPalmDataConfig, task: str) -> str:
    if task not in TASKS:
        raise UserError(f"data.tasks: unknown task {task!r}; expected some of {list(TASKS)}")
    languages = f"{data.language} {data.target_language}" if task in TRANSLATING else data.language
    try:
        return data.tag_format.format(task=TASKS[task], languages=languages)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"data.tag_format={data.tag_format!r}: only {{task}} and {{languages}} may appear ({exc})") from None


def task_probabilities(data: AudioPalmDataConfig) -> np.ndarray:
    tasks, weights = list(data.tasks), [float(w) for w in data.task_weights]
    if not tasks:
        raise UserError("data.tasks is empty: give some of " + ", ".join(TASKS))
    if len(set(tasks)) != len(tasks):
        raise UserError(f"data.tasks {tasks}: a task is named twice")
    if weights and (len(weights) != len(tasks) or min(weights) < 0 or sum(weights) <= 0):
        raise UserError(f"data.task_weights {weights}: expected {len(tasks)} non-negative weights (one per data.tasks "
                        f"entry, not all 0) or []")
    p = np.asarray(weights or [1.0] * len(tasks), dtype=np.float64)
    return p / p.sum()


# ------------------------------------------------------------------ the pretrained LM


def tiny_lm_dir(mc: AudioPalmConfig, root: Path) -> Path:
    """model.pretrained=synthetic: a random LM of model.synthetic + a byte-level BPE tokenizer of
    model.synthetic.vocab_size entries fitted on the synthetic set's captions (and their upper case),
    made once under the cache root."""
    from alm.data.cache import cached

    config = {k: v for k, v in sorted(plain(mc.synthetic).items())}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return cached(root / f"audiopalm-tiny-lm-{TINY_LM_VERSION}-{digest}", lambda d: make_tiny_lm(d, mc, root),
                  "a tiny random LM and BPE tokenizer (model.pretrained=synthetic)")


def make_tiny_lm(out: Path, mc: AudioPalmConfig, root: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic
    from alm.models.audiopalm import hf_config
    from alm.tokenizers.text import iter_texts

    audio = cached(root / "synthetic-v1", lambda d: write_synthetic(d), "the synthetic audio dataset")
    texts = list(iter_texts(str(audio / "train-*.tar")))
    vocab = int(mc.synthetic["vocab_size"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts + [t.upper() for t in texts], trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    if len(hf_tok) > vocab:
        raise UserError(f"model.synthetic.vocab_size={vocab}: the byte-level BPE tokenizer needs at least {len(hf_tok)}")
    hf_tok.save_pretrained(out)
    torch.manual_seed(0)
    arch = AudioPalmConfig(pretrained=SYNTHETIC, config=dict(plain(mc.synthetic)), audio_tokens=1)
    AutoModelForCausalLM.from_config(hf_config(arch, vocab_size=vocab)).save_pretrained(out)


def pretrained_path(mc: AudioPalmConfig) -> str:
    """model.pretrained as transformers loads it: `synthetic` -> the cached tiny LM's folder."""
    if mc.pretrained == SYNTHETIC:
        from alm.data.cache import cache_root

        return str(tiny_lm_dir(mc, cache_root()))
    return mc.pretrained


def base_tokenizer(mc: AudioPalmConfig):
    from transformers import AutoTokenizer

    from alm.hub import from_pretrained

    return from_pretrained(AutoTokenizer, pretrained_path(mc), "model.pretrained (its tokenizer)")


def resolve_model_config(cfg: RunConfig) -> None:
    """Fill model.config from model.pretrained's config.json (the recipe's keys win), so the run's
    config.yaml — and so every export — rebuilds the model without the pretrained files."""
    from alm.models.audiopalm import resolved_config

    mc = cfg.model
    if mc.pretrained == SYNTHETIC:
        if "model_type" not in mc.synthetic or "vocab_size" not in mc.synthetic:
            raise UserError("model.pretrained=synthetic builds a random LM of model.synthetic: state its model_type, "
                            "vocab_size and sizes there")
        found = Path(pretrained_path(mc)) / "config.json"
    else:
        from alm.training.init_from import hf_weights_dir

        found = hf_weights_dir(mc.pretrained) / "config.json"
    if not found.is_file():
        raise UserError(f"model.pretrained={mc.pretrained}: no config.json in {found.parent}")
    mc.config = resolved_config(json.loads(found.read_text()), mc.config)


# ------------------------------------------------------------------ examples

_NEEDS = {"asr": "transcript + semantic.npy", "tts": "transcript + semantic.npy", "continuation": ">= 2 semantic ids",
          "ast": "translation + semantic.npy", "s2st": f"semantic.npy + {TARGET_MEMBER}",
          "asr_ast": "transcript + translation + semantic.npy",
          "asr_ast_s2st": f"transcript + translation + semantic.npy + {TARGET_MEMBER}"}


class _Examples:
    """sample (prep json + semantic.npy [+ target_semantic.npy]) -> {"tokens", "n_prompt", "row"}; tokenizer
    loaded once per process. `skipped`: examples longer than data.max_len; `lacking[task]`: samples drawn
    without the data that task needs (no transcript, translation or target tokens)."""

    def __init__(self, cfg: RunConfig):
        self.mc = cfg.model
        self.layout = layout_of(cfg.model)
        self.max_len = cfg.data.max_len
        self.tasks = list(cfg.data.tasks)
        self.p = task_probabilities(cfg.data)
        self.tags = {t: self.layout.tag_id(task_tag(cfg.data, t)) for t in self.tasks}
        self.separator = cfg.data.separator
        self.skipped = 0
        self.lacking = {t: 0 for t in self.tasks}
        self._tok = None

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}

    def tokenizer(self):
        if self._tok is None:
            self._tok = base_tokenizer(self.mc)
        return self._tok

    def _units(self, sample: dict, member: str) -> np.ndarray:
        from alm.data.shards import npy_load

        units = npy_load(sample[member]).astype(np.int64).reshape(-1)
        if units.size and (units.min() < 0 or units.max() >= self.layout.audio):
            raise ValueError(f"{member}: semantic ids outside [0, {self.layout.audio}) — data.tokenizer and "
                             "model.audio_tokens disagree (target tokens must come from the source's tokenizer)")
        return units

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict | None:
        from alm.tokenizers.semantic import MEMBER
        from alm.tokenizers.text import sample_texts

        for member in ("json", MEMBER):
            if member not in sample:
                raise KeyError(f"sample {sample.get('__key__')!r} has no {member} member (data.train_shards joins prep "
                               "shards and semantic token shards: 'prep/*.tar + tokens/*.tar')")
        units = self._units(sample, MEMBER)
        target = self._units(sample, TARGET_MEMBER) if TARGET_MEMBER in sample else np.zeros(0, dtype=np.int64)
        meta = json.loads(sample["json"])
        meta = meta if isinstance(meta, dict) else {}
        texts = sample_texts(meta)
        translation = meta.get("translation") if isinstance(meta.get("translation"), str) else ""
        speech, said, translated, spoken = units.size > 0, bool(texts), bool(translation.strip()), target.size > 0
        has = {"asr": said and speech, "tts": said and speech, "continuation": units.size >= 2,
               "ast": translated and speech, "s2st": spoken and speech, "asr_ast": said and translated and speech,
               "asr_ast_s2st": said and translated and spoken and speech}
        for t in self.tasks:
            if not has[t]:
                self.lacking[t] += 1
                if self.lacking[t] <= 5 or self.lacking[t] % 1000 == 0:
                    log.warning("sample %r lacks the data of task %s (%s): not a %s example (%d so far in this reader)",
                                sample.get("__key__"), t, _NEEDS[t], t, self.lacking[t])
        p = np.where([has[t] for t in self.tasks], self.p, 0.0)  # only the tasks this sample has data for
        if p.sum() == 0:
            return None
        task = self.tasks[int(rng.choice(len(self.tasks), p=p / p.sum()))]
        tok = self.tokenizer()
        head = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + [self.tags[task]]
        audio = units + self.layout.audio_start
        if task == "continuation":
            body = self.max_len - len(head) - 1
            start = int(rng.integers(0, units.size - body + 1)) if units.size > body else 0
            window = audio[start : start + body]
            cut = int(rng.integers(max(1, len(window) // 4), max(2, 3 * len(window) // 4 + 1)))
            tail = [tok.eos_token_id] if start + len(window) == units.size else []
            return self._example(head + list(window[:cut]), list(window[cut:]) + tail)
        encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
        target_audio = list(target + self.layout.audio_start)
        if task == "tts":
            prompt, out = encode(texts[0]), list(audio)
        elif task == "s2st":
            prompt, out = list(audio), target_audio
        elif task in ("asr_ast", "asr_ast_s2st"):
            prompt = list(audio)
            out = encode(texts[0]) + encode(self.separator) + encode(translation)
            out += target_audio if task == "asr_ast_s2st" else []
        else:
            prompt, out = list(audio), encode(translation if task == "ast" else texts[0])
        ex = self._example(head + prompt, out + [tok.eos_token_id])
        if len(ex["tokens"]) > self.max_len:
            self.skipped += 1
            if self.skipped <= 5 or self.skipped % 1000 == 0:
                log.warning("%s example of %r: %d tokens > data.max_len=%d, skipped (%d so far in this reader)",
                            task, sample.get("__key__"), len(ex["tokens"]), self.max_len, self.skipped)
            return None
        return ex

    def _example(self, prompt: list, target: list) -> dict:
        tokens = np.asarray(prompt + target, dtype=np.int64)
        return {"tokens": tokens, "n_prompt": len(prompt), "row": self.max_len}


def examples(cfg: RunConfig):
    return _Examples(cfg)


def example_length(example: dict) -> int:
    return len(example["tokens"])


def pack(examples: list[dict], row: int) -> list[list[int]]:
    """First-fit decreasing: example indices per row, each row's inputs (len - 1 per example) <= row - 1."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: -len(examples[i]["tokens"])):
        n = len(examples[i]["tokens"]) - 1
        j = next((j for j, r in enumerate(room) if r >= n), None)
        if j is None:
            rows.append([])
            room.append(row - 1)
            j = len(rows) - 1
        rows[j].append(i)
        room[j] -= n
    return rows


def collate(examples: list[dict]) -> dict[str, Any]:
    """Pack examples into rows: inputs / targets / positions (R, L) int64. targets are the next token on
    each example's target part, -100 on its prompt and on padding; positions restart at 0 per example
    (the padding after the last example is a sequence of its own)."""
    row = max(e["row"] for e in examples)
    plan = pack(examples, row)
    width = max(sum(len(examples[i]["tokens"]) - 1 for i in r) for r in plan)
    inputs = np.zeros((len(plan), width), dtype=np.int64)
    targets = np.full((len(plan), width), IGNORE, dtype=np.int64)
    positions = np.zeros((len(plan), width), dtype=np.int64)
    for r, members in enumerate(plan):
        at = 0
        for i in members:
            t, p = examples[i]["tokens"], examples[i]["n_prompt"]
            n = len(t) - 1
            inputs[r, at : at + n] = t[:-1]
            targets[r, at + p - 1 : at + n] = t[p:]
            positions[r, at : at + n] = np.arange(n)
            at += n
        positions[r, at:] = np.arange(width - at)
    n_real = sum(len(e["tokens"]) - 1 for e in examples)
    return {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets),
            "positions": torch.from_numpy(positions), "_tokens": n_real}


def loss(model: AudioPalmLM, batch: dict[str, Any]) -> torch.Tensor:
    logits = model(batch["inputs"], batch["positions"])  # (R, L, N)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)


# ------------------------------------------------------------------ checks, weights, export


def check(cfg: RunConfig) -> None:
    """Tasks, weights and tags; model.audio_tokens = data.tokenizer's clusters; the context fits; then
    model.config is resolved from model.pretrained (recorded in the run's config.yaml)."""
    data, mc = cfg.data, cfg.model
    task_probabilities(data)
    missing = [task_tag(data, t) for t in data.tasks if task_tag(data, t) not in list(mc.task_tags)]
    if missing:
        raise UserError(f"data.tasks {list(data.tasks)} use the tag(s) {missing}, which are not in model.task_tags "
                        f"{list(mc.task_tags)}: add them there (each tag is a token of the extended vocabulary)")
    if not data.tokenizer:
        raise UserError("stage audiopalm needs data.tokenizer: the semantic tokenizer dir of the token shards")
    path = Path(data.tokenizer) / "semantic_tokenizer.json"
    if not path.is_file():
        raise UserError(f"data.tokenizer={data.tokenizer}: no semantic_tokenizer.json inside (not a semantic tokenizer)")
    k = json.loads(path.read_text())["n_clusters"]
    if mc.audio_tokens != k:
        raise UserError(f"model.audio_tokens={mc.audio_tokens} but the tokenizer in {data.tokenizer} has {k} clusters: "
                        f"expected {k}")
    if {"asr_ast", "asr_ast_s2st"} & set(data.tasks) and not str(data.separator).strip():
        raise UserError(f"data.separator={data.separator!r}: the combined tasks need a non-blank separator between the "
                        "transcript and the translation (the decoder splits on it)")
    if mc.new_rows not in ("sample", "mean"):
        raise UserError(f"model.new_rows={mc.new_rows!r}: expected sample or mean")
    resolve_model_config(cfg)
    layout = layout_of(mc)
    if check_lora(mc):  # model.lora_targets must name modules of the body: built on the meta device (no memory)
        with torch.device("meta"):
            AudioPalmLM(mc)
    context = mc.config.get("max_position_embeddings") or mc.config.get("n_positions")
    if context and data.max_len > int(context):
        raise UserError(f"data.max_len={data.max_len} exceeds the LM's context ({context} positions)")
    tok = base_tokenizer(mc)
    if tok.eos_token_id is None:
        raise UserError(f"model.pretrained={mc.pretrained}: its tokenizer has no EOS token (targets end with EOS)")
    if len(tok) > layout.text:
        raise UserError(f"model.pretrained={mc.pretrained}: the tokenizer has {len(tok)} entries, the embedding "
                        f"{layout.text} rows")


def _key_map(model: AudioPalmLM):
    """Stored name -> the model's: as stored, or under the base model's prefix (a checkpoint of the bare
    base model, e.g. GPT-2's `h.0...`); buffers the model no longer has (attn.bias, inv_freq) skipped."""
    names = set(dict(model.named_parameters(remove_duplicate=False))) | set(dict(model.named_buffers()))
    prefix = model.hf.base_model_prefix

    def key_map(stored: str) -> str | None:
        if stored in names:
            return stored
        if f"{prefix}.{stored}" in names:
            return f"{prefix}.{stored}"
        if stored.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            return None
        return stored  # load_weights names it: no place in the model

    return key_map


def load_pretrained(model: AudioPalmLM, cfg: RunConfig, gathered) -> None:
    """Checkpoint of model.pretrained into the (possibly partitioned) model, tensor by tensor; the
    vocabulary matrices' first V rows from it; rows V.. drawn by model.new_rows (seeded by cfg.seed)."""
    from alm.models.audiopalm import fill_new_rows
    from alm.training.init_from import load_weights, hf_weights_dir

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    folder = Path(pretrained_path(cfg.model))
    if cfg.model.pretrained != SYNTHETIC:
        folder = hf_weights_dir(cfg.model.pretrained)
    vocab = frozenset(name for name, _ in model.vocab_matrices())
    n = load_weights(model, folder, gathered, rank, _key_map(model), what=f"model.pretrained={cfg.model.pretrained}",
                     prefix_rows=vocab)
    filled = fill_new_rows(model, cfg.model.new_rows, cfg.seed, gathered, rank)
    if rank == 0:
        log.info("model.pretrained=%s: %d tensors loaded; new vocabulary rows (%s): %s", cfg.model.pretrained, n,
                 cfg.model.new_rows, ", ".join(f"{k} {v}" for k, v in filled.items()))


TRANSFORMERS_DIR = "transformers"


def export_files(model: AudioPalmLM, cfg: RunConfig, out: Path) -> dict:
    """OUT/transformers/: config.json (the LM's model_type, the extended vocab_size), the export's own
    safetensors (hard links: the state dict is transformers' own) — with LoRA, the merged plain weights
    instead (alm.models.audiopalm.merged_lm) —, the extended tokenizer."""
    from alm.models.audiopalm import extended_tokenizer, hf_config

    dest = out / TRANSFORMERS_DIR
    dest.mkdir()
    config = hf_config(cfg.model)
    config.architectures = [type(model.hf).__name__]
    config.use_cache = True
    config.dtype = next(model.parameters()).dtype
    config.save_pretrained(dest)
    linked = []
    if model.lora:  # the adapters merged into plain weights (transformers has no adapters)
        from alm.export import DEFAULT_MAX_SHARD_SIZE, parse_size, write_weights
        from alm.models.audiopalm import merged_lm

        linked = write_weights(merged_lm(model), dest, parse_size(DEFAULT_MAX_SHARD_SIZE), cfg.stage)["files"]
    else:
        for f in sorted(out.glob("model*.safetensors")) + sorted(out.glob("model.safetensors.index.json")):
            try:
                os.link(f, dest / f.name)
            except OSError:  # a file system without hard links
                import shutil

                shutil.copyfile(f, dest / f.name)
            linked.append(f.name)
    if not linked:
        raise RuntimeError(f"{out}: no model*.safetensors written before the transformers folder")
    layout = layout_of(cfg.model)
    extended_tokenizer(base_tokenizer(cfg.model), layout).save_pretrained(dest)
    return {"transformers": {"dir": TRANSFORMERS_DIR, "model_type": config.model_type, "files": linked,
                             "pretrained": cfg.model.pretrained, "vocabulary": layout.as_dict()}}


def synthetic_data(cfg: RunConfig, root: Path) -> dict[str, str]:
    """alm's synthetic captioned set joined with its log-mel semantic tokens (K = model.audio_tokens):
    the captions stand in for transcripts."""
    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic
    from alm.stages.semantic import synthetic_semantic

    audio = cached(root / "synthetic-v1", lambda d: write_synthetic(d), "the synthetic audio dataset")
    tokens = synthetic_semantic(root, cfg.model.audio_tokens)
    return {"train_shards": f"{audio}/train-*.tar + {tokens}/train-*.tar",
            "val_shards": f"{audio}/val-*.tar + {tokens}/val-*.tar", "tokenizer": str(tokens / "tokenizer")}


def _generate_arguments(p) -> None:
    from alm.generate_audiopalm import add_arguments

    add_arguments(p)


def _generate(a) -> int:
    from alm.generate_audiopalm import run

    return run(a)


def _eval_tasks():
    from alm.stages.audiopalm_eval import EVAL_TASKS

    return EVAL_TASKS


STAGE = Stage(
    name="audiopalm",
    description="AudioPaLM: a pretrained transformers LM with audio-token rows, trained on tagged ASR / TTS / "
                "continuation / AST / S2ST and combined tasks",
    model_config=AudioPalmConfig,
    model=AudioPalmLM,
    make_example=examples,
    collate=collate,
    example_length=example_length,
    loss=loss,
    data_config=AudioPalmDataConfig,
    check=check,
    synthetic_data=synthetic_data,
    load_pretrained=load_pretrained,
    export_files=export_files,
    eval_tasks=_eval_tasks(),
    commands=(Command("generate", "audiopalm", "ASR, AST, TTS, S2ST or combined tasks with an exported AudioPaLM model",
                      _generate_arguments, _generate),),
)
