"""One trainer per workdir: a lock file that refuses a second trainer and is taken over once its holder is dead.

Two trainers on one workdir interleave config.json and metrics.jsonl and overwrite each other's checkpoints.
`WorkdirLock(workdir)` (also a context manager) creates WORKDIR/trainer.lock, a JSON record of its holder (host,
pid, start time). A second trainer gets a `WorkdirLockedError` naming the holder, when it started and last
refreshed the lock, and what to do. The holder refreshes the lock every `heartbeat_s` from a daemon thread, which
`release()` stops and joins; if the heartbeat finds the lock taken by someone else, `lost` is set and `check()`
raises `WorkdirLockLostError`.

A lock is stale, and taken over, when its holder is gone:
- holder on this machine (same hostname, boot id and pid namespace): at once, when its pid is dead, a zombie,
  sent SIGKILL (not yet acted on, or still freeing its memory) or reused by another process (its /proc start time differs);
- holder elsewhere (another host of a shared filesystem or object store): once it has not been refreshed for the
  holder's `lease_s`. By default `acquire()` waits for that when the holder has already missed two heartbeats,
  so a run restarted on other hosts after a SIGKILL starts within one lease instead of failing.

Two protocols, chosen by the path:
- "posix" (paths without a URI scheme: local disks, NFSv3+, Lustre, GPFS). The lock appears by link(2) of a fully
  written temporary file: atomic, and it fails if the lock exists (a client that sees EEXIST for its own
  retransmitted link finds its own token and proceeds). The heartbeat is the file's mtime, read from the open file
  (NFS revalidates attributes on open). A stale lock is removed only under a second lock, trainer.lock.break,
  created the same way, after re-reading that the lock is still the stale one; the remover then competes for the
  lock by link(2) like everyone else, so of any number of processes taking over one stale lock exactly one wins.
  flock/fcntl locks are not used: they are not reliable across the hosts of every shared filesystem.
  A filesystem without hard links (gcsfuse, some FUSE/SMB mounts) falls back to the lease protocol.
- "lease" (gs://, s3://, ... through etils.epath, which has no atomic create-if-absent). A process that finds the
  lock absent or stale writes its own record, waits `settle_s` and reads it back; it holds the lock only if its
  own record is still there (of writers that raced, the last one). The heartbeat rewrites the record.

Limitations:
- lease protocol: exclusivity relies on timing. A contender whose gap between reading the lock (free or stale) and
  writing its record exceeds `settle_s` (a process stalled right there, a store request slower than 3 s) can
  overwrite a holder that had already verified. The displaced holder finds out at its next heartbeat (`lost`;
  `check()` raises) but may have written to the workdir meanwhile.
- Holders on other machines are judged by wall clocks: hosts' clocks must agree to well within `lease_s` (NTP does).
  A holder that is alive but frozen for longer than its lease (a suspended VM, a partitioned host) is taken over;
  when it resumes, its heartbeat finds the lock lost and `check()` raises.
- A trainer.lock.break left by a remover that died within the milliseconds it holds one is removed after a lease
  by the same judgement; if that remover was merely frozen that long, two processes may both break the lock.
- Only the machine identity makes a dead pid conclusive: two machines with the same hostname and the same boot id
  cannot exist, but a machine without /proc is judged by hostname alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import signal
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

LOCK_NAME = "trainer.lock"
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}


class WorkdirLockError(RuntimeError):
  """The workdir lock could not be acquired or was lost."""


class WorkdirLockedError(WorkdirLockError):
  """Another live trainer holds the workdir."""

  def __init__(self, message: str, holder: LockInfo, path: epath.Path):
    super().__init__(message)
    self.holder = holder
    self.path = path


class WorkdirLockLostError(WorkdirLockError):
  """This trainer's lock was taken over (it looked dead) or deleted."""


def _read_text(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


_PF_EXITING = 0x4  # the kernel's flag for a process tearing down (SIGKILLed, freeing its memory)
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)  # in /proc/<pid>/status's pending-signal masks


