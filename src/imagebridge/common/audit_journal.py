"""A write-ahead journal for audit records: durable before the response, in the database soon after.

An audit record is appended to this process's journal segment with one ``write(2)`` on an
``O_APPEND`` file before the response starts (security.md AU-01: every disclosure is recorded).
Once the call returns the bytes belong to the operating system, so a killed process (SIGKILL, OOM,
crash) loses none; power loss can lose what the database has not committed yet, typically the
last few milliseconds (docs/audit.md). With ``fsync`` on, :class:`DurableResponses` also holds
each response until an ``fdatasync`` covering its records has returned (one call serving every
record appended meanwhile: group commit), so power loss loses none either. A background task
writes the journaled records into the database in batches and retires a segment once everything
in it is committed.

Each segment is locked (``flock``) by the process writing it, so any process sharing the
directory tells a live segment from a dead process's: :meth:`Journal.recover` replays and
retires the dead ones (at startup and every :data:`RECOVER_SECONDS`), and :meth:`Journal.settle`,
called before audit records are read, also replays the live ones of other processes. Replay is
idempotent: every record carries a unique key and is inserted only when absent. A dead process's
segments are read one at a time and applied in bounded groups (:meth:`Journal._apply_groups`).

A line is ``<crc32 hex> <JSON>\\n``; a line cut short by a crash (no newline, wrong checksum,
not a JSON object) is skipped, never fatal.

A failed ``fdatasync`` is never retried on the same file (FT-09, "fsyncgate"): Linux marks the
pages that failed clean, so a later call can succeed without them ever reaching the disk. The
journal seals every segment that sync covered and writes the records not yet known durable (it
still holds them, uncommitted: with ``fsync`` on, only durable records are committed) into a new
segment, followed by a line naming the bytes they supersede; replay drops the superseded copies,
so each record is delivered once. A sealed segment left holding nothing uncommitted is deleted at
once: while the disk keeps failing, each failed sync would otherwise keep one open.

A record says what its client got (:class:`DurableResponses`). When the sync covering a request's
records fails, the request is answered 503 and its records, still in memory and not yet durable
(nor committed), are amended by the journal's ``refused`` function before they are rewritten and
committed: the rewrite that fsyncgate needs anyway carries the amended record, no second write.
Requests whose records came after the failed sync wait for the next one instead. What cannot be
amended stays as it was: a record that had already become durable (the request's response was
refused for another of its records), and one whose own write failed, which is not recorded at all
(nothing was served). If the rewrite cannot be written either, the old segment's copy, if the
disk kept it, is what a replay finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagebridge.common.durable_dirs import fsync_dir, make_dirs

log = logging.getLogger(__name__)

Entry = dict[str, Any]
#: Whose entries are applied: this process's, another live process's (read while it writes), or
#: a dead process's: its last group (``dead``: its last chance), or an earlier one (``dead-partial``).
Origin = Literal["own", "live", "dead", "dead-partial"]
#: Writes entries, in order, into the database, idempotently (an entry already there is skipped).
#: With ``dead-partial`` it may hold entries back (returns them): they come again with the next group.
Apply = Callable[[Sequence[Entry], Origin], Awaitable[Sequence[Entry] | None]]

SUFFIX = ".journal"
#: A segment holding this many bytes is replaced by a new one (and retired once committed).
SEGMENT_BYTES = 64 * 1024
#: Seconds the writer lets records gather before a commit (unless a reader is waiting): one
#: commit for every request of that time instead of one per request, off the requests' loop time.
COMMIT_DELAY = 0.25
#: Seconds between looks for segments of dead processes.
RECOVER_SECONDS = 30.0
#: Seconds shutdown waits for journaled records to be committed.
CLOSE_SECONDS = 10.0
#: Seconds between attempts while the database refuses the records.
RETRY_SECONDS = 1.0
#: Segments of a dead writer applied in one group (one open at a time; 4 MiB of records).
REPLAY_SEGMENTS = 64
#: The key of a journal's own line ``{SUPERSEDES: [[segment name, offset], ...]}``: the entries of
#: those segments from those byte offsets on are replaced by the lines before it in its segment.
SUPERSEDES = "~supersedes"


def encode(entry: Entry) -> bytes:
    """One journal line: checksum, space, compact JSON, newline."""
    payload = orjson.dumps(entry)
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode(data: bytes) -> tuple[list[Entry], int]:
    """The entries of the whole, intact lines of ``data``, and how many lines were skipped."""
    found, skipped = _decode_at(data)
    return [entry for _, entry in found], skipped


def _decode_at(data: bytes) -> tuple[list[tuple[int, Entry]], int]:
    """:func:`decode`, each entry with the byte offset of its line."""
    entries: list[tuple[int, Entry]] = []
    skipped = 0
    lines = data.split(b"\n")
    if lines[-1]:
        skipped += 1  # the last write was cut short
    offset = 0
    for line in lines[:-1]:
        crc, _, payload = line.partition(b" ")
        try:
            entry = orjson.loads(payload) if int(crc, 16) == zlib.crc32(payload) else None
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            entries.append((offset, entry))
        elif line:
            skipped += 1
        offset += len(line) + 1
    return entries, skipped


@dataclass
class _Segment:
    path: Path
    fd: int
    size: int = 0
    #: Entries appended here and not yet committed.
    outstanding: int = 0
    #: Bytes of it known to be on stable storage (``fsync`` journals).
    synced: int = 0
    #: Written no more: an ``fdatasync`` of it failed (never trusted again) or a write was cut short.
    sealed: bool = False


@dataclass(eq=False)
class _Request:
    """One HTTP request's appends to ``journal`` (:class:`DurableResponses`)."""

    journal: Journal
    #: The number of its last append (``Journal._appended`` after it); 0: none.
    last: int = 0
    #: Its response has started or been refused: its records can no longer be refused.
    answered: bool = False
    #: The journal could not make its records durable: it is answered 503, its records say so.
    refused: bool = False


