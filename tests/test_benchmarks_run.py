"""The benchmarks are not tests (they measure, on a quiet machine), but they must keep running:
each one is run here with tiny settings and must print its ratio line. Nothing is timed."""

import subprocess
import sys

import pytest

from helpers import REPO, env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script,args,expect", [
    ("step_overhead.py", ["--rounds", "1", "--steps", "3", "--warmup", "1"], "overhead ratio (alm / bare)"),
    ("sampling.py", ["--layers", "1", "--width", "32", "--heads", "2", "--vocab", "64", "--tokens", "12",
                     "--frames", "10", "--levels", "3", "--codebook", "16", "--semantic-vocab", "8",
                     "--first-steps", "4"], "fewer passes"),
    ("loader_throughput.py", ["--batches", "2", "--clips", "48", "--acoustic-clips", "24", "--compressed-clips", "12",
                              "--librilight-files", "3", "--decode-seconds", "3", "--acoustic-workers", "2",
                              "--acoustic-steps", "2"], "audio-hours/minute"),
    ("resume_time.py", ["--steps", "2", "20", "--rounds", "1", "--samples", "200", "--per-shard", "50", "--buffer", "16"],
     "resume time ratio"),
    ("demo_quality.py", ["--clips", "8", "--val", "4", "--iters", "2"], "held-out SI-SNR (dB) per kind"),
    ("tokenize_memory.py", ["--minutes", "0.1", "0.5", "--batch-seconds", "3"], "peak RSS ratio"),
    ("musicgen_sampling.py", ["--frames", "6", "--dim", "32", "--layers", "1", "--heads", "2", "--text-len", "4",
                              "--repeats", "1"], "batched / two passes"),
    ("audiopalm_step.py", ["--steps", "3", "--warmup", "1", "data.num_workers=0"], "ZeRO-3 / ZeRO-2 ratio"),
])
def test_benchmark_runs(script, args, expect):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert expect in p.stdout
