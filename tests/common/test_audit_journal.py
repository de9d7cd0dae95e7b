"""The audit journal (common/audit_journal.py): lines, segments, replay of live and dead processes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import Response

from imagebridge.common import audit_journal
from imagebridge.common.audit_journal import Entry, Journal, Origin, decode, encode


class Sink:
    """An idempotent stand-in database: entries by key, and who applied them."""

    def __init__(self) -> None:
        self.rows: dict[str, Entry] = {}
        self.origins: list[Origin] = []

    async def apply(self, entries: Sequence[Entry], origin: Origin) -> None:
        self.origins.append(origin)
        for entry in entries:
            self.rows.setdefault(entry["k"], entry)


class Keys:
    """A replay target keeping the ``k`` of every entry it is given, in order."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def __call__(self, entries: Sequence[Entry], origin: Origin) -> None:
        self.keys.extend(e["k"] for e in entries)


class Syncs:
    """The journal's fdatasync replaced: each call notes the file's inode in :attr:`synced` and
    raises the next of :attr:`failures` while any are queued."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.synced: list[int] = []
        self.failures: list[OSError] = []
        monkeypatch.setattr(audit_journal.os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        self.synced.append(os.fstat(fd).st_ino)
        if self.failures:
            raise self.failures.pop()


def test_lines_round_trip_and_damage_is_skipped() -> None:
    lines = [encode({"k": str(i), "v": "é"}) for i in range(3)]
    entries, skipped = decode(b"".join(lines))
    assert ([e["k"] for e in entries], skipped) == (["0", "1", "2"], 0)
    flipped = lines[1].replace(b'"1"', b'"7"')  # checksum no longer matches
    cut = lines[2][:-5]  # the process was killed mid-write: no newline
    garbage = b"zz not a line\n\x00\x00\n"
    entries, skipped = decode(lines[0] + flipped + garbage + cut)
    assert ([e["k"] for e in entries], skipped) == (["0"], 4)
    assert decode(b"") == ([], 0)


def test_own_entries_are_committed_in_order_and_full_segments_retired(tmp_path: Path) -> None:
    async def run() -> None:
        sink = Sink()
        journal = Journal(tmp_path, sink.apply, segment_bytes=200)
        for i in range(20):
            journal.append({"k": str(i)})
        await journal.flush()
        assert list(sink.rows) == [str(i) for i in range(20)]
        assert set(sink.origins) == {"own"}
        assert len(list(tmp_path.glob("*.journal"))) == 1  # the full, committed ones are gone
        await journal.aclose()
        assert list(tmp_path.iterdir()) == []

    asyncio.run(run())


def _hold(path: Path) -> subprocess.Popen[bytes]:
    """Another process holding ``path`` locked, as a live writer does."""
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"locked\n"
    return holder


def _end(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def test_dead_segments_are_replayed_and_retired_live_ones_only_read(tmp_path: Path) -> None:
    dead = tmp_path / "00000000000000000001-1-dead.journal"
    dead.write_bytes(encode({"k": "d1"}) + encode({"k": "d2"}) + encode({"k": "d3"})[:-9])
    live = tmp_path / "00000000000000000002-2-live.journal"
    live.write_bytes(encode({"k": "l1"}))
    (tmp_path / ".00000000000000000003-3-new.new").write_bytes(encode({"k": "hidden"}))
    holder = _hold(live)
    try:

        async def run() -> None:
            sink = Sink()
            journal = Journal(tmp_path, sink.apply)
            assert await journal.recover() == 1
            assert (list(sink.rows), sink.origins) == (["d1", "d2"], ["dead"])  # the cut line skipped
            assert not dead.exists()
            assert live.exists()
            journal.append({"k": "own"})
            await journal.settle()
            assert set(sink.rows) == {"d1", "d2", "l1", "own"}
            assert "live" in sink.origins
            assert live.exists()  # its writer is alive: it retires it
            await journal.aclose()

        asyncio.run(run())
    finally:
        _end(holder)

    async def after() -> None:
        sink = Sink()
        assert await Journal(tmp_path, sink.apply).recover() == 1  # its writer died
        assert list(sink.rows) == ["l1"]

    asyncio.run(after())


def test_a_dead_writers_segments_are_applied_in_one_batch(tmp_path: Path) -> None:
    """An entry may complete one journaled in the writer's previous segment (the EHR's stand-ins):
    replay hands all of a dead process's segments to the database together, oldest first, and a
    reused pid's live segments apart, as live."""
    (tmp_path / "00000000000000000001-7-aaaa.journal").write_bytes(encode({"k": "stand-in"}))
    (tmp_path / "00000000000000000002-7-bbbb.journal").write_bytes(encode({"k": "completion"}))
    (tmp_path / "00000000000000000003-8-cccc.journal").write_bytes(encode({"k": "other writer"}))
    batches: list[tuple[list[str], Origin]] = []

    async def apply(entries: Sequence[Entry], origin: Origin) -> None:
        batches.append(([e["k"] for e in entries], origin))

    async def run() -> int:
        return await Journal(tmp_path, apply).recover()

    assert asyncio.run(run()) == 3
    assert batches == [(["stand-in", "completion"], "dead"), (["other writer"], "dead")]
    assert list(tmp_path.glob("*.journal")) == []


