"""Reading index files exactly: CSV with BOMs/CRLF/embedded newlines, legacy encodings, JSON
sidecars with bare NaN, LibriSpeech transcript lines.

Pitfalls handled here:
* A UTF-8 BOM before the header would otherwise become part of the first column name.
* CRLF row ends and quoted fields with embedded newlines: the csv module reads the raw text
  (newline=''), so a caption keeps its internal line break exactly.
* Clotho metadata is declared ISO-8859-1 but holds Windows-1252 bytes (0x92 = ’): we decode as
  cp1252 and fall back to ISO-8859-1 for the five bytes cp1252 leaves undefined.
* A CSV that cannot be parsed (bad quoting, undecodable bytes, wrong field count, missing
  columns) raises PrepError naming the file and the line where the bad record starts.
* Python's json writes NaN/Infinity as bare tokens; we accept them and store null.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from alm.data_prep.common import PrepError

BOM = b"\xef\xbb\xbf"

# cp1252 for 0x80-0x9F where defined, ISO-8859-1 (the same code point) everywhere else.
_CP1252_FIX = {}
for _b in range(0x80, 0xA0):
    try:
        _CP1252_FIX[_b] = bytes([_b]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D
        pass


def decode_cp1252(raw: bytes) -> str:
    """Windows-1252 text, with ISO-8859-1 for the bytes cp1252 leaves undefined (never fails)."""
    return raw.decode("latin-1").translate(_CP1252_FIX)


def decode_utf8(raw: bytes, path: Path) -> str:
    """UTF-8 (optional BOM stripped); an invalid byte -> PrepError naming file and line."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PrepError(f"{path}: line {line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def decode_legacy(raw: bytes) -> str:
    """Clotho metadata: cp1252/latin-1; a file re-saved as UTF-8 with a BOM is read as UTF-8."""
    if raw.startswith(BOM):
        try:
            return raw[len(BOM):].decode("utf-8")
        except UnicodeDecodeError:
            return decode_cp1252(raw[len(BOM):])
    return decode_cp1252(raw)


def sniff_delimiter(text: str, must_have: tuple[str, ...]) -> str:
    """',' unless only ';' splits the header into the expected columns (DCASE metadata)."""
    first = text.split("\n", 1)[0].rstrip("\r")
    for delim in (",", ";", "\t"):
        cols = [c.strip() for c in next(csv.reader([first], delimiter=delim), [])]
        if all(c in cols for c in must_have):
            return delim
    return ","


def read_csv(
    path: Path,
    text: str | None = None,
    required: tuple[str, ...] = (),
    delimiter: str = ",",
    overflow_into: str | None = None,
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Parse a CSV with a header -> (column names, [(line number, {column: value})]).

    Values are verbatim (only header names are stripped). Blank lines are ignored, as are
    surplus empty trailing fields (a trailing delimiter). With `overflow_into`, surplus
    non-empty fields are joined back into that column with the delimiter (DCASE metadata whose
    ';'-separated keywords are not quoted in a ';'-separated file).
    """
    if text is None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PrepError(f"{path}: cannot read: {exc}") from None
        text = decode_utf8(raw, path)
    elif text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise PrepError(f"{path}: line {start}: cannot parse CSV: {exc}") from None
        line, start = start, reader.line_num + 1
        if not any(f.strip() for f in fields):
            continue  # blank line
        if header is None:
            header = [h.strip() for h in fields]
            missing = [c for c in required if c not in header]
            if missing:
                raise PrepError(
                    f"{path}: line {line}: missing column(s) {', '.join(missing)} in header {header} "
                    f"(expected {', '.join(required)}; delimiter {delimiter!r})"
                )
            continue
        if len(fields) > len(header):
            extra = fields[len(header):]
            if all(not f for f in extra):
                fields = fields[: len(header)]
            elif overflow_into in header:
                i = header.index(overflow_into)
                n = len(fields) - len(header)
                fields = fields[:i] + [delimiter.join(fields[i : i + n + 1])] + fields[i + n + 1 :]
        if len(fields) != len(header):
            raise PrepError(
                f"{path}: line {line}: expected {len(header)} fields ({delimiter!r}-separated), found {len(fields)}"
            )
        rows.append((line, dict(zip(header, fields))))
    if header is None:
        raise PrepError(f"{path}: line 1: empty file, expected a header with {', '.join(required) or 'columns'}")
    return header, rows


def finite(obj: Any) -> Any:
    """Replace NaN/Infinity floats (anywhere in a JSON value) with None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def read_sidecar(path: Path) -> Any:
    """A LibriLight JSON sidecar (bare NaN allowed -> null), or None if absent/unreadable/invalid."""
    try:
        raw = path.read_bytes()
        return finite(json.loads(raw.decode("utf-8-sig")))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """[(line number, line)] of a UTF-8 text file, line endings (LF or CRLF) removed, blanks dropped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PrepError(f"{path}: cannot read: {exc}") from None
    text = decode_utf8(raw, path)
    out = []
    for i, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip():
            out.append((i, line))
    return out
