"""DeepSpeed ZeRO on CPU (gloo) — the only place alm adapts Lightning's DeepSpeedStrategy.

Lightning's stock DeepSpeedStrategy refuses any accelerator but CUDA, checks that device indices
equal local ranks (CPU devices have no index), and hands DeepSpeed `root_device.index` (None on
CPU). DeepSpeed itself (>= 0.16, DS_ACCELERATOR=cpu) trains fine on CPU with gloo. This subclass
lifts those three CUDA assumptions and nothing else; on GPUs alm uses the stock strategy.

It also keeps DeepSpeed from JIT-compiling its shared-memory collective kernel at every process
start (~50 s with a compiler, a failure without one): on CPU the collectives go through gloo.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from lightning.fabric.utilities.seed import reset_seed  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy  # noqa: E402


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    strategy_name = "deepspeed_cpu"

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skip the CUDA-only check of DeepSpeedStrategy

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        import importlib

        # `import deepspeed.comm.torch as m` would bind PyTorch itself: deepspeed.comm re-exports
        # `torch` from its star-import, shadowing the submodule attribute; import_module returns the submodule
        ds_torch = importlib.import_module("deepspeed.comm.torch")
        ds_torch.build_shm_op = lambda: None  # use gloo collectives, no JIT-built shm kernel
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        params = filter(lambda p: p.requires_grad, model.parameters())
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=params,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer
