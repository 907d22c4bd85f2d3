"""2 gloo ranks: build a transformers LlamaForCausalLM partitioned under DeepSpeed zero.Init, load a
saved checkpoint into it with alm's per-tensor loader, then report (per rank) the parameter bytes it
holds and (rank 0) whether the gathered weights equal the checkpoint's.

usage: python zero3_hf_load.py HF_DIR OUT_PREFIX      (HF_DIR: save_pretrained of the reference model)
"""

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def worker(rank: int, hf_dir: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import deepspeed
    import importlib
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from alm.training.init_from import load_hf_weights
    from alm.training.module import gathered_for_init

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # gloo collectives, no shm kernel
    deepspeed.init_distributed(dist_backend="gloo")
    config = LlamaConfig.from_pretrained(hf_dir)
    with deepspeed.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}):
        model = LlamaForCausalLM(config)
    params = {id(p): p for p in model.parameters()}.values()
    local = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params)
    full = sum(p.ds_numel * p.ds_tensor.element_size() for p in params)
    n = load_hf_weights(model, hf_dir, gathered_for_init(model))
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        got = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = {"local_bytes": local, "full_bytes": full, "tensors_loaded": n}
    if rank == 0:
        want = load_file(os.path.join(hf_dir, "model.safetensors"))
        record["mismatch"] = [k for k, v in want.items() if not torch.equal(got[k], v)]
        record["compared"] = len(want)
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(record, f)
    # both ranks have written their record; leave without the interpreter's teardown: gloo's threads
    # (with or without destroy_process_group) abort there now and then with "terminate called
    # without an active exception" (SIGABRT, seen twice in CI), after all the work is done
    torch.distributed.barrier()
    os._exit(0)


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2], port), nprocs=2, join=True)
