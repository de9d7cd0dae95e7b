"""Folders whose names survive power loss.

POSIX fsync(2) makes a file's data durable, not its name: a new entry in a folder (a file, a
renamed file, a subfolder) is durable only once that folder is fsynced.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of the folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Create ``path`` with any missing parents, each new folder's name made durable (its parent
    fsynced, outermost first), so nothing later made durable inside it is lost with its folder."""
    created: list[Path] = []
    level = path
    while not level.exists():
        created.append(level)
        level = level.parent
    path.mkdir(parents=True, exist_ok=True)
    for folder in reversed(created):
        fsync_dir(folder.parent)