#: Replays the directory with at most 64 open files; prints the batches applied, as JSON.
_LOW_NOFILE_REPLAY = """
import asyncio, json, resource, sys
from pathlib import Path
from imagebridge.common.audit_journal import Journal

batches = []

async def apply(entries, origin):
    completed = {e.get("completes") for e in entries}
    held = [e for e in entries if e.get("later") and e["k"] not in completed and origin == "dead-partial"]
    batches.append((origin, [e["k"] for e in entries if e not in held]))
    return held

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
retired = asyncio.run(Journal(Path(sys.argv[1]), apply).recover())
print(json.dumps({"retired": retired, "batches": batches}))
"""


def test_more_dead_segments_than_open_files_are_replayed_in_bounded_groups(tmp_path: Path) -> None:
    """After a long database outage a dead writer may leave more segments than a process may open
    (EMFILE): replay opens them one at a time and applies them in groups of
    :data:`~audit_journal.REPLAY_SEGMENTS`. A stand-in whose completion is in a later group is held
    back until that group (ehr/audit.py), and the last group is the dead writer's last chance."""
    count = 300
    for i in range(count):
        entries = [{"k": f"r{i}"}]
        if i == 1:
            entries.append({"k": "stand-in", "later": True})
        if i == count - 2:
            entries.append({"k": "completion", "completes": "stand-in"})
        (tmp_path / f"{i + 1:020d}-7-{i:08x}.journal").write_bytes(b"".join(map(encode, entries)))
    done = subprocess.run(
        [sys.executable, "-c", _LOW_NOFILE_REPLAY, str(tmp_path)], capture_output=True, check=True
    )
    result = json.loads(done.stdout)
    assert result["retired"] == count
    assert list(tmp_path.glob("*.journal")) == []
    batches: list[tuple[str, list[str]]] = result["batches"]
    assert [origin for origin, _ in batches] == ["dead-partial"] * (len(batches) - 1) + ["dead"]
    assert max(len(keys) for _, keys in batches) <= audit_journal.REPLAY_SEGMENTS + 2
    applied = [key for _, keys in batches for key in keys]
    assert sorted(applied) == sorted([f"r{i}" for i in range(count)] + ["stand-in", "completion"])
    assert {"stand-in", "completion"} <= set(batches[-1][1])  # seen together


def test_a_killed_writer_leaves_its_records_to_the_next_process(tmp_path: Path) -> None:
    code = (
        "import asyncio, os, sys\n"
        "from pathlib import Path\n"
        "from imagebridge.common.audit_journal import Journal\n"
        "async def never(entries, origin):\n"
        "    await asyncio.sleep(3600)\n"
        "async def main():\n"
        "    journal = Journal(Path(sys.argv[1]), never)\n"
        "    for i in range(50):\n"
        "        journal.append({'k': str(i)})\n"
        "    print('journaled', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"journaled\n"

        async def while_alive() -> int:
            return await Journal(tmp_path, Sink().apply).recover()

        assert asyncio.run(while_alive()) == 0  # locked: not ours to retire
    finally:
        _end(writer)
    sink = Sink()

    async def after() -> None:
        assert await Journal(tmp_path, sink.apply).recover() == 1

    asyncio.run(after())
    assert list(sink.rows) == [str(i) for i in range(50)]
    assert list(tmp_path.glob("*.journal")) == []


def test_a_failing_database_is_retried_never_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_journal, "RETRY_SECONDS", 0.01)
    sink = Sink()
    failures = [RuntimeError("database is locked")] * 3

    async def flaky(entries: Sequence[Entry], origin: Origin) -> None:
        if failures:
            raise failures.pop()
        await sink.apply(entries, origin)

    async def run() -> None:
        journal = Journal(tmp_path, flaky)
        journal.append({"k": "a"})
        started = time.monotonic()
        await journal.flush()
        assert time.monotonic() - started < 5
        await journal.aclose()

    asyncio.run(run())
    assert list(sink.rows) == ["a"]


