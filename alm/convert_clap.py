"""`alm convert clap SRC --out EXPORT`: a transformers ClapModel (LAION CLAP) -> an alm clap export.

SRC: a folder written by save_pretrained (the model with its processor: tokenizer + feature
extractor), or a hub id (laion/clap-htsat-unfused, laion/larger_clap_music) resolved through
alm.hub like init_from (HF_HUB_OFFLINE=1: the local HF cache only). EXPORT is an ordinary
`alm export` folder of stage clap:

    model.safetensors     the ClapModel's tensors under transformers' own names (alm/models/clap_hf.py)
    config.yaml           stage clap, model.tower: hf, model.hf_config: the ClapConfig as a dict (the
                          model is rebuilt from it alone), model.sample_rate / max_seconds / embed_dim
                          as the feature extractor and projections have them (for reading; unused)
    tokenizer/            the processor: tokenizer files + the ClapFeatureExtractor config
    export.json           stage, source (SRC), dtype, files, parameter count, tokenizer fingerprint

so `alm embed`, `alm eval ... EXPORT` and fine-tuning (`init_from=EXPORT`, data.tokenizer=EXPORT/tokenizer)
need nothing from SRC. Weights are copied as they are (fp32 by default, --dtype bf16|fp16).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from alm.errors import UserError


def run_config(hf_model, features, out: Path):
    """The RunConfig an export of the converted model carries (model section + a fine-tuning skeleton)."""
    from alm.config import DataConfig, RunConfig, TrainerConfig
    from alm.models.clap import ClapConfig
    from alm.models.clap_hf import hf_config_dict

    hf_config = hf_config_dict(hf_model.config)
    model = ClapConfig(tower="hf", hf_config=hf_config, sample_rate=int(features.sampling_rate),
                       max_seconds=float(features.nb_max_samples) / float(features.sampling_rate),
                       embed_dim=int(hf_model.config.projection_dim))
    data = DataConfig(train_shards="none (converted from transformers: set data.train_shards to fine-tune)",
                      val_shards=None, tokenizer=str(out / "tokenizer"), windows="one")
    return RunConfig(stage="clap", run_dir=f"runs/{out.name}", trainer=TrainerConfig(max_steps=1), data=data,
                     model=model)


def convert(src: str, out: str | os.PathLike, dtype: str = "fp32", overwrite: bool = False) -> Path:
    """Read the transformers CLAP at `src` and write the alm export `out` (see the module docstring)."""
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    from alm import hub
    from alm.export import check_out, write_export
    from alm.models.clap_hf import HFClap

    out = Path(out)
    check_out(out, overwrite)
    hf = hub.from_pretrained(ClapModel, src, what="CLAP model").eval()
    features = hub.from_pretrained(ClapFeatureExtractor, src, what="CLAP feature extractor")
    tokenizer = hub.from_pretrained(AutoTokenizer, src, what="CLAP tokenizer")
    cfg = run_config(hf, features, out.resolve())
    model = HFClap(cfg.model, clap=hf)
    staging = out.parent / f".{out.name}.processor-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer.save_pretrained(str(staging))
        features.save_pretrained(str(staging))
        tokenizer_path = cfg.data.tokenizer
        cfg.data.tokenizer = str(staging)  # write_export copies it into EXPORT/tokenizer
        write_export(model, cfg, out, dtype=dtype, overwrite=overwrite, extra={"source": str(src), "converted": "transformers ClapModel"})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _point_tokenizer_home(out, tokenizer_path)
    return out


def _point_tokenizer_home(out: Path, tokenizer_path: str) -> None:
    """config.yaml / export.json name the export's own tokenizer/ (not the staging folder it was copied from)."""
    import json

    from alm.config import from_yaml_text, to_yaml
    from alm.io import atomic_write_text

    cfg = from_yaml_text((out / "config.yaml").read_text(), str(out / "config.yaml"))
    cfg.data.tokenizer = tokenizer_path
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    meta = json.loads((out / "export.json").read_text())
    if meta.get("tokenizer"):
        meta["tokenizer"]["path"] = tokenizer_path
    atomic_write_text(out / "export.json", json.dumps(meta, indent=1))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="a transformers ClapModel folder (save_pretrained, with its processor) "
                                              "or a hub id, e.g. laion/clap-htsat-unfused")
    p.add_argument("--out", required=True, help="the export folder to write")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="floating weights (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")


def run(a: argparse.Namespace) -> int:
    out = convert(a.src, a.out, a.dtype, a.overwrite)
    print(f"[alm] converted {a.src} -> {out} (stage clap, model.tower: hf)")
    return 0
