"""JSONL manifests: the one on-disk format of image-caption(-QA) data in this project.

One JSON object per line::

    {"id": str, "image": path (relative to the manifest's folder, or absolute), "caption": str,
     "qa": [{"question": str, "answer": str, "type": str, "choices": [str, ...]}],
     "scene": {...}, "split": "train" | "val" | "test" | "heldout"}

Only ``image`` and ``caption`` are required. ``read_manifest`` returns the records with ``image``
resolved to an absolute path; it knows nothing of tensors. Text is UTF-8: a lone surrogate (an escape
such as ``"\\ud800"`` that UTF-8 cannot hold) is refused like any other malformed record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

REQUIRED_KEYS = ("image", "caption")
SPLITS = ("train", "val", "test", "heldout")


class ManifestError(ValueError):
    """A manifest line that cannot be read as a record."""


def write_manifest(records: Iterable[dict], path: str | Path) -> Path:
    """Write ``records`` as JSONL at ``path`` (parent folders are created).

    Image paths are written as given: pass them relative to ``path``'s folder to keep the data set
    relocatable.
    """
    path, records = Path(path), list(records)
    for i, record in enumerate(records):
        _validate(record, path, i + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({**record, "image": str(record["image"])}, ensure_ascii=False) + "\n")
    return path


def split_records(records: list[dict], split: str | None) -> list[dict]:
    """The records of ``split`` (all of them for None); a record that names no split is "train"."""
    if split is None:
        return records
    return [r for r in records if r.get("split", "train") == split]


def read_manifest(path: str | Path) -> list[dict]:
    """Read a JSONL manifest; ``image`` and (in clip manifests) ``video`` become absolute paths
    (relative ones are resolved against the manifest's folder). Blank lines are skipped. Raises
    ``ManifestError`` naming the file and line of any malformed record (or the file, when it holds
    no record), and ``FileNotFoundError`` if the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    root = path.resolve().parent
    records = []
    with path.open("rb") as f:
        for lineno, data in enumerate(f, start=1):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            _validate(record, path, lineno)
            for key in ("image", "video"):
                if key in record:
                    place = Path(os.path.expanduser(record[key]))
                    record[key] = str(place if place.is_absolute() else root / place)
            records.append(record)
    if not records:
        raise ManifestError(f"{path}: the manifest holds no records")
    return records


def check_text(value: object, where: str) -> None:
    """Raise ``ManifestError`` naming ``where`` when a JSON value holds text that is not valid
    Unicode: a lone surrogate, which a JSON escape can carry but UTF-8 cannot."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as e:
        surrogate = e.object[e.start : e.end]
        raise ManifestError(f"{where}: holds a lone surrogate {surrogate!r}, not valid Unicode text") from None


def _validate(record: object, path: Path, lineno: int) -> None:
    where = f"{path}:{lineno}"
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ManifestError(f"{where}: missing required key(s) {missing}")
    if not isinstance(record["image"], (str, os.PathLike)) or not str(record["image"]):
        raise ManifestError(f"{where}: 'image' must be a non-empty path string")
    if not isinstance(record["caption"], str):
        raise ManifestError(f"{where}: 'caption' must be a string")
    check_text(record, where)
    if "split" in record and record["split"] not in SPLITS:
        raise ManifestError(f"{where}: 'split' must be one of {SPLITS}, got {record['split']!r}")
    for j, qa in enumerate(record.get("qa", [])):
        if not isinstance(qa, dict) or not {"question", "answer"} <= qa.keys():
            raise ManifestError(f"{where}: qa[{j}] must be an object with 'question' and 'answer'")
