"""Packaging: every package folder is installed, inside the alm namespace only."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_and_lives_under_alm():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    mapped = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert all(name == "alm" or name.startswith("alm.") for name in listed), listed
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "alm").rglob("__init__.py")}
    found |= {name for name, folder in mapped.items() if (REPO / folder / "__init__.py").is_file()}
    assert found == listed, f"setup.cfg packages differ from the package folders: {sorted(found ^ listed)}"
    assert mapped == {"alm.data_prep": "data_prep", "alm.launch": "launch"}


def test_the_mapped_packages_import_under_alm():
    import alm.data_prep.cli
    import alm.launch.slurm

    assert Path(alm.launch.slurm.__file__).parent == REPO / "launch"
    assert Path(alm.data_prep.cli.__file__).parent == REPO / "data_prep"
