"""`python -m alm eval text ...` end to end: results.json's exact layout, values equal to the reference
libraries run directly on the same files, the table, one-line errors, metrics logged into a run's W&B run."""

from __future__ import annotations

import json
import struct
from importlib.metadata import version

from helpers import alm


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


HYPS = [{"id": "u3", "text": "It's twenty five past one."}, {"id": "u1", "text": "the colour of the sea"},
        {"id": "u2", "text": ""}, {"id": "u4", "text": "a dog barks at cars passing by"}]
REFS = [{"id": "u1", "text": "The color of the sea!"}, {"id": "u2", "text": "nothing was said here"},
        {"id": "u3", "text": "it is 25 past 1"}, {"id": "u4", "texts": ["A dog barks as cars pass by."]}]


def _files(tmp_path, refs=REFS):
    return _write(tmp_path / "h.jsonl", HYPS), _write(tmp_path / "r.jsonl", refs)


def _by_ref_order(hyps_rows=HYPS, refs_rows=REFS):
    hyp = {r["id"]: r["text"] for r in hyps_rows}
    return [hyp[r["id"]] for r in refs_rows], [r.get("texts", [r.get("text")]) for r in refs_rows]


def test_asr_results_layout_and_values_equal_jiwer(tmp_path):
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    h, r = _files(tmp_path)
    p = alm("eval", "text", "--task", "asr", "--hyps", str(h), "--refs", str(r), "--out", str(tmp_path / "res.json"))
    res = json.loads((tmp_path / "res.json").read_text())
    assert list(res) == ["task", "metrics", "n", "config"]
    assert res["task"] == "asr" and res["n"] == 4
    assert list(res["metrics"]) == ["wer", "cer", "substitutions", "deletions", "insertions", "hits"]
    assert res["config"]["normalize"] == "whisper_en" and res["config"]["jiwer"] == version("jiwer")
    hyps, refs = _by_ref_order()
    norm = EnglishTextNormalizer()
    words = jiwer.process_words([norm(x[0]) for x in refs], [norm(x) for x in hyps])
    assert res["metrics"]["wer"] == words.wer and res["metrics"]["deletions"] == words.deletions
    assert res["metrics"]["cer"] == jiwer.cer([norm(x[0]) for x in refs], [norm(x) for x in hyps])
    assert f"wer            {words.wer:.4f}" in p.stdout and "asr: n=4" in p.stdout
    alm("eval", "text", "--task", "asr", "--hyps", str(h), "--refs", str(r), "--normalize", "none", "--out", str(tmp_path / "raw.json"))
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["metrics"]["wer"] == jiwer.wer([x[0] for x in refs], hyps) and raw["config"]["normalize"] == "none"


def test_translation_results_layout_signature_and_values_equal_sacrebleu(tmp_path):
    import sacrebleu

    h, r = _files(tmp_path)
    p = alm("eval", "text", "--task", "translation", "--hyps", str(h), "--refs", str(r), "--tokenize", "intl",
            "--out", str(tmp_path / "res.json"))
    res = json.loads((tmp_path / "res.json").read_text())
    assert list(res) == ["task", "metrics", "n", "config", "signature", "chrf_signature"] and list(res["metrics"]) == ["bleu", "chrf"]
    hyps, refs = _by_ref_order()
    bleu = sacrebleu.corpus_bleu(hyps, [[x[0] for x in refs]], tokenize="intl")
    assert res["metrics"]["bleu"] == bleu.score
    assert res["metrics"]["chrf"] == sacrebleu.corpus_chrf(hyps, [[x[0] for x in refs]]).score
    assert res["signature"] == f"nrefs:1|case:mixed|eff:no|tok:intl|smooth:exp|version:{sacrebleu.__version__}"
    assert res["config"]["tokenize"] == "intl"
    assert "|nc:6|nw:0|" in res["chrf_signature"]
    assert f"signature       {res['signature']}" in p.stdout and f"chrf_signature  {res['chrf_signature']}" in p.stdout


def test_caption_results_and_absent_metrics_in_the_table(tmp_path):
    # --no-meteor: METEOR's JVM start (~10-20 s here) is covered once, in test_eval_text.py
    from alm.eval.caption import coco_metrics

    h, r = _files(tmp_path)
    p = alm("eval", "text", "--task", "caption", "--hyps", str(h), "--refs", str(r), "--out", str(tmp_path / "res.json"),
            "--no-meteor")
    res = json.loads((tmp_path / "res.json").read_text())
    assert list(res) == ["task", "metrics", "n", "config"]
    hyps, refs = _by_ref_order()
    assert res["metrics"] == coco_metrics(hyps, refs)
    assert list(res["metrics"]) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"]
    assert res["config"]["normalize"] == "basic"
    for name in ("meteor", "spice", "spider", "fense"):
        assert any(line.split()[:2] == [name, "absent:"] for line in p.stdout.splitlines()), p.stdout


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    h, r = _files(tmp_path, REFS[:2] + [{"id": "zz", "text": "x"}])
    p = alm("eval", "text", "--task", "asr", "--hyps", str(h), "--refs", str(r), check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert f"ids in {r} missing from {h}: 'zz'" in p.stderr and f"ids in {h} missing from {r}: 'u3', 'u4'" in p.stderr
    assert not (tmp_path / "results.json").exists()
    h, r = _files(tmp_path, REFS[:3] + [{"id": "u4", "texts": ["a", "b"]}])
    p = alm("eval", "text", "--task", "asr", "--hyps", str(h), "--refs", str(r), check=False)
    assert p.returncode == 2 and "--task asr takes one reference per id; several \"texts\" for ids 'u4'" in p.stderr
    p = alm("eval", "text", "--task", "translation", "--hyps", str(h), "--refs", str(r), "--normalize", "basic", check=False)
    assert p.returncode == 2 and "--normalize applies to --task asr only" in p.stderr
    p = alm("eval", "text", "--task", "asr", "--hyps", str(h), "--refs", str(r), "--run", str(tmp_path / "norun"), check=False)
    assert p.returncode == 2 and "wandb_id" in p.stderr


def _wandb_records(path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header crc32c, length, type; FULL = 1, FIRST = 2, MIDDLE = 3, LAST = 4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, pending, records = path.read_bytes(), 7, b"", []  # 7 bytes: the ":W&B" file header
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_run_gets_the_metrics_in_its_wandb_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb_id").write_text("evaltest0001\n")
    (run / "config.yaml").write_text("stage: semantic\nwandb:\n  project: alm-evaltest\n  mode: offline\n")
    h, r = _files(tmp_path)
    p = alm("eval", "text", "--task", "asr", "--hyps", str(h), "--refs", str(r), "--out", str(tmp_path / "res.json"),
            "--run", str(run))
    res = json.loads((tmp_path / "res.json").read_text())
    assert "logged 6 metrics to W&B run evaltest0001 (offline" in p.stdout
    (log,) = run.glob("wandb/offline-run-*-evaltest0001/run-evaltest0001.wandb")
    records = _wandb_records(log)
    assert [r.run.project for r in records if r.WhichOneof("record_type") == "run"] == ["alm-evaltest"]
    logged = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            logged.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
    assert {k: v for k, v in logged.items() if k.startswith("eval/")} == {f"eval/asr/{k}": v for k, v in res["metrics"].items()}