def test_a_replay_the_database_refuses_keeps_the_segment_and_the_service_starts(tmp_path: Path) -> None:
    dead = tmp_path / "00000000000000000001-1-dead.journal"
    dead.write_bytes(encode({"k": "a"}))

    async def refuse(entries: Sequence[Entry], origin: Origin) -> None:
        raise RuntimeError("no such table")

    async def run() -> None:
        journal = Journal(tmp_path, refuse)
        await journal.start()  # logged, not raised
        await journal.aclose()

    asyncio.run(run())
    assert dead.exists()


def test_fsync_journal_is_fdatasynced_once_per_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fsync=True``: :meth:`Journal.durable` returns only after an ``fdatasync`` of the segment
    holding the records (and an ``fsync`` of the directory that got its name); concurrent waiters
    share the calls; nothing is synced twice and a journal without the setting never syncs."""
    synced: list[int] = []  # inode of each fdatasync'ed file
    dirs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit_journal.os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_ino))
    monkeypatch.setattr(
        audit_journal.os, "fsync", lambda fd: (dirs.append(os.fstat(fd).st_ino), real_fsync(fd))
    )

    async def run() -> None:
        plain = Journal(tmp_path / "plain", Sink().apply)
        plain.append({"k": "p"})
        await plain.durable()
        assert (synced, dirs) == ([], [])
        await plain.aclose()

        journal = Journal(tmp_path / "fsync", Sink().apply, fsync=True)
        journal.append({"k": "0"})
        (segment,) = (tmp_path / "fsync").glob("*.journal")
        await journal.durable()
        assert synced == [segment.stat().st_ino]
        # the folder's own name when it was made, then the segment's name in it
        assert dirs == [tmp_path.stat().st_ino, (tmp_path / "fsync").stat().st_ino]
        await journal.durable()  # nothing new: no call
        assert len(synced) == 1
        for i in range(1, 11):
            journal.append({"k": str(i)})
        await asyncio.gather(*(journal.durable() for _ in range(10)))
        assert len(synced) == 2  # ten waiters, one fdatasync
        assert len(dirs) == 2  # no new segment: the directory is not synced again
        await journal.aclose()

    asyncio.run(run())


def test_a_failed_fdatasync_is_never_trusted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FT-09 ("fsyncgate"): after fdatasync fails (EIO) the pages that failed may be marked clean,
    so syncing that file again could succeed without them. The waiters of the failed call are
    refused; the segment is sealed and never synced again; its records not known durable are
    rewritten into a new segment that the next sync covers; a replay delivers each record once."""
    syncs = Syncs(monkeypatch)
    synced, failures = syncs.synced, syncs.failures
    replay = Keys()
    replayed = replay.keys

    async def run() -> None:
        sink = Sink()
        journal = Journal(tmp_path, sink.apply, fsync=True)
        journal.append({"k": "durable"})
        await journal.durable()
        (failed,) = tmp_path.glob("*.journal")
        failures.append(OSError(errno.EIO, "Input/output error"))
        journal.append({"k": "refused"})
        with pytest.raises(audit_journal.JournalUnavailable):
            await journal.durable()
        journal.append({"k": "after"})
        await journal.durable()
        assert synced.count(failed.stat().st_ino) == 2  # the good sync and the failed one, never again
        assert synced[-1] != failed.stat().st_ino
        await Journal(tmp_path, replay).settle()  # another process reading the live segments
        assert sorted(replayed) == ["after", "durable", "refused"]  # each once
        await journal.flush()
        assert sorted(sink.rows) == ["after", "durable", "refused"]
        await journal.aclose()

    asyncio.run(run())


