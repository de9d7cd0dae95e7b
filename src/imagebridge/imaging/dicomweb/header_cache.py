"""Parsed instance headers kept between pixel requests (``/rendered``, ``/thumbnail``, ``/frames``).

A viewer asks for the same instance again and again (another window, viewport or quality, the
next frame of a multi-frame object): each answer needs the header up to Pixel Data parsed, which
costs more than decoding a small frame. :data:`HEADERS` keeps the most recently used
:class:`pixels.PixelHeader` objects, bounded by count and by the header bytes they were parsed
from (a header above :data:`LARGEST` is never kept).

Entries are keyed by blob key, the SHA-256 of the stored instance bytes (archive/blobs.py): the
bytes under a key never change, so an entry never goes stale and nothing needs invalidating; a
re-sent instance with other bytes has another key, and a deleted one is no longer asked for (its
index row is gone before any request reaches here).

Kept headers are shared between worker threads and must be read only: pydicom converting a raw
element on first access replaces it with an equal one, which is harmless; callers that edit a
data set (transcoding) parse their own.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from imagebridge.imaging.dicomweb import pixels

#: Most headers kept, and most header bytes (as stored, up to Pixel Data) they add up to. A
#: parsed header takes about 17 times its stored size in Python objects (25 KB for a 1.5 KB CT
#: header, measured with tracemalloc): at most about 20 MB per process.
MAX_ENTRIES = 256
MAX_BYTES = 1024**2
#: A header larger than this (a big enhanced multi-frame object's) is parsed for each request.
LARGEST = 256 * 1024


class HeaderCache:
    """Least recently used :class:`pixels.PixelHeader` objects by blob key (thread-safe)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[pixels.PixelHeader, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def kept(self, key: str) -> pixels.PixelHeader | None:
        """The kept header of the blob ``key``, if any (no I/O: callable on the event loop)."""
        with self._lock:
            kept = self._entries.get(key)
            if kept is None:
                return None
            self._entries.move_to_end(key)
            return kept[0]

    def header(self, key: str, fp: io.BufferedReader) -> pixels.PixelHeader:
        """The header of the blob ``key``, parsed from ``fp`` (at its start) unless kept.

        ``fp`` is left where the caller may use it either way: pixel access seeks first.
        """
        header = self.kept(key)
        if header is not None:
            return header
        header = pixels.read_header(fp)
        size = fp.tell()
        if size <= min(LARGEST, self.max_bytes):
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = (header, size)
                    self._bytes += size
                while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._bytes -= dropped
        return header


HEADERS = HeaderCache()
"""The process's cache (each ``--workers`` process has its own)."""
