from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alm.config import RecipeError, RunConfig, load_recipe, schema_for

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "stages" in OmegaConf.load(p))
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if p not in PIPELINES)
TINY = REPO / "recipes" / "tiny" / "semantic.yaml"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def tiny_with(tmp_path, old: str, new: str) -> Path:
    text = TINY.read_text()
    assert old in text
    return write(tmp_path, text.replace(old, new, 1))


def test_tiny_recipe_loads_with_overrides():
    cfg = load_recipe(TINY, ["trainer.max_steps=7", "trainer.strategy=deepspeed", "trainer.zero_stage=3",
                             "trainer.offload=true", "run_dir=/tmp/x", "seed=3", "data.train_shards=a/*.tar",
                             "trainer.devices=2", "trainer.num_nodes=2", "trainer.precision=bf16-mixed",
                             "trainer.ckpt_every_n_steps=5"])
    assert isinstance(cfg, RunConfig)
    assert (cfg.trainer.max_steps, cfg.trainer.zero_stage, cfg.trainer.offload, cfg.seed) == (7, 3, True, 3)
    assert cfg.run_dir == "/tmp/x" and cfg.data.train_shards == "a/*.tar"
    assert cfg.model.vocab_size == 66


def test_unknown_key_names_key_and_file(tmp_path):
    p = tiny_with(tmp_path, "  max_steps: 200", "  max_stepz: 200")
    with pytest.raises(RecipeError, match=r"recipe\.yaml: key 'trainer\.max_stepz'"):
        load_recipe(p)


def test_unknown_model_key(tmp_path):
    p = tiny_with(tmp_path, "  n_layer: 4", "  n_layers: 4")
    with pytest.raises(RecipeError, match=r"key 'model\.n_layers'"):
        load_recipe(p)


def test_wrong_type_names_key(tmp_path):
    p = tiny_with(tmp_path, "  batch_size: 16", "  batch_size: sixteen")
    with pytest.raises(RecipeError, match=r"recipe\.yaml: key 'data\.batch_size'.*sixteen"):
        load_recipe(p)


def test_missing_required_value(tmp_path):
    p = tiny_with(tmp_path, "  max_steps: 200\n", "")
    with pytest.raises(RecipeError, match=r"missing required value.*trainer\.max_steps"):
        load_recipe(p)


def test_bad_choice_and_override_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"key 'trainer\.strategy': expected one of"):
        load_recipe(TINY, ["trainer.strategy=fsdp"])
    with pytest.raises(RecipeError, match=r"command-line override: key 'trainer\.devicez'"):
        load_recipe(TINY, ["trainer.devicez=2"])
    with pytest.raises(RecipeError, match=r"not of the form key=value"):
        load_recipe(TINY, ["trainer.devices"])
    with pytest.raises(RecipeError, match=r"key 'trainer\.zero_stage'"):
        load_recipe(TINY, ["trainer.zero_stage=4"])
    with pytest.raises(RecipeError, match=r"key 'stage': unknown stage 'nope'"):
        load_recipe(TINY, ["stage=nope"])
    with pytest.raises(RecipeError, match=r"key 'model\.d_model'"):
        load_recipe(TINY, ["model.d_model=130"])


def test_not_a_file_or_yaml(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "stage: [semantic\n"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_recipes_are_complete(path):
    """Every shipped recipe loads and states every key of its schema (complete and flat)."""
    load_recipe(path)
    raw = OmegaConf.to_container(OmegaConf.load(path))
    schema = OmegaConf.to_container(schema_for(raw["stage"], str(path)))

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") | {prefix + k} if isinstance(v, dict) else {prefix + k}
        return out  # a dict counts as stated too (a dict-valued key, e.g. model.hf_config, has no schema keys)

    missing = keys(schema) - keys(raw)
    assert not missing, f"{path} does not state: {sorted(missing)}"


def test_a_shard_spec_with_colons_stays_text_on_the_command_line():
    """YAML reads 'a :: b' (colon + space) as a mapping; an override's shard spec is the user's text."""
    cfg = load_recipe(TINY, ["data.train_shards=a/*.tar :: b/*.tar", "data.val_shards=x/*.tar @3 :: y/*.tar @1",
                             "optim.groups=[{params: 'head.*', lr: 0.1}]"])
    assert cfg.data.train_shards == "a/*.tar :: b/*.tar"
    assert cfg.data.val_shards == "x/*.tar @3 :: y/*.tar @1"
    assert cfg.optim.groups[0].lr == 0.1  # real YAML values still parse
