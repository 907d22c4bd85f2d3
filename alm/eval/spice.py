"""SPICE (Anderson et al. 2016) as pycocoevalcap runs it: the SPICE 1.0 jar on a JSON file of
{"image_id", "test", "refs"} items, scored per id; the corpus value is the mean of the ids'
"All" F-scores. SPICE parses captions with Stanford CoreNLP 3.6.0, whose two jars pycocoevalcap
downloads at first use: here they are given by local path (--corenlp-dir) and nothing downloads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from alm.errors import UserError

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
MAIN_CLASS = "edu.anu.spice.SpiceScorer"  # the Main-Class of spice-1.0.jar


def default_spice_jar() -> Path:
    import pycocoevalcap

    return Path(pycocoevalcap.__file__).parent / "spice" / "spice-1.0.jar"


def check_paths(corenlp_dir: str | Path, spice_jar: str | Path | None) -> tuple[Path, Path]:
    """(spice jar, CoreNLP dir), checked before scoring: UserError naming what is missing."""
    corenlp_dir = Path(corenlp_dir)
    missing = [name for name in CORENLP_JARS if not (corenlp_dir / name).is_file()]
    if missing:
        raise UserError(f"--corenlp-dir {corenlp_dir}: no {', '.join(missing)} there (SPICE 1.0 needs both "
                        f"{' and '.join(CORENLP_JARS)}, from stanford-corenlp-full-2015-12-09.zip)")
    jar = Path(spice_jar) if spice_jar else default_spice_jar()
    if not jar.is_file():
        raise UserError(f"--spice-jar {jar}: no such file (expected spice-1.0.jar with its lib/ folder beside it)")
    if shutil.which("java") is None:
        raise UserError("--corenlp-dir given but no `java` on PATH: SPICE is a Java program")
    return jar, corenlp_dir


def spice(gts: dict, res: dict, jar: Path, corenlp_dir: Path) -> tuple[float, list]:
    """(mean "All" F-score over ids, [ids whose score is NaN]) for pycocoevalcap-style gts/res
    ({id: [refs]}, {id: [hyp]}); the class path is the jar, its lib/*, and the CoreNLP jars."""
    items = [{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in gts]
    class_path = os.pathsep.join([str(jar), str(jar.parent / "lib" / "*"), str(corenlp_dir / "*")])
    with tempfile.TemporaryDirectory(prefix="alm-spice-") as tmp:
        src, out = Path(tmp) / "input.json", Path(tmp) / "output.json"
        src.write_text(json.dumps(items))
        p = subprocess.run(["java", "-Xmx8G", "-cp", class_path, MAIN_CLASS, str(src), "-out", str(out), "-subset", "-silent"],
                           capture_output=True, text=True)
        if p.returncode != 0 or not out.is_file():
            raise RuntimeError(f"SPICE ({jar}) failed with status {p.returncode}: {p.stderr.strip()[-2000:]}")
        scored = {item["image_id"]: item["scores"]["All"]["f"] for item in json.loads(out.read_text())}
    values = [float(scored[i]) if scored.get(i) is not None else math.nan for i in gts]
    nan_ids = [i for i, v in zip(gts, values) if math.isnan(v)]
    return sum(values) / len(values), nan_ids