_REQUEST: ContextVar[_Request | None] = ContextVar("audit_journal_request", default=None)
#: A segment read for replay: its name and its entries, each with its byte offset.
_Read = tuple[str, list[tuple[int, Entry]]]
#: An appended entry, the segment holding it, its number and the request it belongs to.
_Appended = tuple[Entry, "_Segment", int, _Request | None]


class Journal:
    """This process's segments in ``directory`` and the task committing what they hold."""

    def __init__(
        self,
        directory: Path,
        apply: Apply,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        commit_delay: float = COMMIT_DELAY,
        fsync: bool = False,
        refused: Callable[[Entry], Entry] | None = None,
    ) -> None:
        self.directory = directory
        self.apply = apply
        self.segment_bytes = segment_bytes
        self.commit_delay = commit_delay
        #: Make appends durable (:meth:`durable`) before responses; off: a killed process loses
        #: nothing, power loss the uncommitted tail (docs/audit.md).
        self.fsync = fsync
        #: What an entry says once its request is answered 503 instead (its sync failed).
        self.refused = refused
        self._segments: list[_Segment] = []
        #: Entries appended and not yet committed, each with the segment holding it and its number
        #: (``_appended`` after it).
        self._pending: list[_Appended] = []
        self._appended = 0
        self._committed = 0
        self._progress = asyncio.Event()
        #: Set by a waiting reader: commit now, without the delay.
        self._hurry = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Appends known to be on stable storage, and the fdatasync under way.
        self._synced = 0
        self._syncing: asyncio.Task[None] | None = None
        #: A segment was created (renamed into the directory) since the last sync.
        self._new_entries = False
        #: Sealed segments whose records not known durable are still to be rewritten (:meth:`_rewrite`).
        self._superseding: list[_Segment] = []
        #: Why the writer cannot commit (with ``fsync``: its records cannot be made durable), until it can.
        self._unavailable: JournalUnavailable | None = None
        #: Every cut still on disk (segment name → offset): each rewrite's line repeats them all,
        #: as the segment holding an earlier line may itself be lost.
        self._cuts: dict[str, int] = {}

    def append(self, entry: Entry) -> None:
        """Journal ``entry`` (one ``write``); the writer task commits it soon after.
        :class:`JournalUnavailable` when the disk refuses it."""
        request = _REQUEST.get()
        if request is not None and request.journal is not self:
            request = None
        if request is not None and request.refused and self.refused is not None:
            entry = self.refused(entry)
        line = encode(entry)
        try:
            if self._superseding:
                self._rewrite()
            segment = self._current()
            written = os.write(segment.fd, line)
        except OSError as exc:
            raise JournalUnavailable(f"audit journal {self.directory}: {exc}") from exc
        if written != len(line):  # a regular file short-writes only when the disk is full
            self._seal([segment])  # a torn line: whatever came after it would be read as damaged
            raise JournalUnavailable(f"audit journal {segment.path}: wrote {written} of {len(line)} bytes")
        segment.size += written
        segment.outstanding += 1
        self._appended += 1
        self._pending.append((entry, segment, self._appended, request))
        if request is not None:
            request.last = self._appended
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def durable(self, upto: int | None = None) -> None:
        """Wait until everything appended so far (or the first ``upto`` appends) is on stable
        storage (``fsync`` journals; at once otherwise). Concurrent waiters share one
        ``fdatasync`` per segment, run off the event loop; appends made while one is under way
        wait for the next."""
        target = self._appended if upto is None else upto
        while self.fsync and self._synced < target:
            if self._syncing is None or self._syncing.done():
                self._syncing = asyncio.get_running_loop().create_task(self._sync())
            await asyncio.shield(self._syncing)

    async def answer(self, request: _Request) -> None:
        """Wait until ``request``'s records are on stable storage (with none of its own:
        everything appended so far); :class:`JournalUnavailable` once they are refused."""
        try:
            while self.fsync and not request.refused:
                try:
                    await self.durable(request.last or None)
                    return
                except JournalUnavailable:
                    if not request.last:
                        raise
                    # its records came after the sync that failed: the next one covers them
            if request.refused:
                raise JournalUnavailable(f"audit journal {self.directory}: the sync of its records failed")
        finally:
            request.answered = True

    async def _sync(self) -> None:
        try:
            if self._superseding:
                self._rewrite()
        except OSError as exc:
            self._refuse(self._appended)
            raise JournalUnavailable(f"audit journal {self.directory}: {exc}") from exc
        upto = self._appended
        sizes = [(s, s.size) for s in self._segments if not s.sealed and s.synced < s.size]
        directory, self._new_entries = self._new_entries, False
        try:
            # duplicates: a segment retired meanwhile closes its own descriptor, never this one
            fds = _dup_all([segment.fd for segment, _ in sizes])
            await asyncio.to_thread(_sync_files, fds, self.directory if directory else None)
        except BaseException as exc:
            self._new_entries = self._new_entries or directory
            if isinstance(exc, OSError):
                # fsyncgate: what failed may be marked clean and never written; never sync it again
                self._seal([segment for segment, _ in sizes])
                self._refuse(upto)
                with contextlib.suppress(OSError):  # else the next append or sync tries again
                    self._rewrite()
                raise JournalUnavailable(f"audit journal {self.directory}: {exc}") from exc
            raise
        for segment, size in sizes:
            segment.synced = max(segment.synced, size)
        self._synced = max(self._synced, upto)

    async def start(self) -> None:
        """Replay dead processes' segments now, then every :data:`RECOVER_SECONDS`.

        A replay that fails (the database refuses) is logged and retried later; the segments stay.
        """
        await self._recover_logged()
        self._watcher = asyncio.create_task(self._watch())

    async def flush(self) -> None:
        """Wait until everything this process has journaled so far is committed;
        :class:`JournalUnavailable` while it cannot be made durable (``fsync``) to be committed."""
        target = self._appended
        while self._committed < target:
            self._progress.clear()
            self._hurry.set()
            await self._progress.wait()
            if self._unavailable is not None and self._committed < target:
                raise JournalUnavailable(str(self._unavailable))

    async def settle(self) -> None:
        """Make every record journaled so far, by any process sharing the directory, committed.

        For readers of the audit trail: other processes' segments are replayed (idempotently; a
        dead process's are retired) and this process's own records are waited for.
        """
        await self._replay(include_live=True)
        await self.flush()

    async def recover(self) -> int:
        """Replay and retire the segments of dead processes; how many segments were retired."""
        return await self._replay(include_live=False)

    async def aclose(self) -> None:
        """Commit what is journaled (for at most :data:`CLOSE_SECONDS`), then retire this
        process's segments; any still holding uncommitted records stay for the next process."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        committed = False
        with contextlib.suppress(TimeoutError, JournalUnavailable):
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.flush()
                committed = True
        if not committed:
            log.error("audit records left uncommitted in %s (the next start commits them)", self.directory)
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for segment in self._segments:
            if committed:
                with contextlib.suppress(OSError):  # left to a later replay, as in _retire
                    segment.path.unlink(missing_ok=True)
            os.close(segment.fd)
        self._segments = []

    def _seal(self, segments: Sequence[_Segment]) -> None:
        """Write to ``segments`` no more; with ``fsync``, rewrite their records not known durable."""
        for segment in segments:
            if not segment.sealed:
                segment.sealed = True
                if self.fsync and segment.synced < segment.size:
                    self._superseding.append(segment)

    def _refuse(self, upto: int) -> None:
        """The requests not yet answered with records among the appends not durable up to
        ``upto`` are refused; all of their records not durable say so (``refused``)."""
        synced = self._synced
        refused = {
            r for _, _, n, r in self._pending if synced < n <= upto and r is not None and not r.answered
        }
        for request in refused:
            request.refused = True
        if refused and self.refused is not None:
            amend = self.refused
            self._pending = [
                (amend(e) if n > synced and r in refused else e, s, n, r) for e, s, n, r in self._pending
            ]

    def _rewrite(self) -> None:
        """Append to a new segment the records of the sealed segments not known to be durable,
        then the line saying they supersede those segments' bytes from their last good sync on."""
        moved = [
            k
            for k, (_, segment, number, _) in enumerate(self._pending)
            if segment.sealed and number > self._synced
        ]
        self._cuts.update((segment.path.name, segment.synced) for segment in self._superseding)
        marker = {SUPERSEDES: [[name, offset] for name, offset in self._cuts.items()]}
        data = b"".join([*(encode(self._pending[k][0]) for k in moved), encode(marker)])
        segment = self._create()
        try:
            written = os.write(segment.fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"wrote {written} of {len(data)} bytes to {segment.path}")
        except OSError:
            # nothing refers to it yet: removed, not kept open (one per attempt while the disk refuses)
            self._segments.remove(segment)
            segment.path.unlink(missing_ok=True)
            os.close(segment.fd)
            raise
        segment.size += written
        for k in moved:
            entry, old, number, request = self._pending[k]
            old.outstanding -= 1
            segment.outstanding += 1
            self._pending[k] = (entry, segment, number, request)
        self._superseding = []
        self._retire()  # the sealed segments now holding nothing uncommitted: one per failed sync

    def _current(self) -> _Segment:
        if self._segments and not self._segments[-1].sealed and self._segments[-1].size < self.segment_bytes:
            return self._segments[-1]
        return self._create()

    def _create(self) -> _Segment:
        if self.fsync:  # the folder's name too must survive power loss
            make_dirs(self.directory)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Locked under a name replay ignores, then renamed: never seen unlocked under its real name.
        hidden = self.directory / f".{name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        path = self.directory / f"{name}{SUFFIX}"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, path)
        except OSError:
            hidden.unlink(missing_ok=True)
            os.close(fd)
            raise
        self._new_entries = True
        segment = _Segment(path, fd)
        self._segments.append(segment)
        return segment

    async def _write(self) -> None:
        while self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.commit_delay):
                    await self._hurry.wait()
            self._hurry.clear()
            if self.fsync:  # only durable records are committed: the others may yet be rewritten
                try:
                    await self.durable()
                    self._unavailable = None
                except JournalUnavailable as exc:
                    log.exception("audit records could not be made durable yet; retrying")
                    self._unavailable = exc
                    self._progress.set()  # a waiting reader is refused, not kept waiting
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
            ready = len(self._pending)
            if self.fsync and self._pending:
                ready = max(0, min(ready, self._synced - self._pending[0][2] + 1))
            batch = self._pending[:ready]
            self._pending = self._pending[ready:]
            while True:
                try:
                    await self.apply([appended[0] for appended in batch], "own")
                    break
                except Exception:
                    log.exception("audit records could not be committed yet; retrying")
                    await asyncio.sleep(RETRY_SECONDS)
            for _, segment, _, _ in batch:
                segment.outstanding -= 1
            self._committed += len(batch)
            self._retire()
            self._progress.set()

    def _retire(self) -> None:
        """Delete the committed segments that are full (this process writes a new one)."""
        keep: list[_Segment] = []
        for segment in self._segments:
            if segment.outstanding == 0 and (segment.sealed or segment.size >= self.segment_bytes):
                # while still locked: nobody replays it; a disk that refuses (read-only after an
                # I/O error) leaves it to a later replay (idempotent), not the writer dead
                with contextlib.suppress(OSError):
                    segment.path.unlink(missing_ok=True)
                self._cuts.pop(segment.path.name, None)
                os.close(segment.fd)
            else:
                keep.append(segment)
        self._segments = keep

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RECOVER_SECONDS)
            await self._recover_logged()

    async def _recover_logged(self) -> None:
        try:
            await self.recover()
        except Exception:
            log.exception("replaying the audit journals of ended processes failed; will retry")

    async def _replay(self, *, include_live: bool) -> int:
        """Apply other processes' segments, oldest first; retire the dead ones. Returns how many."""
        if not self.directory.is_dir():
            return 0
        own = {segment.path.name for segment in self._segments}
        writers: dict[str, list[Path]] = {}
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path.name not in own:
                writers.setdefault(path.name.split("-")[1], []).append(path)
        retired = 0
        for paths in writers.values():
            retired += await self._replay_writer(paths, include_live=include_live)
        return retired

    async def _replay_writer(self, paths: list[Path], *, include_live: bool) -> int:
        """Apply one process's segments (by pid), oldest first, in groups (:meth:`_apply_groups`).

        Whoever locks the oldest one replays the dead ones and holds that lock until they are all
        applied and retired (oldest first; a process that finds a later one unlocked meanwhile
        replays the rest again, idempotently), opening the others one at a time: thousands may be
        left after a long database outage, more than a process may open. A process that cannot
        lock it leaves them to that one (or to their live writer) and reads them only as live.
        Dead and live segments (a reused pid) are applied apart, each as its origin."""
        opened = ((k, found) for k, path in enumerate(paths) if (found := _open_segment(path)) is not None)
        first = next(opened, None)
        if first is None:
            return 0
        k, (fd, dead) = first
        try:
            if not dead:
                if include_live:
                    await self._apply_groups(_read_segments(paths[k:]), "live")
                return 0
            replayed: list[Path] = []
            live: list[Path] = []
            await self._apply_groups(_read_dead(paths[k], fd, paths[k + 1 :], replayed, live), "dead")
            # oldest first: cut short, it leaves a completion without its stand-in (replayed again,
            # idempotently), never a stand-in without its completion (ehr/audit.py)
            for path in replayed:
                path.unlink(missing_ok=True)
            if live and include_live:
                await self._apply_groups(_read_segments(live), "live")
            return len(replayed)
        finally:
            os.close(fd)

    async def _apply_groups(self, segments: Generator[_Read], origin: Origin) -> None:
        """Apply ``segments`` (one writer's, oldest first) in groups of about
        :data:`REPLAY_SEGMENTS`: together what must be seen together. A segment that supersedes
        another (:data:`SUPERSEDES`) joins that one's group; the entries ``apply`` holds back (a
        dead writer's stand-in whose completion may come later, ehr/audit.py) go on to the next
        group; the last group of a dead writer is ``dead``, the others ``dead-partial``."""
        with contextlib.closing(segments):  # its open segment closed, whatever happens
            group: list[_Read] = []
            held: Sequence[Entry] = ()
            for name, found in segments:
                cut = {superseded for _, entry in found for superseded, _ in entry.get(SUPERSEDES, ())}
                if len(group) >= REPLAY_SEGMENTS and not cut & {member for member, _ in group}:
                    entries = [*held, *_unsuperseded(group)]
                    held = (await self.apply(entries, "dead-partial" if origin == "dead" else origin)) or ()
                    group = []
                group.append((name, found))
            entries = [*held, *_unsuperseded(group)]
            if entries:
                await self.apply(entries, origin)


