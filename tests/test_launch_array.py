"""Pipeline stages as SLURM job arrays (`array: N`), rendered without a cluster: the script asks for
`--array=0-(N-1)`, each task's command gets its index, the next stage waits for the whole array."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from alm.launch.pipeline import array_command, load_pipeline
from alm.launch.slurm import LaunchError

REPO = Path(__file__).resolve().parents[1]

PIPELINE = """\
name: arr
stages:
  - name: fit
    command: alm tokenize semantic --shards data/a --out data/sem --features logmel --clusters 8 --fit-only
    tasks_per_node: 1
  - name: tokenize
    command: alm tokenize semantic --shards data/a --out data/sem
    array: 4
    tasks_per_node: 1
  - name: each
    command: echo part {array.index} of {array.count} > {pipeline.dir}/part-{array.index}.txt
    array: 3
    nodes: 2
    tasks_per_node: 1
  - name: after
    command: ls {stages.each.dir}
    tasks_per_node: 1
"""


def _dry_run(tmp_path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    p = subprocess.run([sys.executable, "-m", "alm", "launch", "slurm", str(path), "--dir", str(tmp_path / "pd"),
                        "--dry-run", "--no-resource-check"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_array_stages_render_with_their_index_and_the_next_stage_waits_for_all(tmp_path):
    rc, out, err = _dry_run(tmp_path, PIPELINE)
    assert rc == 0, err
    scripts = dict(s.split(":", 1) for s in out.split("# ===== stage ")[1:])
    assert list(scripts) == ["fit", "tokenize", "each", "after"]
    fit, tok, each, after = scripts.values()
    assert "--array" not in fit and f"--output={tmp_path}/pd/fit/slurm-%j.out" in fit
    assert re.findall(r"^#SBATCH --array=\S+", tok, re.M) == ["#SBATCH --array=0-3"]
    assert f"#SBATCH --output={tmp_path}/pd/tokenize/slurm-%A_%a.out" in tok  # one log per task
    assert ('"${PYTHON}" -m alm tokenize semantic --shards data/a --out data/sem --num-shards 4 '
            '--shard-index ${SLURM_ARRAY_TASK_ID}') in tok
    assert tok.splitlines()[0].startswith(" sbatch --dependency=afterok:<job of fit> --array=0-3 ")
    # any command: {array.index} / {array.count}; several tasks per array task run under srun
    assert "#SBATCH --array=0-2" in each and "srun --nodes=2" in each
    assert f"echo part ${{SLURM_ARRAY_TASK_ID}} of 3 > {tmp_path}/pd/part-${{SLURM_ARRAY_TASK_ID}}.txt" in each
    assert "afterok:<job of tokenize> (all 4 tasks of its array)" in each.splitlines()[0]
    assert "afterok:<job of each> (all 3 tasks of its array)" in after.splitlines()[0] and "--array" not in after
    for script in scripts.values():
        script = script.split("\n", 1)[1]
        check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    assert not (tmp_path / "pd").exists()


def test_array_command_rules():
    assert array_command("alm tokenize codec --shards a --out b", 8, "w") == \
        "alm tokenize codec --shards a --out b --num-shards 8 --shard-index ${SLURM_ARRAY_TASK_ID}"
    assert array_command("alm tokenize codec --num-shards {array.count} --shard-index {array.index}", 8, "w") == \
        "alm tokenize codec --num-shards 8 --shard-index ${SLURM_ARRAY_TASK_ID}"
    with pytest.raises(LaunchError, match="drop them from the command"):
        array_command("alm tokenize codec --shards a --out b --num-shards 8 --shard-index 0", 8, "w")
    with pytest.raises(LaunchError, match=r"runs the command 8 times; say which part each task does with \{array.index\}"):
        array_command("python make_things.py", 8, "w")


@pytest.mark.parametrize("stage, message", [
    ("{name: t, recipe: ../recipes/tiny/semantic.yaml, array: 2}", "only command stages can be job arrays"),
    ("{name: t, command: 'alm tokenize codec', array: 0}", r"key 'array': expected the number of tasks .* got 0"),
    ("{name: t, command: 'alm tokenize codec', array: '4'}", r"got '4'"),
    ("{name: t, command: 'alm tokenize codec', array: true}", r"got True"),
    ("{name: t, command: 'echo {array.index}'}", r"\{array.index\} needs `array: N` on the stage"),
])
def test_array_key_validation(tmp_path, stage, message):
    path = tmp_path / "launch" / "p.yaml"
    path.parent.mkdir()
    (tmp_path / "recipes" / "tiny").mkdir(parents=True)
    (tmp_path / "recipes" / "tiny" / "semantic.yaml").write_text((REPO / "recipes" / "tiny" / "semantic.yaml").read_text())
    path.write_text(f"stages:\n  - {stage}\n")
    with pytest.raises(LaunchError, match=message):
        load_pipeline(str(path))
