"""A FUSE file system that forgets every write not made durable, to simulate power loss (FT-08).

security.md FT-08 asks for LazyFS's ``lose-unfsynced-writes``: after a crash, only what was
fsynced survives. LazyFS cannot be installed here, so this is our own model of a disk behind a
page cache, stricter than most real file systems (POSIX fsync(2), "Rationale"):

* a file's contents and size become durable when that file is fsynced (``fsync``/``fdatasync``);
* a directory's entries (create, rename, unlink, mkdir) become durable when that directory is
  fsynced; an entry naming a file whose data was never fsynced survives as an empty file;
* ``crash`` (written to the control file) drops everything else: the live tree becomes the
  durable one. ``persist`` makes everything durable, as an orderly shutdown would.
* ``fail-fsync`` makes every fsync fail with EIO until ``heal``, the way Linux does it (FT-09,
  "fsyncgate"): the writes not yet durable stay readable but are dropped for good: a later
  fsync of the same file succeeds without them (after a crash those bytes read as zeros) and
  makes durable only what was written after the failure, or written again over them.
* a file unlinked while still open reports ``st_nlink`` 0 to ``fstat``: libfuse keeps it under a
  hidden name (``.fuse_hidden…``) until it is closed, and that name is no link.

The whole file system lives in memory. Run ``python -m tests.security.unsynced_fs <mountpoint>``
(foreground; unmount to stop) and write a command to ``<mountpoint>/.unsynced-fs``.
"""

from __future__ import annotations

import copy
import errno
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy as fuse

CONTROL = "/.unsynced-fs"
#: The name libfuse gives a file unlinked while open, until it is closed (then it unlinks it).
HIDDEN = ".fuse_hidden"
ROOT = 1


@dataclass
class Node:
    """An inode: a regular file (``data``) or a directory (``entries``: name → inode number)."""

    mode: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)
    mtime: int = field(default_factory=time.time_ns)
    nlink: int = 1

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def emptied(self) -> Node:
        """This inode as it is on disk before any of its own contents were made durable."""
        return Node(self.mode, mtime=self.mtime)