def _unsuperseded(segments: Sequence[tuple[str, Sequence[tuple[int, Entry]]]]) -> list[Entry]:
    """The entries of one writer's ``segments`` (name, entries by offset; oldest first), without
    the journal's own :data:`SUPERSEDES` lines and the entries they supersede."""
    cut: dict[str, int] = {}
    for _, found in segments:
        for _, entry in found:
            for name, offset in entry.get(SUPERSEDES, ()):
                cut[name] = min(offset, cut.get(name, offset))
    return [
        entry
        for name, found in segments
        for offset, entry in found
        if SUPERSEDES not in entry and offset < cut.get(name, offset + 1)
    ]


def _open_segment(path: Path) -> tuple[int, bool] | None:
    """``path`` opened, locked if its writer is dead (then ``True``); None once retired."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        dead = True
    except BlockingIOError:
        dead = False
    if os.fstat(fd).st_nlink == 0:  # retired between the listing and the lock
        os.close(fd)
        return None
    return fd, dead


def _read_segment(path: Path, fd: int) -> tuple[str, list[tuple[int, Entry]]]:
    found, skipped = _decode_at(_read_all(fd))
    if skipped:
        log.warning("audit journal %s: skipped %d damaged line(s)", path.name, skipped)
    return path.name, found


def _read_segments(paths: Iterable[Path]) -> Generator[_Read]:
    """The still-linked segments among ``paths``, read one at a time (not locked)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            if os.fstat(fd).st_nlink > 0:
                yield _read_segment(path, fd)
        finally:
            os.close(fd)


