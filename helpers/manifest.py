"""The files of a model folder the helpers saved, with their sizes and SHA-256 digests: written when a folder is
saved (the shipped toy model, the stand-in, a retrained toy), checked before diffusers reads it.

A damaged folder (a file cut short by a full disk, a part missing, a config edited by hand) otherwise loads into
a traceback from deep inside diffusers, or worse, loads and draws black pictures. The check reads every file once
(9 MB for the toy: about 20 ms) and names the first file that is not what was saved, with the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "files.json"


class DamagedModelError(ValueError):
    """A model folder whose files are missing, cut short or changed since they were saved."""


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def write_manifest(folder: Path) -> Path:
    """Record every file of `folder` (its size and digest) in `folder/files.json`; returns that path."""
    record = {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": _digest(path)}
              for path in _files(folder)}
    target = folder / MANIFEST
    target.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return target


def check_model_folder(folder: Path, fix: str) -> None:
    """Raise DamagedModelError, naming the file and `fix`, if `folder` is not a complete model folder: its
    model_index.json must read, each part it lists must be there, and where the folder has a files.json every
    file listed must have its recorded size and digest."""
    def damaged(path: Path | str, what: str) -> DamagedModelError:
        return DamagedModelError(f"{folder / path}: {what}. {fix}")

    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise damaged("model_index.json", "missing, so this is not a saved pipeline") from None
    except (OSError, ValueError):
        raise damaged("model_index.json", "does not read as JSON") from None
    if not isinstance(index, dict):
        raise damaged("model_index.json", "is not a pipeline's index")
    for part, entry in index.items():
        if part.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        if not (folder / part).is_dir():
            raise damaged(part, "this part of the pipeline is missing")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return  # a folder saved by other code: its parts are there, the rest is diffusers' to read
    try:
        recorded = json.loads(manifest.read_text())
        entries = [(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in recorded.items()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        raise damaged(MANIFEST, "the list of the folder's files does not read") from None
    for name, size, digest in entries:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise damaged(MANIFEST, f"it lists {name!r}, outside the folder")
        path = folder / name
        if not path.is_file():
            raise damaged(name, "missing")
        if path.stat().st_size != size:
            raise damaged(name, f"{path.stat().st_size:,} bytes where {size:,} were saved (cut short or replaced)")
        if _digest(path) != digest:
            raise damaged(name, "changed since it was saved (its digest differs)")
