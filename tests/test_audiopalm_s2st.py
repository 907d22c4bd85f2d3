"""AudioPaLM S2ST and the combined tasks, unit level: the examples' layout (tag, source, target, EOS), the
prompt carries no loss, a sample without target tokens (or translation) never becomes an example of a task
that needs them and is counted, the separator splits a combined output back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alm.config import load_recipe
from alm.data.shards import npy_bytes
from alm.errors import UserError
from alm.models.audiopalm import layout_of
from alm.stages import audiopalm as stage
from helpers import REPO
from test_audiopalm import K, make_lm

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = REPO / "recipes" / "tiny" / "audiopalm.yaml"
TAGS = ["[ASR English]", "[AST English French]", "[S2ST English French]", "[ASR AST English French]",
        "[ASR AST S2ST English French]"]


@pytest.fixture
def cfg(tmp_path):
    make_lm(tmp_path / "lm")
    cfg = load_recipe(RECIPE, [f"model.pretrained={tmp_path / 'lm'}", f"model.audio_tokens={K}", "data.max_len=64",
                               f"model.task_tags={json.dumps(TAGS)}"])
    stage.resolve_model_config(cfg)
    return cfg


def sample(units, target=None, text="HELLO WORLD", translation="BONJOUR"):
    meta = {"transcript": text, **({"translation": translation} if translation else {})}
    s = {"__key__": "common_voice_en_1", "json": json.dumps(meta).encode(), "semantic.npy": npy_bytes(np.array(units))}
    if target is not None:
        s[stage.TARGET_MEMBER] = npy_bytes(np.array(target))
    return s


def make(cfg, *tasks, weights=()):
    cfg.data.tasks, cfg.data.task_weights = list(tasks), list(weights)
    return stage.examples(cfg)


def test_task_tags_name_both_languages(cfg):
    assert [stage.task_tag(cfg.data, t) for t in ("s2st", "asr_ast", "asr_ast_s2st")] == TAGS[2:]
    assert stage.task_tag(cfg.data, "asr") == "[ASR English]"


def test_s2st_example_is_source_audio_then_target_audio(cfg):
    layout = layout_of(cfg.model)
    a = layout.audio_start
    ex = make(cfg, "s2st")(sample([3, 1, 4], target=[9, 2, 6, 5]), np.random.default_rng(0))
    assert ex["tokens"].tolist() == [0, layout.tag_id("[S2ST English French]"), a + 3, a + 1, a + 4,
                                     a + 9, a + 2, a + 6, a + 5, 0]
    assert ex["n_prompt"] == 5  # BOS, tag, 3 source ids: no loss there
    batch = stage.collate([ex])
    assert batch["targets"][0].tolist() == [-100] * 4 + [a + 9, a + 2, a + 6, a + 5, 0]


def test_combined_tasks_chain_transcript_separator_translation_speech(cfg):
    layout = layout_of(cfg.model)
    tok = stage.base_tokenizer(cfg.model)
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    a = layout.audio_start
    s = sample([3, 1], target=[7, 8])
    ex = make(cfg, "asr_ast")(s, np.random.default_rng(0))
    want = enc("HELLO WORLD") + enc(" | ") + enc("BONJOUR")
    assert ex["tokens"].tolist() == [0, layout.tag_id("[ASR AST English French]"), a + 3, a + 1, *want, 0]
    ex = make(cfg, "asr_ast_s2st")(s, np.random.default_rng(0))
    assert ex["tokens"].tolist() == [0, layout.tag_id("[ASR AST S2ST English French]"), a + 3, a + 1, *want,
                                     a + 7, a + 8, 0]
    assert ex["n_prompt"] == 4
    from alm.generate_audiopalm import split_combined

    out = ex["tokens"][ex["n_prompt"]:-1].tolist()
    transcript, translation, speech = split_combined(out, enc(" | "), layout.audio_start)
    assert (tok.decode(transcript), tok.decode(translation)) == ("HELLO WORLD", "BONJOUR")
    assert speech == [a + 7, a + 8]


def test_a_sample_without_target_tokens_is_no_s2st_example_and_is_counted(cfg):
    only = make(cfg, "s2st")
    rng = np.random.default_rng(0)
    assert only(sample([1, 2, 3]), rng) is None  # no target_semantic.npy member
    assert only(sample([1, 2, 3], target=[]), rng) is None  # an empty one
    assert only.lacking == {"s2st": 2}
    both = make(cfg, "asr", "s2st", "asr_ast_s2st", weights=[0.0, 1.0, 1.0])
    ex = both(sample([1, 2, 3], translation=None), rng)  # neither target speech nor translation: only ASR (weight 0)
    assert ex is None and both.lacking == {"asr": 0, "s2st": 1, "asr_ast_s2st": 1}
    both.p = np.array([1.0, 1.0, 1.0]) / 3
    ex = both(sample([1, 2, 3], translation=None), rng)
    assert ex["tokens"][1] == layout_of(cfg.model).tag_id("[ASR English]")


def test_a_target_too_long_for_max_len_is_skipped_and_ids_are_checked(cfg):
    m = make(cfg, "s2st")
    assert m(sample([1] * 30, target=[2] * 40), np.random.default_rng(0)) is None and m.skipped == 1
    with pytest.raises(ValueError, match="target_semantic.npy: semantic ids outside"):
        m(sample([1], target=[K]), np.random.default_rng(0))


def test_check_refuses_a_blank_separator(cfg, tmp_path):
    tok_dir = tmp_path / "semtok"
    tok_dir.mkdir()
    (tok_dir / "semantic_tokenizer.json").write_text(json.dumps({"n_clusters": K}))
    cfg.data.tokenizer = str(tok_dir)
    cfg.data.tasks, cfg.data.task_weights = ["asr_ast"], []
    cfg.data.separator = " "
    with pytest.raises(UserError, match="data.separator"):
        stage.check(cfg)
    cfg.data.separator = " | "
    stage.check(cfg)