def test_a_rewrite_whose_own_segment_is_lost_still_supersedes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two syncs fail in a row: the records go to a second segment, then to a third, whose line
    names both earlier cuts. The second segment is gone (it held nothing uncommitted any more; or
    lost to power loss, never synced), yet replay still drops the first segment's superseded
    copies, the first being kept by a durable record not yet committed: each record once."""
    failures = Syncs(monkeypatch).failures
    replay = Keys()
    replayed = replay.keys

    async def run() -> None:
        journal = Journal(tmp_path, Sink().apply, fsync=True, commit_delay=3600)
        journal.append({"k": "d"})
        await journal.durable()
        failures.extend([OSError(errno.EIO, "Input/output error")] * 2)
        journal.append({"k": "a"})
        for _ in range(2):
            with pytest.raises(audit_journal.JournalUnavailable):
                await journal.durable()
        journal.append({"k": "b"})
        await journal.durable()
        first, _ = sorted(tmp_path.glob("*.journal"))
        await Journal(tmp_path, replay).settle()
        assert sorted(replayed) == ["a", "b", "d"]
        assert first.read_bytes() == encode({"k": "d"}) + encode({"k": "a"})  # the first cut drops "a"
        await journal.aclose()

    asyncio.run(run())


def _refusal() -> Response:
    return Response(b"no audit, no data", 503, {"Retry-After": "5"})


def test_durable_responses_wait_for_the_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ASGI middleware holds a response's start until the journal's appends are durable."""
    order: list[str] = []
    monkeypatch.setattr(audit_journal.os, "fdatasync", lambda fd: order.append("fdatasync"))

    async def run() -> None:
        journal = Journal(tmp_path, Sink().apply, fsync=True)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            journal.append({"k": "r"})
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        async def send(message: dict[str, Any]) -> None:
            order.append(message["type"])

        await audit_journal.DurableResponses(app, lambda: journal, _refusal)({"type": "http"}, None, send)
        await journal.aclose()

    asyncio.run(run())
    assert order == ["fdatasync", "http.response.start", "http.response.body"]


def test_durable_responses_refuse_when_the_sync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fdatasync fails (EIO): nothing of the application's response goes out, a 503 with
    Retry-After does, and the application stops at its first send (a stream is not produced)."""

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(audit_journal.os, "fdatasync", failing)
    monkeypatch.setattr(audit_journal, "CLOSE_SECONDS", 0.1)  # the records stay for the next start
    sent: list[dict[str, Any]] = []
    produced: list[bytes] = []

    async def run() -> None:
        journal = Journal(tmp_path, Sink().apply, fsync=True)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            journal.append({"k": "r"})
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for chunk in (b"pixel", b"data"):
                produced.append(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await audit_journal.DurableResponses(app, lambda: journal, _refusal)({"type": "http"}, None, send)
        with contextlib.suppress(OSError):
            await journal.aclose()

    asyncio.run(run())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"5") in sent[0]["headers"]
    assert sent[1]["body"] == b"no audit, no data"
    assert produced == []


def test_a_refused_requests_record_says_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of a request answered 503 because its sync failed says 503, in the database and
    in the segment it was rewritten to; a request whose record came while that sync was under way
    waits for the next one and gets its 200. No second write: the rewrite carries the amendment."""
    calls: list[int] = []
    syncing = threading.Event()
    release = threading.Event()

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the first sync hangs until released, then fails
            syncing.set()
            release.wait(30)
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(audit_journal.os, "fdatasync", fdatasync)
    statuses: dict[str, int] = {}
    journaled: list[str] = []
    replayed: list[Entry] = []

    def refused(entry: Entry) -> Entry:
        return {**entry, "status": 503}

    async def replay(entries: Sequence[Entry], origin: Origin) -> None:
        replayed.extend(entries)

    async def run() -> None:
        sink = Sink()
        journal = Journal(tmp_path, sink.apply, fsync=True, refused=refused)

        def app(key: str) -> Any:
            async def respond(scope: Any, receive: Any, send: Any) -> None:
                journal.append({"k": key, "status": 200})
                journaled.append(key)
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"data"})

            return respond

        async def request(key: str) -> None:
            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses[key] = message["status"]

            middleware = audit_journal.DurableResponses(app(key), lambda: journal, _refusal)
            await middleware({"type": "http"}, None, send)

        first = asyncio.create_task(request("refused"))
        await asyncio.to_thread(syncing.wait, 30)
        second = asyncio.create_task(request("later"))
        while "later" not in journaled:  # its record is journaled while the first sync hangs
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, second)
        await Journal(tmp_path, replay).settle()  # the segments, as a replay would find them
        await journal.flush()
        assert {k: e["status"] for k, e in sink.rows.items()} == statuses
        await journal.aclose()

    asyncio.run(run())
    assert statuses == {"refused": 503, "later": 200}
    assert sorted((e["k"], e["status"]) for e in replayed) == [("later", 200), ("refused", 503)]


def test_a_reader_is_refused_while_the_records_cannot_be_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``fsync`` only durable records are committed: while fdatasync fails, a reader waiting
    for this process's records (an audit query) gets :class:`JournalUnavailable` (its 503), not a
    wait until the disk heals; the records stay for the next start."""

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(audit_journal.os, "fdatasync", failing)
    sink = Sink()

    async def run() -> None:
        journal = Journal(tmp_path, sink.apply, fsync=True)
        journal.append({"k": "a"})
        with pytest.raises(audit_journal.JournalUnavailable):
            await journal.flush()
        await journal.aclose()

    asyncio.run(run())
    assert sink.rows == {}
    assert list(tmp_path.glob("*.journal"))


def test_append_the_disk_refuses_is_journal_unavailable(tmp_path: Path) -> None:
    """A segment that cannot be created or written is :class:`JournalUnavailable` (each service
    answers it with 503), never a record silently dropped."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")

    async def run() -> None:
        journal = Journal(blocker / "journal", Sink().apply)
        with pytest.raises(audit_journal.JournalUnavailable, match="audit journal"):
            journal.append({"k": "lost?"})
        await journal.aclose()

    asyncio.run(run())


def test_a_rewrite_the_disk_refuses_leaves_no_segment_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fdatasync every append first tries the rewrite. While the disk refuses it
    (ENOSPC), each attempt's new segment is removed and closed again: no descriptor or empty
    segment per refused request, and once the disk heals each record is kept once."""
    failures = [OSError(errno.EIO, "Input/output error")]

    def fdatasync(fd: int) -> None:
        if failures:
            raise failures.pop()

    full = True
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if full and str(tmp_path) in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit_journal.os, "fdatasync", fdatasync)
    sink = Sink()

    async def run() -> None:
        nonlocal full
        journal = Journal(tmp_path, sink.apply, fsync=True)
        journal.append({"k": "a"})
        monkeypatch.setattr(audit_journal.os, "write", write)
        with pytest.raises(audit_journal.JournalUnavailable):
            await journal.durable()  # fails, and its rewrite too
        opened = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            with pytest.raises(audit_journal.JournalUnavailable):
                journal.append({"k": "refused"})
        assert len(os.listdir("/proc/self/fd")) == opened
        assert len(list(tmp_path.glob("*.journal"))) == 1  # the sealed one only
        full = False
        journal.append({"k": "b"})
        await journal.flush()
        await journal.aclose()

    asyncio.run(run())
    assert sorted(sink.rows) == ["a", "b"]
    assert list(tmp_path.iterdir()) == []


def test_a_replayer_dying_while_it_retires_leaves_no_stand_in_without_its_completion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replayer of a dead writer dies (killed, power loss) after deleting some of its
    segments: what is left must not be a stand-in whose completion is gone (the next replay would
    add the stand-in, as if the request had never been completed, to the completion already
    committed). A completion left without its stand-in is only replayed again (idempotent)."""
    (tmp_path / "00000000000000000001-7-aaaa.journal").write_bytes(encode({"k": "s", "later": True}))
    (tmp_path / "00000000000000000002-7-bbbb.journal").write_bytes(encode({"k": "c", "completes": "s"}))
    created: list[str] = []

    async def apply(entries: Sequence[Entry], origin: Origin) -> None:
        completed = {e.get("completes") for e in entries}
        for e in entries:
            if not e.get("later") or (origin == "dead" and e["k"] not in completed):
                created.append(e["k"])

    class Died(BaseException):
        pass

    real_unlink = Path.unlink

    def dies_after_one(path: Path, missing_ok: bool = False) -> None:
        real_unlink(path, missing_ok)
        monkeypatch.setattr(Path, "unlink", real_unlink)
        raise Died

    monkeypatch.setattr(Path, "unlink", dies_after_one)
    with pytest.raises(Died):
        asyncio.run(Journal(tmp_path, apply).recover())
    asyncio.run(Journal(tmp_path, apply).recover())
    assert "s" not in created
    assert list(tmp_path.glob("*.journal")) == []