def _read_dead(
    first: Path, locked: int, paths: Iterable[Path], replayed: list[Path], live: list[Path]
) -> Generator[_Read]:
    """``first`` (already ``locked``), then the dead segments among ``paths``, each locked while it
    is read; each is added to ``replayed``, the live ones to ``live``."""
    replayed.append(first)
    yield _read_segment(first, locked)
    for path in paths:
        opened = _open_segment(path)
        if opened is None:
            continue
        fd, dead = opened
        try:
            if dead:
                replayed.append(path)
                yield _read_segment(path, fd)
            else:
                live.append(path)
        finally:
            os.close(fd)


def _dup_all(fds: Sequence[int]) -> list[int]:
    """A duplicate of each of ``fds``; none left open when one cannot be made (EMFILE)."""
    dups: list[int] = []
    try:
        for fd in fds:
            dups.append(os.dup(fd))
    except OSError:
        for fd in dups:
            os.close(fd)
        raise
    return dups


def _sync_files(fds: Sequence[int], directory: Path | None) -> None:
    """``fdatasync`` each of ``fds`` (closing them), then ``fsync`` ``directory`` (new names in it)."""
    try:
        for fd in fds:
            os.fdatasync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    if directory is not None:
        fsync_dir(directory)


class JournalUnavailable(Exception):
    """The disk refused a record or its ``fdatasync`` (full, failing): the request it records
    must not be answered with data. Each service answers 503 + ``Retry-After`` (``refuse``)."""


class _Refused(Exception):
    """The response was replaced by a 503: the application's own messages go nowhere."""


class DurableResponses:
    """ASGI middleware: no HTTP response starts before the records its request journaled (if none:
    the audit journal's appends so far) are on stable storage (:meth:`Journal.answer`).
    ``journal`` gives the process's journal. When they cannot be made durable, nothing of the
    response is sent: ``refuse()`` (a 503) goes out instead (ARCHITECTURE.md: no delivery without
    a committed audit record), and the records say so (the module's docstring)."""

    def __init__(self, app: ASGIApp, journal: Callable[[], Journal], refuse: Callable[[], Response]) -> None:
        self.app = app
        self.journal = journal
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        journal = self.journal()
        request = _Request(journal)

        async def send_durably(message: Message) -> None:
            if message["type"] == "http.response.start":
                try:
                    await journal.answer(request)
                except JournalUnavailable as exc:
                    log.error("%s: answering 503 instead", exc)
                    await self.refuse()(scope, receive, send)
                    raise _Refused from exc
            await send(message)

        token = _REQUEST.set(request)  # its appends, made in this context, are counted as its own
        try:
            with contextlib.suppress(_Refused):
                await self.app(scope, receive, send_durably)
        finally:
            _REQUEST.reset(token)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
