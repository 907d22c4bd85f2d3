"""alm/eval/results.py: the layout every `alm eval` subcommand writes, its table, nested metrics."""

from __future__ import annotations

import json
import math

import pytest

from alm.eval import results


def test_results_layout_and_nested_metrics_in_the_table(tmp_path):
    res = results.results("retrieval", {"text_to_audio": {"R@1": 0.25, "R@10": 0.75}, "mean": 0.5, "n_pairs": 8}, 8,
                          {"embedder": "x"})
    assert list(res) == ["task", "metrics", "n", "config"]
    path = results.write_results(tmp_path / "sub" / "results.json", res)
    assert json.loads(path.read_text()) == res
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left beside it
    table = results.format_table(res, {"fense": "needs weights"}).splitlines()
    assert table == ["retrieval: n=8",
                     "  text_to_audio/R@1   0.2500",
                     "  text_to_audio/R@10  0.7500",
                     "  mean                0.5000",
                     "  n_pairs             8",
                     "  fense               absent: needs weights"]
    assert results.flat_metrics(res["metrics"]) == {"text_to_audio/R@1": 0.25, "text_to_audio/R@10": 0.75, "mean": 0.5, "n_pairs": 8}


def test_nan_is_refused_not_written(tmp_path):
    with pytest.raises(ValueError):
        results.write_results(tmp_path / "r.json", results.results("asr", {"wer": math.nan}, 1, {}))
    assert not list(tmp_path.iterdir())