def test_a_committed_segment_the_disk_will_not_delete_stops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system remounted read-only after an I/O error refuses to delete a committed segment
    (EROFS): the writer goes on, a reader waiting for the commit is answered, shutdown closes each
    segment once; the segment stays for a later replay (idempotent)."""
    real_unlink = Path.unlink

    def read_only(path: Path, missing_ok: bool = False) -> None:
        if path.suffix == ".journal":
            raise OSError(errno.EROFS, "Read-only file system")
        real_unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    sink = Sink()
    closed: list[int] = []
    real_close = os.close

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    async def run() -> None:
        journal = Journal(tmp_path, sink.apply, segment_bytes=20)
        for i in range(3):
            journal.append({"k": str(i)})
        async with asyncio.timeout(60):  # a guard: it waited for ever
            await journal.flush()
        journal.append({"k": "3"})
        async with asyncio.timeout(60):
            await journal.flush()
        journal.append({"k": "4"})  # in a segment that is not full: shutdown retires it
        monkeypatch.setattr(audit_journal.os, "close", close)
        await journal.aclose()

    asyncio.run(run())
    assert sorted(sink.rows) == ["0", "1", "2", "3", "4"]
    assert closed
    assert len(closed) == len(set(closed))


def test_a_sync_without_a_free_descriptor_is_refused_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process is out of descriptors (EMFILE) when a sync duplicates the segments' ones: the
    sync has failed (its waiters refused: a 503, not an exception that kills the writer; its
    records rewritten), no descriptor is left open, and the writer commits each record once."""
    monkeypatch.setattr(audit_journal, "RETRY_SECONDS", 0.01)
    real_dup = os.dup
    calls: list[int] = []

    def dup(fd: int) -> int:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_dup(fd)

    sink = Sink()

    async def run() -> None:
        opened = len(os.listdir("/proc/self/fd"))
        journal = Journal(tmp_path, sink.apply, fsync=True, segment_bytes=20)
        for i in range(3):  # two segments to sync
            journal.append({"k": str(i)})
        monkeypatch.setattr(audit_journal.os, "dup", dup)
        with pytest.raises(audit_journal.JournalUnavailable):
            await journal.durable()
        async with asyncio.timeout(60):  # a guard: it waited for ever
            await journal.flush()
        await journal.aclose()
        assert len(os.listdir("/proc/self/fd")) == opened

    asyncio.run(run())
    assert sorted(sink.rows) == ["0", "1", "2"]


def test_syncs_failing_for_a_while_keep_one_copy_and_no_descriptor_per_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While fdatasync keeps failing, every failed sync seals the segment holding the records and
    rewrites them into a new one (the writer retries every second, each waiting request syncs):
    the sealed segment, holding nothing uncommitted any more, is deleted and closed at once, so
    neither descriptors nor copies of the records pile up until the disk heals."""

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(audit_journal.os, "fdatasync", failing)
    monkeypatch.setattr(audit_journal, "CLOSE_SECONDS", 0.1)  # the records stay for the next start

    async def run() -> None:
        opened = len(os.listdir("/proc/self/fd"))
        journal = Journal(tmp_path, Sink().apply, fsync=True, commit_delay=3600)
        journal.append({"k": "a"})
        for _ in range(20):
            with pytest.raises(audit_journal.JournalUnavailable):
                await journal.durable()
        assert len(os.listdir("/proc/self/fd")) <= opened + 2
        assert len(list(tmp_path.glob("*.journal"))) == 1
        await journal.aclose()

    asyncio.run(run())
    replay = Keys()
    asyncio.run(Journal(tmp_path, replay).recover())
    assert replay.keys == ["a"]
