"""2 gloo ranks, DeepSpeed ZeRO-3 engines: a CLAP with pretrained transformers towers (AST audio +
RoBERTa text) and a whole converted CLAP (model.tower=hf) are built partitioned under zero.Init,
initialised on gathered parameters and loaded (Stage.load_pretrained / init_from's loader) as the
trainer does; each rank embeds its half of the rows through the engine, and the global contrastive
loss and the gathered embeddings are compared with one process's on all rows.

usage: python clap_towers_zero3.py AST_DIR ROBERTA_DIR CLAP_DIR OUT_PREFIX
writes OUT_PREFIX.{towers,hf}.rank{r}.json ({"local_bytes", "full_bytes"}), OUT_PREFIX.{case}.emb.pt (the
ranks' embeddings gathered + the loss) and OUT_PREFIX.{case}.ref.pt (one process) from rank 0
"""

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

N = 4  # rows in all: 2 per rank


def towers_case(ast_dir, roberta_dir):
    from alm.models import hf_towers
    from alm.models.clap import Clap, ClapConfig

    mc = ClapConfig(audio_tower=ast_dir, text_tower=roberta_dir, embed_dim=16, max_seconds=0.5)
    mc.audio_hf_config = hf_towers.resolve_tower_config(ast_dir, "audio")
    mc.text_hf_config = hf_towers.resolve_tower_config(roberta_dir, "text")
    audio, text = hf_towers.audio_front_end(mc), hf_towers.text_front_end(mc)
    return mc, Clap, audio, text


def hf_case(export_dir):
    from alm.export import load_config
    from alm.models.clap_hf import HFClap, HFFrontEnd

    cfg = load_config(export_dir)
    front = HFFrontEnd(os.path.join(export_dir, "tokenizer"), cfg.model.hf_config)

    class Text:
        def ids(self, t):
            return front.text_ids(t)

        def batch(self, ids):
            return front.text_batch(ids)

    class Audio:
        window = front.window

        def batch(self, clips):
            return front.audio_batch(clips)

    return cfg.model, HFClap, Audio(), Text()


def rows(audio, text):
    rng = np.random.default_rng(0)
    clips = [0.1 * rng.standard_normal(audio.window // (i + 1)).astype(np.float32) for i in range(N)]
    caps = ["a dog barks", "rain falls on a roof", "a bell rings twice", "birds"]
    a, b = audio.batch(clips)
    ids, mask = text.batch([text.ids(c) for c in caps])
    return a, b, ids, mask


def load(model, case, args, gathered, rank):
    from alm.models.hf_towers import load_tower_weights
    from alm.training.init_from import load_weights

    if case == "towers":
        load_tower_weights(model.audio, args[0], "audio", gathered, rank)
        load_tower_weights(model.text, args[1], "text", gathered, rank)
    else:
        from pathlib import Path

        load_weights(model, Path(args[3]), gathered, rank)


def build(case, args):
    return towers_case(args[0], args[1]) if case == "towers" else hf_case(args[3])


def reference(case, args, out):
    from alm.stages.contrastive_loss import contrastive_loss
    from alm.training.module import gathered_for_init

    mc, cls, audio, text = build(case, args)
    torch.manual_seed(0)
    model = cls(mc)
    load(model, case, args, gathered_for_init(model), 0)
    model.eval()
    with torch.no_grad():
        a, t, s = model(*rows(audio, text))
        loss = contrastive_loss(a, t, s)
    torch.save({"audio": a, "text": t, "loss": loss}, f"{out}.{case}.ref.pt")


def worker(rank, args, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = args[4]
    if rank == 0:  # the references: one process, all rows (before any process group exists)
        for case in ("towers", "hf"):
            reference(case, args, out)
    import importlib

    import deepspeed

    from alm.stages.contrastive_loss import contrastive_loss
    from alm.training.module import gathered_for_init

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # gloo collectives, no shm kernel
    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": N // 2,
                 "zero_force_ds_cpu_optimizer": False, "zero_allow_untested_optimizer": True}
    for case in ("towers", "hf"):
        mc, cls, audio, text = build(case, args)
        torch.manual_seed(0)
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = cls(mc)
        params = {id(p): p for p in model.parameters()}.values()
        local = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params)
        full = sum(p.ds_numel * p.ds_tensor.element_size() for p in params)
        gathered = gathered_for_init(model)
        model.init_weights(gathered)  # what the trainer's configure_model does for a partitioned model
        load(model, case, args, gathered, rank)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        engine.eval()
        half = slice(rank * N // 2, (rank + 1) * N // 2)
        with torch.no_grad():
            a, t, s = engine(*[x[half] for x in rows(audio, text)])
            loss = contrastive_loss(a, t, s)  # the global batch: both ranks' rows
            parts = [[torch.zeros_like(x) for _ in range(2)] for x in (a, t)]
            torch.distributed.all_gather(parts[0], a.contiguous())
            torch.distributed.all_gather(parts[1], t.contiguous())
        if rank == 0:
            torch.save({"audio": torch.cat(parts[0]), "text": torch.cat(parts[1]), "loss": loss}, f"{out}.{case}.emb.pt")
        with open(f"{out}.{case}.rank{rank}.json", "w") as f:
            json.dump({"local_bytes": local, "full_bytes": full}, f)
    # leave without the interpreter's teardown (gloo threads abort there now and then: see zero3_hf_load.py)
    torch.distributed.barrier()
    os._exit(0)


if __name__ == "__main__":
    import socket
    import tempfile

    from alm.convert_clap import convert

    ast_dir, roberta_dir, clap_dir, out = sys.argv[1:5]
    export = os.path.join(tempfile.mkdtemp(), "converted")
    convert(clap_dir, export)  # model.tower=hf: the converted CLAP (its logit scales as (1,) tensors)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=([ast_dir, roberta_dir, clap_dir, export, out], port), nprocs=2, join=True)
