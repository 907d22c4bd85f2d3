"""The stage contract: one Stage object per stage, one torch-free table, the CLI and config read it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from alm.config import load_recipe
from alm.errors import UserError
from alm.stages import STAGE_NAMES, all_commands, get_stage
from alm.stages.spec import Stage
from alm.training.optim import apply_freeze, configure_optimizers, param_groups

from helpers import REPO, TINY


def test_table_and_config_validation_need_neither_torch_nor_lightning():
    code = ("import sys; import alm.stages; from alm.config import load_recipe; "
            f"assert 'torch' not in sys.modules and 'lightning' not in sys.modules; "
            f"load_recipe({TINY!r}); assert 'lightning' not in sys.modules, 'validation imported lightning'; "
            "print(sorted(alm.stages.STAGE_NAMES))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "semantic" in p.stdout


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_stage_declares_a_complete_stage(name):
    stage = get_stage(name)
    assert isinstance(stage, Stage) and stage.name == name
    for field in ("model_config", "model", "make_example", "collate", "example_length", "loss"):
        assert getattr(stage, field) is not None, f"{name}: {field}"
    cfg = load_recipe(REPO / "recipes" / "tiny" / f"{name}.yaml")
    model = stage.model(cfg.model)
    assert isinstance(model, torch.nn.Module)
    assert hasattr(model, "init_weights"), "models built partitioned must re-initialise through gathered params"


def test_cli_commands_come_from_the_stages():
    names = {(c.verb, c.name) for c in all_commands()}
    assert {("generate", "semantic"), ("generate", "audiolm"), ("generate", "soundstorm")} <= names
    p = subprocess.run([sys.executable, "-m", "alm", "generate", "--help"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0 and "soundstorm" in p.stdout and "audiolm" in p.stdout


def test_unknown_stage_on_the_command_line_is_reported_against_the_command_line():
    from alm.config import RecipeError

    with pytest.raises(RecipeError, match="command line: key 'stage': unknown stage 'semantik'"):
        load_recipe(TINY, ["stage=semantik"])


def _tiny(groups: str = "[]"):
    cfg = load_recipe(TINY, ["model.n_layer=2", "model.d_model=32", "model.n_head=2", f"optim.groups={groups}"])
    return cfg, get_stage("semantic").model(cfg.model)


def test_param_groups_freeze_and_own_lr():
    cfg, model = _tiny('[{params: "blocks.0.*", freeze: true}, {params: "embed.*", lr: 0.5, weight_decay: 0.0}]')
    frozen = apply_freeze(model, cfg)
    assert frozen == sum(1 for n, _ in model.named_parameters() if n.startswith("blocks.0."))
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("blocks.0."))
    opt = configure_optimizers(model, cfg)["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for n, p in model.named_parameters() if n.startswith("blocks.0."))
    embed = next(g for g in opt.param_groups if any(p is model.embed.weight for p in g["params"]))
    assert embed["initial_lr"] == 0.5  # the group's peak lr; the schedule scales it like the others
    assert embed["weight_decay"] == 0.0
    rest = next(g for g in opt.param_groups if any(p is model.blocks[1].attn.qkv.weight for p in g["params"]))
    assert rest["initial_lr"] == cfg.optim.lr and rest["weight_decay"] == cfg.optim.weight_decay


def test_default_groups_are_decay_and_no_decay():
    cfg, model = _tiny()
    groups = param_groups(model, cfg)
    assert [g["weight_decay"] for g in groups] == [cfg.optim.weight_decay, 0.0]
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])


def test_a_group_pattern_that_matches_nothing_is_an_error():
    cfg, model = _tiny('[{params: "text_encoder.*", freeze: true}]')
    with pytest.raises(UserError, match=r"optim.groups\[0\].params='text_encoder.\*' matches no parameter"):
        apply_freeze(model, cfg)


def test_rotary_table_stays_fp32_under_bf16():
    cfg, model = _tiny()
    model = model.to(torch.bfloat16)
    tokens = torch.randint(0, cfg.model.vocab_size, (1, 8))
    model(tokens)
    assert model.rope.table.dtype == torch.float32
    assert "rope" not in model.state_dict()  # not a buffer: nothing in checkpoints/exports


def test_activation_checkpointing_gives_the_same_gradients():
    from alm.training.module import checkpoint_blocks

    cfg, model = _tiny()
    cfg2, model2 = _tiny()
    model2.load_state_dict(model.state_dict())
    assert checkpoint_blocks(model2) == cfg.model.n_layer
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 16))
    for m in (model, model2):
        torch.manual_seed(0)
        m(tokens).float().pow(2).mean().backward()
    for (n, a), (_, b) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in model2.named_parameters()]


def test_load_pretrained_runs_at_a_fresh_start_but_not_under_init_from(tmp_path, monkeypatch):
    """Stage.load_pretrained fills public weights into the freshly built model (before optimizer and
    freezing); init_from (an alm export) takes precedence, and a resume never reloads them."""
    import dataclasses

    from alm.training.module import StageModule

    calls = []

    def pretrained(model, cfg, gathered):
        calls.append(cfg.stage)
        with gathered(list(model.parameters())), torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)

    cfg, _ = _tiny()
    stage = dataclasses.replace(get_stage("semantic"), load_pretrained=pretrained)
    module = StageModule(cfg, stage)
    module.configure_model()
    assert calls == ["semantic"]
    assert all(bool((p == 0.5).all()) for p in module.model.parameters())
    from omegaconf import OmegaConf

    with_init = OmegaConf.merge(OmegaConf.structured(cfg), {"init_from": str(tmp_path / "export")})
    module = StageModule(OmegaConf.to_object(with_init), stage)
    import alm.training.init_from as init_from

    loaded = []
    monkeypatch.setattr(init_from, "load_export_weights", lambda model, c, gathered: loaded.append(c.init_from))
    module.configure_model()
    assert calls == ["semantic"] and loaded == [str(tmp_path / "export")]