def _sigkill_pending(pid: int) -> bool:
  """Whether `pid` has been sent SIGKILL that it has not yet acted on.

  kill(2) returns once the signal is queued, before the target runs to set its exiting flag: in that window only
  the pending mask shows that the process is already as good as dead.
  """
  for line in (_read_text(f"/proc/{pid}/status") or "").splitlines():
    name, _, mask = line.partition(":")
    if name in ("SigPnd", "ShdPnd") and int(mask, 16) & _SIGKILL_BIT:
      return True
  return False


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
  """(state, kernel flags, start time in clock ticks since boot) of a process from /proc; None if unavailable."""
  text = _read_text(f"/proc/{pid}/stat")
  if not text:
    return None
  fields = text[text.rfind(")") + 2:].split()  # the command name (in parentheses) may contain spaces
  return fields[0], int(fields[6]), int(fields[19])


def _pid_namespace() -> str | None:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


@dataclasses.dataclass(frozen=True)
class LockInfo:
  """The record in a lock file. `heartbeat` is the last refresh (posix: the file's mtime), seconds since the epoch."""
  token: str
  host: str
  pid: int
  started: float
  heartbeat: float
  lease_s: float
  heartbeat_s: float
  boot_id: str | None = None
  pid_namespace: str | None = None
  process_start: int | None = None  # /proc start time of `pid`, to recognise a reused pid

  @classmethod
  def current(cls, lease_s: float, heartbeat_s: float) -> LockInfo:
    """A record for this process, with a fresh token."""
    now = time.time()
    stat = _proc_stat(os.getpid())
    return cls(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now,
               lease_s=float(lease_s), heartbeat_s=float(heartbeat_s),
               boot_id=_read_text("/proc/sys/kernel/random/boot_id"), pid_namespace=_pid_namespace(),
               process_start=stat[2] if stat else None)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

  @classmethod
  def from_json(cls, text: str) -> LockInfo:
    """Raises ValueError for anything that is not a complete record."""
    try:
      record = json.loads(text)
      return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})
    except (json.JSONDecodeError, TypeError, KeyError) as e:
      raise ValueError(f"not a lock record: {e}") from None

  def on_this_machine(self) -> bool:
    """True when `pid` is a pid of this machine's (and this pid namespace's) process table."""
    return (self.host == socket.gethostname() and self.boot_id == _read_text("/proc/sys/kernel/random/boot_id")
            and self.pid_namespace == _pid_namespace())

  def process_alive(self) -> bool:
    """Whether `pid` on this machine is still the holder (not dead, not a zombie, not reused)."""
    if self.pid <= 0:
      return False
    try:
      os.kill(self.pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      pass  # exists, owned by another user
    killed = _sigkill_pending(self.pid)  # read before the flags: SIGKILL leaves the mask as the exiting flag is set
    stat = _proc_stat(self.pid)
    if stat is None:
      return not os.path.isdir("/proc/self")  # with /proc, a missing entry means it has just exited
    state, flags, start = stat
    if killed or state in ("Z", "X") or flags & _PF_EXITING:  # a zombie, or killed and still freeing a large address space
      return False
    return self.process_start is None or start == self.process_start


def _when(t: float, now: float) -> str:
  """'2026-01-02 03:04:05 UTC (12.3 s ago)', or '(in 12.3 s)' for a time to come."""
  stamp = datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
  age = abs(now - t)
  span = f"{age:.1f} s" if age < 120 else (f"{age / 60:.1f} min" if age < 7200 else f"{age / 3600:.1f} h")
  return f"{stamp} (in {span})" if t > now else f"{stamp} ({span} ago)"


class WorkdirLock:
  """An exclusive lock on a workdir for one trainer (process 0 of a multi-host run); see the module docstring.

  Args:
    workdir: the run's workdir (local path or gs://...); created if missing.
    lease_s: how long without a refresh before a holder on another machine counts as dead.
    heartbeat_s: how often the holder refreshes the lock.
    settle_s: lease protocol only: the wait between writing the record and reading it back.
    wait_s: None: refuse a live holder at once, but wait (up to its lease) for one that has missed two heartbeats.
      A number: wait up to that long for the lock to be released or go stale (0: never wait).
    protocol: "auto" (posix for paths without a URI scheme, else lease), "posix" or "lease".
    name: the lock file's name inside the workdir.
  """

  def __init__(self, workdir, *, lease_s: float = 60.0, heartbeat_s: float = 10.0, settle_s: float = 3.0,
               wait_s: float | None = None, protocol: str = "auto", name: str = LOCK_NAME):
    if not heartbeat_s > 0:
      raise ValueError(f"heartbeat_s={heartbeat_s}: must be > 0.")
    if settle_s < 0:
      raise ValueError(f"settle_s={settle_s}: must be >= 0.")
    if wait_s is not None and wait_s < 0:
      raise ValueError(f"wait_s={wait_s}: must be None (wait for a holder that missed heartbeats) or >= 0.")
    if protocol not in ("auto", "posix", "lease"):
      raise ValueError(f"protocol={protocol!r}: must be 'auto', 'posix' or 'lease'.")
    self.path = epath.Path(workdir) / name
    if "://" not in os.fspath(self.path):
      self.path = epath.Path(os.path.abspath(os.fspath(self.path)))  # the error message names an absolute path
    if protocol == "auto":
      protocol = "lease" if "://" in os.fspath(self.path) else "posix"
    minimum = 2 * heartbeat_s + (settle_s if protocol == "lease" else 0.0)
    if not lease_s > minimum:
      raise ValueError(f"lease_s={lease_s}: must exceed 2 * heartbeat_s{' + settle_s' if protocol == 'lease' else ''}"
                       f" = {minimum} so that a live holder is never taken for dead; raise lease_s.")
    self.protocol = protocol
    self.lease_s, self.heartbeat_s, self.settle_s, self.wait_s = float(lease_s), float(heartbeat_s), settle_s, wait_s
    self.info: LockInfo | None = None
    self.lost: str | None = None  # why the lock was lost, set by the heartbeat
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # -- public API --------------------------------------------------------------------------------------------------

  @property
  def held(self) -> bool:
    return self.info is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock (taking over a stale one) or raises WorkdirLockedError naming the live holder."""
    if self.held:
      raise WorkdirLockError(f"{self.path} is already held by this WorkdirLock.")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    waiting_logged = False
    while True:
      mine = LockInfo.current(self.lease_s, self.heartbeat_s)
      holder = self._attempt_posix(mine) if self.protocol == "posix" else self._attempt_lease(mine)
      if holder is None:
        self.info, self.lost = mine, None
        self._start_heartbeat()
        logging.info("Locked %s (host %s, pid %d).", self.path, mine.host, mine.pid)
        return self
      now = time.time()
      if self.wait_s is None:
        missed = not holder.on_this_machine() and now - holder.heartbeat > 2 * holder.heartbeat_s
        if not missed or time.monotonic() - start > holder.lease_s + holder.heartbeat_s:
          raise self._locked_error(holder, now)
        remaining = holder.heartbeat + holder.lease_s - now
      else:
        remaining = self.wait_s - (time.monotonic() - start)
        if remaining <= 0:
          raise self._locked_error(holder, now)
      if not waiting_logged:
        logging.warning("%s is held by host %s pid %d (last refreshed %s); waiting up to %.1f s for it to end.",
                        self.path, holder.host, holder.pid, _when(holder.heartbeat, now), max(remaining, 0))
        waiting_logged = True
      time.sleep(min(max(remaining, 0.01), max(0.01, holder.heartbeat_s / 2), 1.0))

  def release(self) -> None:
    """Stops the heartbeat (joined: no thread is left) and removes the lock if it is still this trainer's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self.info is None or self.info.pid != os.getpid():  # never, from a forked child
      return
    token, self.info = self.info.token, None
    try:
      if self.protocol == "posix":
        self._remove_if_token(os.fspath(self.path), token)
      else:
        current = self._read_lease()
        if current is not None and current.token == token:
          self.path.unlink(missing_ok=True)
    except OSError as e:  # never mask the run's own error with the lock's
      logging.error("Could not remove the lock %s (%s); delete it by hand.", self.path, e)

  def check(self) -> None:
    """Raises WorkdirLockLostError if the heartbeat found the lock taken over or deleted."""
    if self.lost:
      raise WorkdirLockLostError(self.lost)

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  # -- judgement ---------------------------------------------------------------------------------------------------

  @staticmethod
  def _stale(info: LockInfo, now: float) -> bool:
    if info.on_this_machine():
      return not info.process_alive()
    return now - info.heartbeat > info.lease_s

  def _locked_error(self, holder: LockInfo, now: float) -> WorkdirLockedError:
    path = os.fspath(self.path)
    remove = f"rm {path}" if "://" not in path else (
        f"gcloud storage rm {path}" if path.startswith("gs://") else f"delete {path}")
    if holder.on_this_machine():
      stop = f"stop it (kill {holder.pid} on this machine)"
      auto = "It is taken over automatically once that process has exited."
    else:
      stop = f"stop it (on {holder.host}: kill {holder.pid})"
      auto = (f"If that process is dead, the lock is taken over automatically once it has not been refreshed for "
              f"{holder.lease_s:g} s (at {_when(holder.heartbeat + holder.lease_s, now)}).")
    if not holder.token:  # unreadable: no host or pid to name
      message = (f"The workdir {os.fspath(self.path.parent)} has an unreadable lock file, last modified "
                 f"{_when(holder.heartbeat, now)}; it counts as held until it is {holder.lease_s:g} s old. If no "
                 f"trainer is running on this workdir, remove it: {remove}")
      return WorkdirLockedError(message, holder, self.path)
    message = (f"The workdir {os.fspath(self.path.parent)} is in use by another trainer: host {holder.host}, "
               f"pid {holder.pid}, started {_when(holder.started, now)}, lock last refreshed "
               f"{_when(holder.heartbeat, now)}. Only one trainer may write to a workdir. Wait for it to finish, "
               f"{stop}, or use another --workdir. {auto} If you are certain it is dead, remove the lock file: "
               f"{remove}")
    return WorkdirLockedError(message, holder, self.path)

  # -- posix protocol ----------------------------------------------------------------------------------------------

  def _read_posix(self, path: str) -> LockInfo | None:
    """The record at `path` with its mtime as heartbeat; None if absent; an anonymous record if unreadable."""
    try:
      fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
      return None
    try:
      mtime = os.fstat(fd).st_mtime
      chunks = []
      while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    finally:
      os.close(fd)
    try:
      info = LockInfo.from_json(b"".join(chunks).decode("utf-8", "replace"))
    except ValueError:  # corrupt (a crash of a non-journalled disk): counts as dead one lease after its mtime
      return LockInfo(token="", host="<unreadable lock file>", pid=0, started=mtime, heartbeat=mtime,
                      lease_s=self.lease_s, heartbeat_s=self.heartbeat_s)
    return dataclasses.replace(info, heartbeat=mtime)

  def _link_create(self, path: str, info: LockInfo) -> bool:
    """Creates `path` holding `info`, complete at once; False if it exists. Raises _NoHardLinks if unsupported."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    data = info.to_json().encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
      while data:
        data = data[os.write(fd, data):]
      os.fsync(fd)
    finally:
      os.close(fd)
    try:
      os.link(tmp, path)
      return True
    except FileExistsError:
      return False
    except OSError as e:
      if e.errno in _NO_LINK_ERRNOS:
        raise _NoHardLinks(e) from None
      raise
    finally:
      try:
        os.unlink(tmp)
      except FileNotFoundError:
        pass

  def _remove_if_token(self, path: str, token: str) -> bool:
    """Removes `path` if it holds `token`; a different record moved aside by mistake is linked back."""
    current = self._read_posix(path)
    if current is None or current.token != token:
      return False
    aside = f"{path}.{uuid.uuid4().hex}.removing"  # rename first, so that only the record just read is removed
    try:
      os.rename(path, aside)
    except FileNotFoundError:
      return False
    try:
      info = self._read_posix(aside)
      if info is not None and info.token == token:
        return True
      try:
        os.link(aside, path)
      except FileExistsError:
        logging.error("Displaced the lock %s of host %s pid %d while removing a stale one.", path,
                      info.host if info else "?", info.pid if info else -1)
      return False
    finally:
      os.unlink(aside)

  def _attempt_posix(self, mine: LockInfo) -> LockInfo | None:
    """None if `mine` now holds the lock, else the live holder's record."""
    path = os.fspath(self.path)
    brk = path + ".break"
    deadline = time.monotonic() + 2 * self.lease_s + 5
    while time.monotonic() < deadline:
      try:
        if self._link_create(path, mine):
          return None
      except _NoHardLinks as e:
        logging.warning("%s: the filesystem does not support hard links (%s); using the lease protocol.", path, e)
        self.protocol = "lease"
        return self._attempt_lease(mine)
      holder = self._read_posix(path)
      if holder is None:
        continue  # released in between: try again
      if holder.token == mine.token:
        return None  # an NFS link whose reply was lost
      if not self._stale(holder, time.time()):
        return holder
      if self._link_create(brk, mine):  # only the holder of the break lock may remove the stale lock
        try:
          if self._remove_if_token(path, holder.token):  # re-read under the break lock: still the stale one?
            logging.warning("Took over the stale lock %s of host %s pid %d (last refreshed %s).", path,
                            holder.host, holder.pid, _when(holder.heartbeat, time.time()))
        finally:
          self._remove_if_token(brk, mine.token)
        continue
      breaker = self._read_posix(brk)
      if breaker is not None and self._stale(breaker, time.time()):
        self._remove_if_token(brk, breaker.token)
      else:
        time.sleep(0.005)  # another process is removing the stale lock: milliseconds
    raise WorkdirLockError(f"Could not take over the stale lock {path}: {brk} stayed held for "
                           f"{2 * self.lease_s + 5:g} s. If no trainer is running, remove both files.")

  # -- lease protocol (object stores) ------------------------------------------------------------------------------

  def _read_lease(self) -> LockInfo | None:
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    try:
      return LockInfo.from_json(text)
    except ValueError:  # records are replaced whole, so this is no half-written one: treat it as dead
      return LockInfo(token="", host="<unreadable lock file>", pid=0, started=0.0, heartbeat=0.0,
                      lease_s=self.lease_s, heartbeat_s=self.heartbeat_s)

  def _write_lease(self, info: LockInfo) -> None:
    """Replaces the record whole: an object write is atomic; a file is written aside and renamed over it."""
    if "://" in os.fspath(self.path):
      self.path.write_text(info.to_json())
    else:
      tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}.tmp"
      tmp.write_text(info.to_json())
      tmp.replace(self.path)

  def _attempt_lease(self, mine: LockInfo) -> LockInfo | None:
    """Write, wait settle_s, read back: None if `mine` is the record that stayed, else the live holder's record."""
    deadline = time.monotonic() + 2 * self.lease_s + 5
    while time.monotonic() < deadline:
      holder = self._read_lease()
      if holder is not None and holder.token != mine.token:
        if not self._stale(holder, time.time()):
          return holder
        logging.warning("Taking over the stale lock %s of host %s pid %d (last refreshed %s).", self.path,
                        holder.host, holder.pid, _when(holder.heartbeat, time.time()))
      self._write_lease(dataclasses.replace(mine, heartbeat=time.time()))
      time.sleep(self.settle_s)
      back = self._read_lease()
      if back is not None and back.token == mine.token:
        return None
    raise WorkdirLockError(f"Could not acquire {self.path}: its record kept changing for {2 * self.lease_s + 5:g} s.")

  # -- heartbeat ---------------------------------------------------------------------------------------------------

  def _start_heartbeat(self) -> None:
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(self._stop, self.info.token), daemon=True,
                                    name=f"workdir-lock-heartbeat {os.fspath(self.path)}")
    self._thread.start()

  def _beat(self, stop: threading.Event, token: str) -> None:
    while not stop.wait(self.heartbeat_s):
      try:
        self._refresh(token)
      except WorkdirLockLostError as e:
        self.lost = str(e)
        logging.error("%s", e)
        return
      except Exception as e:  # pylint: disable=broad-except  # a transient store error: retry next beat
        logging.warning("Could not refresh the lock %s: %s", self.path, e)

  def _refresh(self, token: str) -> None:
    path = os.fspath(self.path)
    current = self._read_posix(path) if self.protocol == "posix" else self._read_lease()
    if current is None or current.token != token:
      taken = ("it was deleted" if current is None else
               f"it now belongs to host {current.host} pid {current.pid}, which took it for free or dead")
      raise WorkdirLockLostError(f"This trainer lost its workdir lock {path}: {taken}. Another trainer may be "
                                 f"writing to the workdir; stop this run.")
    now = time.time()
    if self.protocol == "posix":
      os.utime(path, (now, now))
    else:
      self._write_lease(dataclasses.replace(current, heartbeat=now))


class _NoHardLinks(OSError):
  """link(2) is not supported where the lock lives."""
