"""`alm export`: refuses to replace, normal file modes, dtype, sharded layout, tied weights; load_pretrained reads both."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from alm.cli import main as cli
from alm.config import load_recipe, to_yaml
from alm.errors import UserError
from alm.export import INDEX, WEIGHTS, build_model, export, load_pretrained, parse_size, tied_groups, write_weights

TINY = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "semantic.yaml")
SMALL = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.max_seq_len=64", "data.max_len=32"]


def umask_mode(kind: int = 0o666) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return kind & ~mask


def fake_run(root: Path, step: int = 5, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A run dir with one DDP-style checkpoint of a tiny random semantic LM (and a k-means tokenizer)."""
    from alm.tokenizers.semantic import SemanticTokenizer, SemanticTokenizerConfig

    tok = root / "tokens" / "tokenizer"
    if not tok.is_dir():
        SemanticTokenizer(SemanticTokenizerConfig(features="logmel", n_clusters=64), torch.randn(64, 64),
                          torch.zeros(64), torch.ones(64), features=lambda a: a).save(tok)
    cfg = load_recipe(TINY, [f"run_dir={root / 'run'}", *SMALL, f"data.tokenizer={tok}"])
    torch.manual_seed(seed)
    model = build_model(cfg)
    ckpt = root / "run" / "checkpoints" / f"step-{step:09d}"
    ckpt.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt / "checkpoint.ckpt")
    (ckpt / "config.yaml").write_text(to_yaml(cfg))
    return root / "run", model.eval()


def logits(model, dtype=torch.float32):
    x = torch.arange(12)[None] % 60
    with torch.no_grad():
        return model(x).to(dtype)


def test_export_files_modes_ties_and_refusals(tmp_path):
    run, model = fake_run(tmp_path)
    out = tmp_path / "export"
    export(run, out)
    meta = json.loads((out / "export.json").read_text())
    assert meta["stage"] == "semantic" and meta["step"] == 5 and meta["dtype"] == "fp32"
    assert meta["tied_weights"] == [["embed.weight", "lm_head.weight"]] and meta["files"] == [WEIGHTS]
    assert len(meta["tokenizer"]["fingerprint"]) == 64
    for f in (out / WEIGHTS, out / "tokenizer" / "kmeans.safetensors", out / "config.yaml", out / "export.json"):
        assert stat.S_IMODE(f.stat().st_mode) == umask_mode(), f
    assert stat.S_IMODE(out.stat().st_mode) == umask_mode(0o777)
    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "embed.weight" in f.keys()  # stored once
    loaded = load_pretrained(out)
    assert loaded.lm_head.weight is loaded.embed.weight
    torch.testing.assert_close(logits(loaded), logits(model))
    # an existing export is replaced only with --overwrite; anything else is never replaced
    with pytest.raises(UserError, match=r"already holds an export \(of .*step-000000005, step 5\): pass --overwrite"):
        export(run, out)
    run2, model2 = fake_run(tmp_path / "b", step=9, seed=1)
    export(run2, out, overwrite=True)
    assert json.loads((out / "export.json").read_text())["step"] == 9
    torch.testing.assert_close(logits(load_pretrained(out)), logits(model2))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary dirs left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an alm export; choose another --out"):
        export(run, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_export_without_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert cli(["export", str(tmp_path / "run"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"alm export: {tmp_path / 'run'}: the run has no complete checkpoint yet (nothing to export)"]
    assert cli(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_sharded_and_bf16_exports_load(tmp_path):
    run, model = fake_run(tmp_path)
    out = tmp_path / "sharded"
    export(run, out, max_shard_size="20KB")
    index = json.loads((out / INDEX).read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 2 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (out / WEIGHTS).exists()
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in state.values())
    for f in files:  # each shard within the limit, unless it is one tensor larger than that
        names = [k for k, v in index["weight_map"].items() if v == f]
        assert sum(state[k].numel() * 4 for k in names) <= 20_000 or len(names) == 1
    torch.testing.assert_close(logits(load_pretrained(out)), logits(model))
    half = tmp_path / "bf16"
    cli(["export", str(run), "--out", str(half), "--dtype", "bf16"])
    loaded = load_pretrained(half)
    assert loaded.embed.weight.dtype == torch.bfloat16 and json.loads((half / "export.json").read_text())["dtype"] == "bf16"
    assert (half / WEIGHTS).stat().st_size < 0.6 * index["metadata"]["total_size"]  # 2 bytes a weight, not 4
    torch.testing.assert_close(logits(loaded, torch.float32), logits(model), atol=0.05, rtol=0.05)
    assert load_pretrained(half, dtype=torch.float32).embed.weight.dtype == torch.float32


def test_ties_found_from_storage_and_integer_tensors_kept(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4, bias=False)
            self.b = torch.nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight  # tied under names that mean nothing special
            self.register_buffer("counts", torch.arange(3))

    net = Net().to(torch.bfloat16)
    assert tied_groups(net) == [["a.weight", "b.weight"]]
    info = write_weights(net, tmp_path, 10**9, "test")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / WEIGHTS))
    assert info["tied_weights"] == [["a.weight", "b.weight"]] and set(saved) == {"a.weight", "counts"}
    assert saved["counts"].dtype == torch.int64 and saved["a.weight"].dtype == torch.bfloat16


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1500") == 1500
    assert parse_size("0.5MB") == 500_000
    for bad in ("", "5XB", "-1GB", "0"):
        with pytest.raises(UserError, match="max-shard-size"):
            parse_size(bad)


def test_stage_export_hooks_extra_files_and_other_formats(tmp_path, monkeypatch):
    """Stage.export_files adds files to every export (entries merged into export.json);
    Stage.export_formats serves `alm export --format NAME`; an unknown format names the known ones."""
    import dataclasses

    import alm.export as export_mod
    from alm.stages import get_stage

    def extra(model, cfg, folder):
        (folder / "transformers").mkdir()
        (folder / "transformers" / "config.json").write_text("{}")
        return {"transformers": "transformers"}

    def other(model, cfg, folder):
        torch.save(model.state_dict(), folder / "other.pt")

    stage = dataclasses.replace(get_stage("semantic"), export_files=extra, export_formats={"other": other})
    monkeypatch.setattr(export_mod, "get_stage", lambda name: stage)
    run, _ = fake_run(tmp_path)
    out = export(run, tmp_path / "export")
    assert (out / "transformers" / "config.json").is_file() and (out / WEIGHTS).is_file()
    assert json.loads((out / "export.json").read_text())["transformers"] == "transformers"
    other_out = export(run, tmp_path / "other", fmt="other")
    assert (other_out / "other.pt").is_file() and not (other_out / WEIGHTS).exists()
    assert json.loads((other_out / "export.json").read_text())["format"] == "other"
    with pytest.raises(UserError, match=r"--format 'nope': stage semantic exports as alm, other"):
        export(run, tmp_path / "nope", fmt="nope")
    assert not (tmp_path / "nope").exists()
