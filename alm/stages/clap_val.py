"""CLAP validation over the WHOLE held-out set, gathered across ranks (Stage.val_epoch_end of stage clap).

At every validation, after the in-batch val/loss batches, every rank embeds its share of the clips
of data.val_shards (global positions rank, rank + W, ...; alm/eval/heldout.py) and all of their
captions, the embeddings of all ranks are all-gathered (sizes may differ) and put back in the
clips' global order, and every rank computes the same retrieval metrics (alm/eval/retrieval.py, as
LAION CLAP computes them: every caption is a text->audio query; audio->text by the best-ranked
caption, mAP@10 over all of the clip's captions). Logged as val/text_to_audio/R@1, R@5, R@10,
mAP@10, median_rank, mean_rank, the same under val/audio_to_text/, and val/heldout_clips,
val/heldout_captions (counts). A clip without captions is left out and counted in
val/heldout_no_caption.

Audio as `alm embed` / `alm eval retrieval EXPORT` embed it (alm/embed.py), so validation and
evaluation agree: a clip no longer than the model's window (model.max_seconds; model.tower=hf: its
feature extractor's max_length_s, featurised by it) is embedded whole, a longer one as the
length-weighted mean of its non-overlapping windows, renormalised (no random crop). Captions go
through data.tokenizer (model.tower=hf: the converted CLAP's tokenizer).
ZeRO-3: every rank runs the same sequence of forwards in lockstep (all audio batches, then all
text batches; a rank out of batches runs dummy ones whose output is dropped, `lockstep`), as
partitioned parameters are gathered collectively by each forward. Memory: one rank holds its share of audio one batch at a
time, the token ids of its captions, and after the gather all embeddings ((n_clips + n_captions) x
embed_dim floats); the metrics are computed 1024 queries at a time (never the whole matrix).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist

from alm.stages.contrastive_loss import world
from alm.stages.spec import EvalTask

log = logging.getLogger(__name__)


def gather_varsize(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of x (n_r, ...) concatenated in rank order, n_r may differ (no gradient)."""
    _, size = world()
    if size == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on any rank (one tiny all-reduce)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], device=device, dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def lockstep(batches, forward, dummy, device: torch.device) -> None:
    """forward(batch) for each of this rank's batches, in lockstep with the other ranks: while any rank
    still has a batch, every rank runs one forward (its next batch, or dummy() when it has none left).
    ZeRO-3 gathers partitioned parameters collectively inside each forward, so every rank must run
    the same sequence of forwards, and no rank may reach another collective while one still runs."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        if not _any_rank(batch is not None, device):
            return
        if batch is None:
            dummy()
        else:
            forward(batch)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class _HFFront:
    """model.tower=hf: the converted CLAP's processor (its tokenizer and ClapFeatureExtractor)."""

    def __init__(self, cfg):
        from alm.models.clap_hf import HFFrontEnd

        self.front = HFFrontEnd(cfg.data.tokenizer, cfg.model.hf_config)
        self.sample_rate, self.window = self.front.sample_rate, self.front.window

    def text_ids(self, text: str) -> np.ndarray:
        return self.front.text_ids(text)

    def embed_texts(self, model, ids: list[np.ndarray], device) -> torch.Tensor:
        text, mask = self.front.text_batch(ids)
        return model.encode_text(text.to(device), mask.to(device))

    def embed_audio(self, model, clips: list[np.ndarray], device) -> torch.Tensor:
        features, is_longer = self.front.audio_batch(clips)
        return model.encode_features(features.to(device), is_longer.to(device))


class _TowersFront:
    """alm's own towers and pretrained ones (model.audio_tower / text_tower), in any mix: each tower's own
    front end (alm/models/clap_front.py)."""

    def __init__(self, cfg):
        from alm.models.clap_front import TowersFront

        self.front = TowersFront(cfg.model, cfg.data.tokenizer)
        self.sample_rate, self.window = self.front.sample_rate, self.front.window

    def text_ids(self, text: str) -> np.ndarray:
        return self.front.text_ids(text)

    def embed_texts(self, model, ids: list[np.ndarray], device) -> torch.Tensor:
        return self.front.encode_texts(model, ids, device)

    def embed_audio(self, model, clips: list[np.ndarray], device) -> torch.Tensor:
        return self.front.encode_audio(model, clips, device)


def front_end(cfg):
    """How clips and captions enter the stage's model (model.tower alm or hf; pretrained towers)."""
    m = cfg.model
    return _HFFront(cfg) if getattr(m, "tower", "alm") == "hf" else _TowersFront(cfg)


def _audio_batches(front, cfg, urls: list[str], rank: int, size: int, stats: dict):
    """This rank's clips with captions, decoded one at a time and cut into the windows alm/embed.py
    uses -> batches of (position, window); their captions' (position, token ids) go to
    stats["captions"], clips without captions are counted in stats["no_caption"]."""
    from alm.data.audio import load_mono
    from alm.embed import windows
    from alm.eval.heldout import clips

    batch = max(1, cfg.data.batch_size)
    pending = []
    for clip in clips(urls, rank, size):
        if not clip.texts:
            stats["no_caption"] += 1
            continue
        audio, _ = load_mono(clip.audio, front.sample_rate)
        if audio.size == 0:
            raise ValueError(f"{clip.url}: sample {clip.key!r} has no audio frames")
        stats["captions"] += [(clip.index, front.text_ids(t)) for t in clip.texts]
        for window in windows(audio, front.window):
            pending.append((clip.index, window))
            if len(pending) == batch:
                yield pending
                pending = []
    if pending:
        yield pending


def _embed_audio(model, front, cfg, urls: list[str], rank: int, size: int, dim: int) -> tuple:
    """-> (this rank's audio embeddings (n_r, D), their global positions (n_r,), [(position, token ids)]
    of their captions, clips without captions). A clip's embedding: the length-weighted mean of its
    windows' embeddings, renormalised (alm/embed.py's rule)."""
    device = _device(model)
    stats = {"captions": [], "no_caption": 0}
    sums: dict[int, torch.Tensor] = {}  # position -> weighted sum of its windows' embeddings (insertion order)
    quiet = np.zeros(max(1, front.window // 10), np.float32)

    def forward(batch):
        emb = front.embed_audio(model, [w for _, w in batch], device).double()
        for (p, w), e in zip(batch, emb):
            sums[p] = sums[p] + len(w) * e if p in sums else len(w) * e

    lockstep(_audio_batches(front, cfg, urls, rank, size, stats), forward,
             lambda: front.embed_audio(model, [quiet], device), device)
    if sums:
        emb = torch.nn.functional.normalize(torch.stack(list(sums.values())), dim=-1).float()
    else:
        emb = torch.zeros(0, dim, device=device)
    return emb, torch.tensor(list(sums), dtype=torch.long, device=device), stats["captions"], stats["no_caption"]


def _embed_texts(model, front, cfg, captions: list, device, dim: int) -> torch.Tensor:
    batch = max(1, cfg.data.batch_size)
    embs = []
    lockstep((captions[i : i + batch] for i in range(0, len(captions), batch)),
             lambda chunk: embs.append(front.embed_texts(model, [t for _, t in chunk], device).float()),
             lambda: front.embed_texts(model, [front.text_ids("")], device), device)
    return torch.cat(embs) if embs else torch.zeros(0, dim, device=device)


def heldout_embeddings(model, cfg, urls: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], int]:
    """Every clip of `urls` with captions and every caption, embedded on the ranks' shares and
    gathered -> (audio (n_clips, D), text (n_captions, D), pairs [(text row, clip row)], clips without
    captions), in the clips' global order; the same on every rank."""
    rank, size = world()
    device = _device(model)
    front = front_end(cfg)
    with torch.no_grad():
        # the shared space's width, from one dummy text forward on every rank (ZeRO-3: same forwards)
        dim = front.embed_texts(model, [front.text_ids("")], device).shape[1]
        audio, positions, captions, no_caption = _embed_audio(model, front, cfg, urls, rank, size, dim)
        text = _embed_texts(model, front, cfg, captions, device, dim)
    text_pos = torch.tensor([p for p, _ in captions], dtype=torch.long, device=device)
    audio, positions = gather_varsize(audio), gather_varsize(positions)
    text, text_pos = gather_varsize(text), gather_varsize(text_pos)
    no_caption = sum_over_ranks(no_caption, device)
    order = torch.argsort(positions)
    t_order = torch.argsort(text_pos, stable=True)  # a clip's captions come from one rank, in its order
    audio, positions = audio[order].cpu().numpy(), positions[order].cpu().numpy()
    text, text_pos = text[t_order].cpu().numpy(), text_pos[t_order].cpu().numpy()
    pairs = list(zip(range(len(text)), np.searchsorted(positions, text_pos).tolist()))
    return audio, text, pairs, no_caption


def sum_over_ranks(n: int, device) -> int:
    if world()[1] == 1:
        return n
    t = torch.tensor([n], device=device, dtype=torch.long)
    dist.all_reduce(t)
    return int(t)


def val_epoch_end(model, cfg) -> dict[str, float]:
    """Stage.val_epoch_end of clap: retrieval metrics of the whole data.val_shards (module docstring)."""
    from alm.eval.heldout import heldout_shards
    from alm.eval.retrieval import embedding_retrieval
    from alm.eval.results import flat_metrics

    urls = heldout_shards(cfg.data.val_shards)
    audio, text, pairs, no_caption = heldout_embeddings(model, cfg, urls)
    if no_caption:
        log.warning("validation: %d held-out clip(s) of %s have no captions: left out of the retrieval metrics",
                    no_caption, cfg.data.val_shards)
    out = {"heldout_clips": float(len(audio)), "heldout_captions": float(len(text)), "heldout_no_caption": float(no_caption)}
    if len(audio) == 0:
        log.warning("validation: no held-out clip of %s has a caption: no retrieval metrics", cfg.data.val_shards)
        return out
    return {**flat_metrics(embedding_retrieval(text, audio, pairs)), **out}


def _retrieval_task(export: str, spec: str, args):
    from alm.eval.retrieval import task_run

    return task_run(export, spec, args)


def _zeroshot_task(export: str, spec: str, args):
    from alm.eval.zeroshot import task_run

    return task_run(export, spec, args)


def _retrieval_arguments(p) -> None:
    from alm.eval.retrieval import task_arguments

    task_arguments(p)


def _zeroshot_arguments(p) -> None:
    from alm.eval.zeroshot import task_arguments

    task_arguments(p)


# `alm eval run EXPORT --task retrieval|zeroshot --shards SPEC` of a clap export (alm eval retrieval / zeroshot)
EVAL_TASKS = (
    EvalTask("retrieval", "text->audio and audio->text R@1/5/10, mAP@10 over every clip and caption of the shards",
             _retrieval_task, _retrieval_arguments),
    EvalTask("zeroshot", "zero-shot classification by label prompts (--labels FILE [--template ...] [--label-key KEY])",
             _zeroshot_task, _zeroshot_arguments),
)