class UnsyncedFS(fuse.Operations):
    """The file system's operations (libfuse high-level API); one lock serializes them."""

    use_ns = True

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.live: dict[int, Node] = {ROOT: Node(stat.S_IFDIR | 0o755)}
        self.durable: dict[int, Node] = copy.deepcopy(self.live)
        self.next_ino = ROOT + 1
        self.failing = False
        #: Byte ranges [start, end) of files whose write-back an fsync error dropped.
        self.lost: dict[int, list[tuple[int, int]]] = {}

    # -- the model -------------------------------------------------------------------------

    def _lookup(self, path: str) -> int:
        ino = ROOT
        for name in path.strip("/").split("/") if path != "/" else []:
            node = self.live[ino]
            if not node.is_dir:
                raise fuse.FuseOSError(errno.ENOTDIR)
            if name not in node.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            ino = node.entries[name]
        return ino

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.live[self._lookup(head or "/")]
        if not parent.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _new(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fuse.FuseOSError(errno.EEXIST)
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        self.live[ino] = Node(mode)
        parent.entries[name] = ino
        parent.mtime = time.time_ns()
        return ino

    def _sync_file(self, ino: int) -> None:
        node = self.live[ino]
        durable = self.durable.setdefault(ino, node.emptied())
        if self.failing:
            live, disk = node.data, durable.data
            start = next((i for i in range(min(len(live), len(disk))) if live[i] != disk[i]), len(disk))
            if start < len(node.data):
                self.lost.setdefault(ino, []).append((start, len(node.data)))
            raise fuse.FuseOSError(errno.EIO)
        data = bytearray(node.data)
        for start, end in self.lost.get(ino, ()):  # the lie that FT-09 is about: never written
            width = max(0, min(end, len(data)) - start)
            data[start : start + width] = durable.data[start : start + width].ljust(width, b"\0")
        durable.data = data
        durable.mode, durable.mtime = node.mode, node.mtime

    def _rewritten(self, ino: int, start: int, end: int) -> None:
        """Bytes written again are dirty again: the next fsync writes them back."""
        kept = []
        for a, b in self.lost.get(ino, ()):
            kept.extend(r for r in ((a, min(b, start)), (max(a, end), b)) if r[0] < r[1])
        if kept:
            self.lost[ino] = kept
        else:
            self.lost.pop(ino, None)

    def _sync_dir(self, ino: int) -> None:
        if self.failing:
            raise fuse.FuseOSError(errno.EIO)
        node = self.live[ino]
        for child in node.entries.values():
            self.durable.setdefault(child, self.live[child].emptied())
        durable = self.durable.setdefault(ino, node.emptied())
        durable.entries = dict(node.entries)

    def control(self, command: str) -> None:
        """``crash``, ``persist``, ``fail-fsync`` or ``heal`` (the module's docstring)."""
        if command == "crash":
            self.live = copy.deepcopy(self.durable)
            self.lost.clear()
        elif command == "persist":
            self.durable = copy.deepcopy(self.live)
            self.lost.clear()
        elif command in ("fail-fsync", "heal"):
            self.failing = command == "fail-fsync"
        else:
            raise fuse.FuseOSError(errno.EINVAL)

    # -- libfuse operations ----------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            if path == CONTROL:
                return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0}
            node = self.live[fh if fh is not None and fh in self.live else self._lookup(path)]
            return {
                "st_mode": node.mode,
                "st_nlink": 2 if node.is_dir else node.nlink,
                "st_size": len(node.data),
                "st_mtime": node.mtime,
                "st_ctime": node.mtime,
                "st_atime": node.mtime,
                "st_blocks": (len(node.data) + 511) // 512,
            }

    def readdir(self, path: str, fh: int) -> list[str]:
        with self.mutex:
            return [".", "..", *self.live[self._lookup(path)].entries]

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            self._new(path, stat.S_IFDIR | mode)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self.mutex:
            return self._new(path, stat.S_IFREG | (mode & 0o7777))

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            if path == CONTROL:
                return 0
            return self._lookup(path)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            return bytes(self.live[fh].data[offset : offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            if path == CONTROL:
                self.control(data.decode().strip())
                return len(data)
            node = self.live[fh]
            self._rewritten(fh, offset, offset + len(data))
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset : offset + len(data)] = data
            node.mtime = time.time_ns()
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.mutex:
            if path == CONTROL:
                return 0
            node = self.live[fh if fh is not None and fh in self.live else self._lookup(path)]
            del node.data[length:]
            node.data.extend(bytes(length - len(node.data)))
            node.mtime = time.time_ns()
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self._sync_file(fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self._sync_dir(self._lookup(path))
        return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            self.live[parent.entries.pop(name)].nlink = 0
        return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            if self.live[self._lookup(path)].entries:
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            ino = self._lookup(old)
            old_parent, old_name = self._parent(old)
            new_parent, new_name = self._parent(new)
            replaced = new_parent.entries.get(new_name)
            if replaced is not None and self.live[replaced].is_dir and self.live[replaced].entries:
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            del old_parent.entries[old_name]
            new_parent.entries[new_name] = ino
            if replaced is not None and replaced != ino:
                self.live[replaced].nlink = 0
            if new_name.startswith(HIDDEN):  # libfuse's stand-in for unlinking an open file
                self.live[ino].nlink = 0
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self.mutex:
            node = self.live[self._lookup(path)]
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self.mutex:
            self.live[self._lookup(path)].mtime = times[1] if times else time.time_ns()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        blocks = 1 << 24  # 64 GiB of 4 KiB blocks: never the reason a write fails here
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": blocks,
            "f_bfree": blocks,
            "f_bavail": blocks,
            "f_files": 1 << 20,
            "f_ffree": 1 << 20,
            "f_favail": 1 << 20,
            "f_namemax": 255,
        }


def main(mountpoint: str) -> None:
    """Mount in the foreground until unmounted; the kernel must not cache what a crash undoes."""
    fuse.FUSE(
        UnsyncedFS(),
        mountpoint,
        foreground=True,
        nothreads=False,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )


if __name__ == "__main__":
    main(sys.argv[1])
