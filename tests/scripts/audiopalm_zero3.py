"""2 gloo ranks: build the AudioPaLM model (a transformers LM with an extended vocabulary) partitioned
under DeepSpeed zero.Init, run the stage's load_pretrained into it, then report per rank the parameter
bytes it holds and (rank 0) the text-only logits of the gathered model and its full state dict.

usage: python audiopalm_zero3.py HF_DIR AUDIO_TOKENS SEED OUT_PREFIX
writes OUT_PREFIX.rank{r}.json ({"local_bytes", "full_bytes"}), OUT_PREFIX.logits.pt and OUT_PREFIX.state.pt (rank 0)
"""

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def worker(rank: int, hf_dir: str, k: int, seed: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import importlib

    import deepspeed

    from alm.models.audiopalm import AudioPalmConfig, AudioPalmLM, resolved_config
    from alm.stages.audiopalm import load_pretrained
    from alm.training.module import gathered_for_init

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # gloo collectives, no shm kernel
    deepspeed.init_distributed(dist_backend="gloo")
    config = resolved_config(json.load(open(os.path.join(hf_dir, "config.json"))), {})
    mc = AudioPalmConfig(pretrained=hf_dir, config=config, audio_tokens=k)

    class Cfg:  # the parts of a RunConfig load_pretrained reads
        model = mc

    Cfg.seed = seed
    with deepspeed.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}):
        model = AudioPalmLM(mc)
    params = {id(p): p for p in model.parameters()}.values()
    local = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params)
    full = sum(p.ds_numel * p.ds_tensor.element_size() for p in params)
    load_pretrained(model, Cfg, gathered_for_init(model))
    ids = torch.load(out + ".ids.pt")
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        model.eval()
        with torch.no_grad():
            logits = model(ids)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(logits, out + ".logits.pt")
        torch.save(state, out + ".state.pt")
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"local_bytes": local, "full_bytes": full}, f)
    # leave without the interpreter's teardown (gloo threads abort there now and then: see zero3_hf_load.py)
    torch.distributed.barrier()
    os._exit(0)


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], port), nprocs=2, join=True)
