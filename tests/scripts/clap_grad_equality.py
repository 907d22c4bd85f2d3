"""2 gloo ranks under torch DDP: the CLAP global-batch loss and its gradients equal one process's
on the whole batch. Rank 0 first computes the reference (no process group: the in-batch loss over
all rows), then both ranks train one step on their own slice of the same rows.

usage: python clap_grad_equality.py OUT_JSON

For each case of CASES (equal and unequal per-rank rows, global and local loss) OUT_JSON holds
{"sizes", "local_loss", "ref_loss", "loss": [per rank], "max_grad_diff", "max_grad", "n_params"}.
"""

import json
import os
import sys

import torch
import torch.multiprocessing as mp


def tiny_clap(local_loss: bool):
    from alm.models.clap import Clap, ClapConfig

    torch.manual_seed(0)
    cfg = ClapConfig(sample_rate=8000, n_fft=128, hop_length=64, n_mels=16, patch_frames=2, max_seconds=0.5,
                     audio_layers=1, audio_heads=2, audio_dim=32, text_vocab_size=40, text_max_len=12, text_layers=1,
                     text_heads=2, text_dim=32, embed_dim=16, local_loss=local_loss)
    return Clap(cfg)


def rows(n: int):
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(n, 4000, generator=g)
    lengths = torch.randint(1000, 4001, (n,), generator=g)
    ids = torch.randint(1, 40, (n, 12), generator=g)
    mask = torch.arange(12)[None] < torch.randint(3, 13, (n, 1), generator=g)
    return audio, lengths, ids * mask, mask


def step(model, batch, local_loss: bool):
    from alm.stages.contrastive_loss import contrastive_loss

    a, t, s = model(*batch)
    loss = contrastive_loss(a, t, s, local_loss)
    loss.backward()
    return loss


CASES = [(4, 4, False), (3, 5, False), (4, 4, True), (3, 5, True)]  # (rows of rank 0, of rank 1, local_loss)


def worker(rank: int, out: str, port: int) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    refs = []
    if rank == 0:  # the references: one process, the whole batch (before any process group exists)
        for n0, n1, local in CASES:
            ref = tiny_clap(local)
            loss = step(ref, rows(n0 + n1), local).item()
            refs.append((loss, {k: p.grad.clone() for k, p in ref.named_parameters()}))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    records = []
    for i, (n0, n1, local) in enumerate(CASES):
        sizes = [n0, n1]
        model = torch.nn.parallel.DistributedDataParallel(tiny_clap(local))
        lo = sum(sizes[:rank])
        loss = step(model, [x[lo : lo + sizes[rank]] for x in rows(n0 + n1)], local)
        losses = [torch.zeros(1) for _ in range(2)]
        dist.all_gather(losses, loss.detach().reshape(1))
        if rank == 0:
            ref_loss, ref_grads = refs[i]
            grads = {k: p.grad for k, p in model.module.named_parameters()}
            records.append({"sizes": sizes, "local_loss": local, "ref_loss": ref_loss, "loss": [x.item() for x in losses],
                            "max_grad_diff": max((grads[k] - g).abs().max().item() for k, g in ref_grads.items()),
                            "max_grad": max(g.abs().max().item() for g in ref_grads.values()),
                            "n_params": len(ref_grads)})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(records, f)
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left alive aborts the interpreter at exit


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(sys.argv[1], port), nprocs=2, join=True)
