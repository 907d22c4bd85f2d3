"""What a newcomer reads: --help of alm / train / tokenize, `alm recipes`, --print-config, the demo's next steps."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
import yaml

from alm.cli import PUBLIC_KEYS, main
from alm.config import load_recipe, to_yaml
from alm.recipes_index import count_parameters, header_line, list_recipes, shipped_recipes_dir
from helpers import REPO, TINY

SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))


def _exit_code(argv: list[str]) -> int:
    """main(argv)'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_top_level_help_names_recipes_and_train(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "alm recipes" in out and "--print-config" in out and "alm prep synthetic" in out


def test_tokenize_help_exits_0_with_an_overview(capsys):
    for flag in ("--help", "-h"):
        assert main(["tokenize", flag]) == 0
        out = capsys.readouterr().out
        for word in ("semantic", "codec", "text", "semantic.npy", "OUT/tokenizer/", "codes.npy", "codec.json",
                     "spm.model", "text_tokenizer.json", "errors.json"):
            assert word in out, word


def test_tokenize_without_a_tokenizer_is_a_usage_error(capsys):
    assert main(["tokenize"]) == 2
    assert "usage: alm tokenize {semantic,codec,text,mulan}" in capsys.readouterr().err
    assert main(["tokenize", "hubert"]) == 2
    assert "unknown tokenizer 'hubert'" in capsys.readouterr().err


