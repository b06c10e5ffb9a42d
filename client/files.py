"""Local files for the console's ``/upload`` and ``/download``.

A name another person chose becomes a file name here, so it is made safe first: no
folders (``../x``, ``/etc/x``), no control characters, no hidden dot-file. Writing
never replaces a file unless asked, and never leaves half a file: the bytes are
checked before anything is written, an overwrite is a rename of a finished file,
and a new file is created exclusively (a file that appeared meanwhile is kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Final

__all__ = [
    "FileCheckError",
    "check_download",
    "safe_file_name",
    "save_file",
    "source_path",
    "target_path",
]

DEFAULT_NAME: Final = "download"
MAX_NAME_BYTES: Final = 255  # what most file systems take


class FileCheckError(ValueError):
    """Downloaded bytes that are not the file the message described."""


def safe_file_name(name: str) -> str:
    """A name to save a file as, in a folder of the caller's choosing: the last part
    of ``name`` (no folders), control characters replaced, no leading dots."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c if c.isprintable() else "_" for c in base).strip().lstrip(".")
    while len(base.encode("utf-8")) > MAX_NAME_BYTES:
        base = base[:-1]
    return base or DEFAULT_NAME


def source_path(path: str) -> Path:
    """The file ``/upload`` reads (``~`` is the home folder)."""
    return Path(path).expanduser()


def target_path(name: str, path: str | None) -> Path:
    """Where ``/download`` writes: ``path`` (into it, if it is a folder), else the
    file's safe name in the current folder."""
    safe = safe_file_name(name)
    if path is None:
        return Path(safe)
    target = Path(path).expanduser()
    return target / safe if target.is_dir() else target


def check_download(data: bytes, file: dict[str, Any]) -> None:
    """The bytes are the file the message describes (its size and SHA-256)."""
    size, digest = file.get("size"), str(file.get("sha256", "")).lower()
    if size != len(data):
        raise FileCheckError(f"got {len(data)} bytes, the file has {size}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise FileCheckError("the bytes do not match the file's sha256")


def save_file(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path``: a new file only (FileExistsError otherwise), or with
    ``force`` in place of an existing one, all at once."""
    if not force:
        with path.open("xb") as f:
            try:
                f.write(data)
            except BaseException:
                f.close()
                path.unlink(missing_ok=True)
                raise
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
