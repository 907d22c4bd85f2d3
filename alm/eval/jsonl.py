"""Hypothesis and reference files (JSON lines) for `alm eval text`, matched by id.

    hypotheses  one object a line: {"id": ..., "text": "..."}            (empty text allowed)
    references  one object a line: {"id": ..., "text": "..."} or {"id": ..., "texts": ["...", ...]}

An id is a JSON string or integer, compared as written (1 and "1" are different ids). Blank lines
are skipped. Every id must be on both sides exactly once: a duplicate, or an id on one side only,
is a UserError naming the ids (the first few and how many) — nothing is dropped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

from alm.errors import UserError

SHOWN_IDS = 5  # how many offending ids an error message lists before "... (N in all)"


def name_ids(ids: list) -> str:
    shown = ", ".join(repr(i) for i in ids[:SHOWN_IDS])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > SHOWN_IDS else "")


def _lines(path: Path):
    """(line number, object) of a JSON-lines file; a line that is not a JSON object is a UserError."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSON lines: one {{\"id\": ..., \"text\": ...}} a line)")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{number}: expected a JSON object with \"id\", got {type(obj).__name__}")
            yield number, obj


def _id(obj: dict, path: Path, number: int):
    if "id" not in obj:
        raise UserError(f"{path}:{number}: no \"id\" key")
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UserError(f"{path}:{number}: \"id\" must be a string or an integer, got {value!r}")
    return value


def _text(value, path: Path, number: int, key: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{path}:{number}: \"{key}\" must be a string, got {type(value).__name__}")
    return value


def _no_duplicates(duplicates: list, path: Path) -> None:
    if duplicates:
        raise UserError(f"{path}: duplicate ids {name_ids(duplicates)}: each id must appear once")


def read_hypotheses(path: str | Path, what: str = "hypothesis") -> dict:
    """{id: text} of a hypothesis file (or another {"id", "text"} file: `what` names its lines), in file order."""
    path = Path(path)
    out: dict = {}
    duplicates: list = []
    for number, obj in _lines(path):
        key = _id(obj, path, number)
        if "text" not in obj:
            raise UserError(f"{path}:{number}: a {what} needs a \"text\" string (id {key!r})")
        if key in out:
            duplicates.append(key)
        out[key] = _text(obj["text"], path, number, "text")
    _no_duplicates(duplicates, path)
    return out


def read_references(path: str | Path) -> dict:
    """{id: [reference text, ...]} of a reference file, in file order ("text" gives a list of one)."""
    path = Path(path)
    out: dict = {}
    duplicates: list = []
    for number, obj in _lines(path):
        key = _id(obj, path, number)
        if ("text" in obj) == ("texts" in obj):
            raise UserError(f"{path}:{number}: a reference needs either \"text\" (a string) or \"texts\" "
                            f"(a list of strings), not {'both' if 'text' in obj else 'neither'} (id {key!r})")
        if "text" in obj:
            texts = [_text(obj["text"], path, number, "text")]
        else:
            if not isinstance(obj["texts"], list) or not obj["texts"]:
                raise UserError(f"{path}:{number}: \"texts\" must be a non-empty list of strings (id {key!r})")
            texts = [_text(t, path, number, "texts") for t in obj["texts"]]
        if key in out:
            duplicates.append(key)
        out[key] = texts
    _no_duplicates(duplicates, path)
    return out


def match(hypotheses: dict, references: dict, hyps_path, refs_path) -> tuple[list, list[str], list[list[str]]]:
    """(ids, hypothesis texts, reference lists) in the references' order; every id on both sides."""
    only_refs = [i for i in references if i not in hypotheses]
    only_hyps = [i for i in hypotheses if i not in references]
    problems = []
    if only_refs:
        problems.append(f"ids in {refs_path} missing from {hyps_path}: {name_ids(only_refs)}")
    if only_hyps:
        problems.append(f"ids in {hyps_path} missing from {refs_path}: {name_ids(only_hyps)}")
    if problems:
        raise UserError("; ".join(problems) + " (every id needs a hypothesis and a reference)")
    if not references:
        raise UserError(f"{refs_path}: no references (an empty file)")
    ids = list(references)
    return ids, [hypotheses[i] for i in ids], [references[i] for i in ids]