@pytest.mark.parametrize("kind, defaults", [
    ("semantic", ["(default: 6,", "(default: 500,", "(default: ssl,", "(default: 200000)", "(default: 0)", "(default: cpu)"]),
    ("codec", ["(default: all the codec has)", "(default: 16)", "(default: cpu)"]),
    ("text", ["(default: unigram)", "(default: 1.0)", "(default: 1)"]),
])
def test_tokenizer_help_shows_defaults(capsys, kind, defaults):
    assert _exit_code(["tokenize", kind, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for d in defaults:
        assert d in out, (kind, d)
    assert "(default: None)" not in out and "(default: False)" not in out


def test_train_help_lists_recipes_keys_and_print_config(capsys):
    assert _exit_code(["train", "--help"]) == 0
    out = capsys.readouterr().out
    recipes = [r for r in list_recipes() if r["kind"] == "recipe"]
    assert len(recipes) >= 8
    lines = out.splitlines()
    for r in recipes:  # each shipped recipe on one line with its stage
        rel = Path(r["path"]).relative_to(REPO).as_posix()
        assert any(rel in line and line.split()[-1] == r["stage"] for line in lines), rel
    for key, _ in PUBLIC_KEYS:
        assert key in out
    for key in ("run_dir", "seed", "resume", "init_from", "optim.groups", "trainer.activation_checkpointing",
                "data.train_shards", "trainer.max_steps", "trainer.strategy"):
        assert key in out, key
    assert "--print-config" in out


def test_public_keys_are_real_config_keys():
    cfg = load_recipe(TINY)
    for keys, _ in PUBLIC_KEYS:
        for key in keys.split(", "):
            if key == "model.*":
                continue
            obj = cfg
            for part in key.split("."):
                assert hasattr(obj, part), key
                obj = getattr(obj, part)


def test_print_config_prints_every_key_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.chdir(tmp_path)
    cache = Path(os.environ["ALM_CACHE"])
    before = sorted(cache.rglob("*")) if cache.exists() else []
    overrides = [f"run_dir={tmp_path / 'run'}", "trainer.max_steps=7", "model.n_layer=3"]
    assert main(["train", TINY, *overrides[:1], "--print-config", *overrides[1:]]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == yaml.safe_load(to_yaml(load_recipe(TINY, overrides)))
    printed = yaml.safe_load(out)
    assert printed["trainer"]["max_steps"] == 7 and printed["model"]["n_layer"] == 3
    assert set(printed) >= {"stage", "run_dir", "seed", "resume", "init_from", "trainer", "data", "optim", "wandb", "model"}
    assert list(tmp_path.iterdir()) == []  # no run dir, nothing in the working directory
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == before  # no synthetic data made


def test_print_config_with_a_bad_override_is_one_line(capsys):
    assert main(["train", TINY, "trainer.max_stepz=3", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "key 'trainer.max_stepz'" in err and len(err.strip().splitlines()) == 1


def test_shipped_recipes_dir_is_the_repo_folder():
    assert shipped_recipes_dir() == REPO / "recipes"


def test_recipes_json_lists_every_shipped_recipe_with_its_stage(capsys):
    assert main(["recipes", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["recipe"] for e in entries] == [p.relative_to(REPO / "recipes").as_posix() for p in SHIPPED]
    for e, path in zip(entries, SHIPPED):
        raw = yaml.safe_load(path.read_text())
        first = next(line for line in path.read_text().splitlines() if line.strip("# "))
        assert e["header"] == first.lstrip("#").strip()
        if "stages" in raw:
            assert e["kind"] == "pipeline" and e["stages"] == [s["name"] for s in raw["stages"]] and e["params"] is None
            continue
        assert e["kind"] == "recipe" and e["stage"] == raw["stage"]
        assert e["train_shards"] == raw["data"]["train_shards"] and e["val_shards"] == raw["data"]["val_shards"]
        assert isinstance(e["params"], int) and e["params"] > 0
    by_name = {e["recipe"]: e for e in entries}
    assert by_name["tiny/semantic.yaml"]["params"] == 796_032  # 4 layers x 128 wide, 66-token vocab, tied
    assert 300e6 < by_name["soundstorm.yaml"]["params"] < 350e6  # README's table: ~307 M


def test_meta_device_count_equals_a_real_model():
    from alm.stages import get_stage

    for name in ("semantic", "coarse", "soundstorm"):
        path = REPO / "recipes" / "tiny" / f"{name}.yaml"
        cfg = load_recipe(path)
        real = get_stage(cfg.stage).model(cfg.model)
        assert count_parameters(path) == sum(p.numel() for p in real.parameters()), name


def test_recipes_text_listing(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for path in SHIPPED:
        rel = path.relative_to(REPO).as_posix()
        line = next(line for line in out.splitlines() if rel in line)
        raw = yaml.safe_load(path.read_text())
        assert (raw.get("stage") or "pipeline") in line.split()
        assert header_line(path) in line
    assert "train_shards=synthetic" in out and "stages: semantic_fit, semantic_tokens, codec_tokens" in out


def test_recipes_missing_folder_is_a_user_error(tmp_path, monkeypatch, capsys):
    import alm.recipes_index as index

    monkeypatch.setattr(index, "shipped_recipes_dir", lambda: tmp_path / "nowhere")
    assert main(["recipes"]) == 2
    assert "nowhere: recipes folder not found" in capsys.readouterr().err


def test_demo_next_steps_are_real_commands(tmp_path, monkeypatch, capsys):
    """Every command the demo suggests is printed and parses with the real parsers (flags exist, recipe loads)."""
    from alm.demo import next_steps, suggested_commands
    from alm.stages import all_commands

    out = tmp_path / "alm-demo"
    text = "\n".join(next_steps(out, out / "generated.wav"))
    assert str(out / "generated.wav") in text and "Train on your own data" in text and "RUN_DIR/samples/" in text
    commands = suggested_commands(out)
    generate = {c.name: c for c in all_commands() if c.verb == "generate"}
    for name, command in commands.items():
        assert command in text, name
        args = shlex.split(command)
        assert args[0] == "alm", command
        if args[1] == "generate":
            p = argparse.ArgumentParser(exit_on_error=False)
            generate[args[2]].add_arguments(p)
            a = p.parse_args(args[3:])
            exports = [a.semantic, a.coarse, a.fine] if args[2] == "audiolm" else [a.export_dir]
            assert a.out.startswith(str(out)) and all(Path(e).parent == out / "exports" for e in exports)
        elif args[1] == "train":
            cfg = load_recipe(args[2], args[3:])
            assert cfg.trainer.audio_samples > 0 and cfg.data.codec  # it does write RUN_DIR/samples
            assert cfg.run_dir.startswith(str(out))
        else:  # in the clone, as the note says; --dry-run submits and writes nothing
            assert args[1:3] == ["launch", "slurm"] and "--dry-run" in args
            monkeypatch.chdir(REPO)
            before = sorted(p.name for p in REPO.iterdir())
            assert main(args[1:]) == 0
            assert "#SBATCH" in capsys.readouterr().out
            assert sorted(p.name for p in REPO.iterdir()) == before
