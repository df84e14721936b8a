"""Who is writing a stage output: one writer at a time, and a dead or failed writer never locks
the directory for good.

A run claims its output directory before it writes (``_lrat_stage.started.json``: stage, version
key, host, pid, an owner id, a heartbeat, a state) and holds it until it ends:

* **Local directories** (including shared file systems with POSIX locks): the run also holds an
  exclusive ``flock`` on ``_lrat_stage.lock`` for its lifetime. The kernel drops the lock when
  the process dies, however it dies (exception, ``kill -9``, a stopped Ray job), so a held lock
  means a live writer, and a free lock with a claim means a dead one.
* **Object storage** has no locks: the claim is a lease. The run rewrites the claim's heartbeat
  every ``LEASE_SECONDS / 4``; a claim whose heartbeat is older than ``LEASE_SECONDS`` belongs to a
  dead run. (A writer paused longer than the lease, or two runs starting within the same second,
  can still overlap there: the lease narrows the window, it cannot close it.)

A second run into a directory whose writer is alive is refused in one line naming the owner (after
waiting ``LOCK_WAIT_SECONDS`` for the lock: a stopped job's driver takes a moment to exit). A
run whose writer is gone (killed, or ended with an error: its claim says ``failed``) is resumed
when it has the same version key, and otherwise cleared (everything in the directory was written
by that run) before the new run starts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError

log = logging.getLogger(__name__)
CLAIM = "_lrat_stage.started.json"
LOCK = "_lrat_stage.lock"
LEASE_SECONDS = 120.0
# How long a run waits for a held lock before refusing: a stopped job's driver may take a few
# seconds to exit after Ray reports it stopped, and its resubmission must not be refused for that.
LOCK_WAIT_SECONDS = 30.0


@dataclass
class Previous:
    """The claim a run found: what the earlier run was and why it is no longer writing."""

    claim: dict
    why: str  # "failed" or "dead"

    def same(self, stage: str, key: str) -> bool:
        return self.claim.get("stage") == stage and self.claim.get("key") == key

    def describe(self) -> str:
        c = self.claim
        error = f": {c['error']}" if c.get("error") else ""
        where = f"pid {c.get('pid', '?')} on {c.get('host', '?')}"
        return f"lrat {c.get('stage')} version {c.get('key')} ({where}, {self.why}{error})"


class Claim:
    """The claim of one run on ``output``: :meth:`acquire` first, then :meth:`finish` or :meth:`fail`."""

    def __init__(self, output: str, stage: str, key: str):
        self.output, self.stage, self.key = output, stage, key
        self.uri = storage.join(output, CLAIM)
        self.record = {
            "stage": stage,
            "key": key,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "owner": uuid.uuid4().hex,
            "started": time.time(),
            "heartbeat": time.time(),
            "state": "running",
        }
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> Previous | None:
        """Take the directory; returns the earlier run's claim when there is one (it is not alive).
        Raises :class:`LratError` when a live run holds it."""
        found = read_claim(self.uri)
        if storage.is_remote(self.output):
            if found and found.get("state") == "running" and not _lease_expired(found):
                raise LratError(
                    self._refusal(
                        found,
                        f"its lease runs {LEASE_SECONDS:g}s from the last heartbeat, "
                        f"{time.time() - _heartbeat(found):.0f}s ago",
                    )
                )
        else:
            self._lock_local(found)
            found = read_claim(self.uri)  # re-read under the lock: the run before us may have just ended
        storage.write_json_atomic(self.uri, self.record)
        if storage.is_remote(self.output):
            self._beat = threading.Thread(target=self._heartbeat, name="lrat-claim-heartbeat", daemon=True)
            self._beat.start()
        if not found:
            return None
        return Previous(found, "failed" if found.get("state") == "failed" else "dead")

    def _lock_local(self, found: dict | None) -> None:
        import fcntl

        _, path = storage.resolve(self.output)
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        deadline, told = time.monotonic() + LOCK_WAIT_SECONDS, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_claim(self.uri) or found or {}
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LratError(self._refusal(holder, "it holds the directory's lock")) from None
                if not told:
                    log.info(
                        "%s: waiting up to %.0fs for pid %s on %s to release it",
                        self.output,
                        LOCK_WAIT_SECONDS,
                        holder.get("pid", "?"),
                        holder.get("host", "?"),
                    )
                    told = True
                time.sleep(0.5)
        self._lock_fd = fd

    def _refusal(self, found: dict, how: str) -> str:
        started = found.get("started")
        ago = f", started {time.time() - started:.0f}s ago" if isinstance(started, (int, float)) else ""
        return (
            f"{self.output} is being written by lrat {found.get('stage', '?')} version {found.get('key', '?')} "
            f"(pid {found.get('pid', '?')} on {found.get('host', '?')}{ago}; {how}): wait for it to end or stop "
            "it, or choose another --output"
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                storage.write_json_atomic(self.uri, {**self.record, "heartbeat": time.time()})
            except Exception:  # a missed beat is retried; the lease allows three more
                log.warning("could not renew the claim on %s", self.output, exc_info=True)

    def finish(self) -> None:
        self._end({"state": "finished"})

    def fail(self, error: BaseException) -> None:
        """Mark the claim failed (the next run resumes or clears it) and release it."""
        text = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        self._end({"state": "failed", "error": f"{type(error).__name__}: {text}", "failed": time.time()})

    def release_untouched(self) -> bool:
        """When the run wrote nothing but its claim (bad input, bad option), remove the directory,
        so the corrected command finds it as it was; False (nothing done) otherwise."""
        import pyarrow.fs as pafs

        fs, path = storage.resolve(self.output)
        entries = {e.base_name for e in fs.get_file_info(pafs.FileSelector(path, recursive=False))}
        if not entries <= {CLAIM, LOCK}:
            return False
        self._stop_heartbeat()
        fs.delete_dir(path)
        self._unlock()
        return True

    def _end(self, update: dict) -> None:
        self._stop_heartbeat()
        try:
            storage.write_json_atomic(self.uri, {**self.record, **update, "heartbeat": time.time()})
        finally:
            self._unlock()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


def read_claim(uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"state": "failed", "error": "unreadable claim file"}


def clear_output(output: str) -> None:
    """Remove what an earlier run left in ``output`` (not the claim and lock of the run now holding it)."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(output)
    for entry in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        if entry.base_name in (CLAIM, LOCK):
            continue
        if entry.type == pafs.FileType.Directory:
            fs.delete_dir(entry.path)
        else:
            fs.delete_file(entry.path)


def _heartbeat(claim: dict) -> float:
    value = claim.get("heartbeat", claim.get("started", 0))
    return float(value) if isinstance(value, (int, float)) else 0.0


def _lease_expired(claim: dict) -> bool:
    return time.time() - _heartbeat(claim) > LEASE_SECONDS
