"""Per-step training losses of the tiny stages (a fixed short run each), as JSON on stdout.

    python tests/scripts/golden_losses.py [STAGE ...] > tests/golden/stage_losses.json

tests/test_golden.py trains the same runs and compares their losses with the stored ones exactly:
a refactor of the spine or a stage that changes what a stage trains on, or how, shows up there.
Regenerate the file only on purpose (a deliberate change of data order or model), and say why in
the commit message.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from helpers import alm, losses  # noqa: E402

STEPS = 6
COMMON = ["trainer.val_every_n_steps=0", "trainer.progress_bar=false", "trainer.threads=1", "trainer.accelerator=cpu",
          f"trainer.max_steps={STEPS}", "trainer.ckpt_every_n_steps=1000", "trainer.audio_samples=0",
          "data.num_workers=2", "wandb.enabled=false"]
RUNS = {
    "semantic": ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "data.batch_size=8", "data.max_len=64",
                 "data.shuffle_buffer=32"],
    "coarse": ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "data.batch_size=4", "data.shuffle_buffer=32"],
    "fine": ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "data.batch_size=4", "data.shuffle_buffer=32"],
    "soundstorm": ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "data.batch_size=4", "data.shuffle_buffer=32"],
    "clap": ["model.audio_layers=1", "model.text_layers=1", "model.audio_dim=64", "model.text_dim=64",
             "model.embed_dim=64", "model.max_seconds=1.0", "data.batch_size=8", "data.shuffle_buffer=32"],
    "audiopalm": ["data.batch_size=8", "data.shuffle_buffer=32"],  # the tiny random LM of model.synthetic, packed rows
    # the sharded path: 2 gloo ranks under DeepSpeed ZeRO-3
    "semantic-zero3": ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "data.batch_size=8", "data.max_len=64",
                       "data.shuffle_buffer=32", "trainer.devices=2", "trainer.strategy=deepspeed", "trainer.zero_stage=3"],
}


def run(name: str, run_dir: Path) -> dict[int, float]:
    stage = name.split("-")[0]
    alm("train", str(REPO / "recipes" / "tiny" / f"{stage}.yaml"), f"run_dir={run_dir}", *COMMON, *RUNS[name])
    return losses(run_dir)


def main(stages: list[str]) -> None:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages or list(RUNS):
            out[stage] = {str(k): v for k, v in sorted(run(stage, Path(tmp) / stage).items())}
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
