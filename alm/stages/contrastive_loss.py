"""Symmetric InfoNCE over the GLOBAL batch: every rank's audio against every rank's texts.

    contrastive_loss(audio, text, scale, local_loss=False) -> scalar

audio, text: this rank's (n_r, D) unit-norm embeddings, row i of both from the same example;
scale = exp(logit_scale). The loss of the whole global batch of N = sum_r n_r pairs is

    L = ( CE(S, diag) + CE(S^T, diag) ) / 2,   S = scale * A_all @ T_all^T  (N x N), CE averaged over rows

Cross-rank negatives: embeddings are all-gathered with torch.distributed.nn.functional.all_gather,
which is autograd-aware: its backward sums, over ranks, the gradients every rank's loss sends to
this rank's rows. Per-rank batch sizes may differ (dynamic batching): sizes are gathered first,
every rank pads to the largest, and the padding rows are dropped after the gather.

Gradient scale under DDP / DeepSpeed (both average gradients over the W ranks):
* global loss (default): every rank computes the same L over all N x N pairs. Each rank's rows
  receive W copies of dL/d(rows) through the gather's backward; the average over ranks divides
  by W again, so parameters get exactly dL/dθ, as one process holding the whole batch would.
* local loss (`model.local_loss: true`): rank r computes only its own n_r rows of S (audio ->
  all texts) and of S^T (text -> all audio), O(n_r x N) memory instead of O(N x N), and returns
  W / N times their summed cross-entropies / 2. Summed over ranks and averaged by DDP this is again
  dL/dθ; its mean over ranks (what the trainer logs) is L.
One process (or torch.distributed not initialised): both are the ordinary in-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows of x (n_r, D), concatenated in rank order, with gradient to the local rows.
    -> (rows (N, D), offset of this rank's first row)."""
    rank, size = world()
    if size == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = F.pad(x, (0, 0, 0, longest - x.shape[0]))
    parts = all_gather(padded)
    rows = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return rows, sum(sizes[:rank])


def in_batch_loss(audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of these rows only (no gather): (CE(S, diag) + CE(S^T, diag)) / 2."""
    logits = scale * audio.float() @ text.float().T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def contrastive_loss(audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, local_loss: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE of the global batch (see the module docstring). audio, text: (n_r, D)."""
    if audio.shape != text.shape or audio.dim() != 2:
        raise ValueError(f"audio {tuple(audio.shape)} and text {tuple(text.shape)} embeddings must both be (n, D)")
    _, size = world()
    all_audio, offset = gather_rows(audio.float())
    all_text, _ = gather_rows(text.float())
    n_global = all_audio.shape[0]
    if not local_loss or size == 1:
        return in_batch_loss(all_audio, all_text, scale)  # the whole (N, N) matrix, on every rank
    n = audio.shape[0]
    target = torch.arange(offset, offset + n, device=audio.device)
    a2t = scale * audio.float() @ all_text.T  # (n_r, N): local audio rows against every text
    t2a = scale * text.float() @ all_audio.T  # (n_r, N): local text rows against every clip
    summed = F.cross_entropy(a2t, target, reduction="sum") + F.cross_entropy(t2a, target, reduction="sum")
    return summed * (size / (2 * n_global))
