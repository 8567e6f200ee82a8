"""One trainer per workdir: refusal naming the holder, takeover of dead holders' locks, exactly one winner of a race.

Holders and racers are real subprocesses (the lock is between processes); the lease protocol runs on local disk
and, in a subprocess, on gs:// paths that etils.epath serves from fsspec's in-memory filesystem. Heartbeats of
0.1 s and leases of 0.6 s keep every test under a few seconds; every subprocess has a timeout.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from debias_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HB, LEASE, SETTLE = 0.1, 0.6, 0.1
TIMEOUT_S = 30
FAST = dict(heartbeat_s=HB, lease_s=LEASE, settle_s=SETTLE)

HOLDER = """
import sys, time
from debias_jax import workdir_lock
lock = workdir_lock.WorkdirLock(sys.argv[1], heartbeat_s=float(sys.argv[2]), lease_s=float(sys.argv[3]),
                                settle_s=0.1, protocol=sys.argv[4])
lock.acquire()
ballast = b"x" * (int(sys.argv[5]) << 20)  # written memory, which a SIGKILLed process takes a while to free
print("ACQUIRED", flush=True)
time.sleep(60)
"""

# Each racer takes part in every round: it waits for the round's go file, tries once, reports, keeps what it won.
RACER = """
import os, sys, time
from debias_jax import workdir_lock
root, rounds, protocol, settle_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
held = []
for r in range(rounds):
  while not os.path.exists(os.path.join(root, f"go{r}")):
    time.sleep(0.0005)
  lock = workdir_lock.WorkdirLock(os.path.join(root, f"w{r}"), heartbeat_s=0.1, lease_s=0.6,
                                  settle_s=settle_s, wait_s=0, protocol=protocol)
  try:
    held.append(lock.acquire())
    print(f"{r} won", flush=True)
  except workdir_lock.WorkdirLockedError:
    print(f"{r} refused", flush=True)
sys.stdin.read()  # hold what was won until the test closes stdin
for lock in held:
  lock.release()
"""

# gs:// through etils.epath's fsspec backend (EPATH_USE_TF=false), served by an in-memory filesystem.
MEMORY_GCS = """
import os
os.environ["EPATH_USE_TF"] = "false"
import threading, time
import fsspec
from fsspec.implementations.memory import MemoryFileSystem
from etils import epath

class MemoryGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]

fsspec.register_implementation("gcs", MemoryGCS, clobber=True)
from debias_jax import workdir_lock
FAST = dict(heartbeat_s=0.1, lease_s=0.6, settle_s=0.1)
"""


def heartbeat_threads():
  return [t for t in threading.enumerate() if t.name.startswith("workdir-lock-heartbeat") and t.is_alive()]


def read_line(proc, timeout_s=TIMEOUT_S) -> str:
  ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
  if not ready:
    proc.kill()
    raise AssertionError(f"no output from pid {proc.pid} within {timeout_s} s")
  return proc.stdout.readline().strip()


def start_holder(workdir, protocol, lease_s=LEASE, ballast_mb=0):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, workdir, str(HB), str(lease_s), protocol, str(ballast_mb)],
                          stdout=subprocess.PIPE, text=True, cwd=REPO)
  line = read_line(proc)
  assert line == "ACQUIRED", line
  return proc


def dead_pid() -> int:
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def write_lock(workdir, info, protocol):
  """A lock file as a holder with `info` would have left it (posix: the heartbeat is the file's mtime)."""
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  os.makedirs(workdir, exist_ok=True)
  with open(path + ".new", "w") as f:
    f.write(info.to_json())
  if protocol == "posix":
    os.utime(path + ".new", (info.heartbeat, info.heartbeat))
  os.replace(path + ".new", path)  # whole at once: a holder's heartbeat never reads half a record
  return path


def remote_info(heartbeat_age_s, host="other-host", pid=12345, lease_s=LEASE, heartbeat_s=HB):
  """A holder on another machine whose last refresh was `heartbeat_age_s` ago (its lease and heartbeat apply)."""
  now = time.time()
  info = workdir_lock.LockInfo.current(lease_s, heartbeat_s)
  return dataclasses.replace(info, host=host, pid=pid, boot_id="another-boot", started=now - 100,
                             heartbeat=now - heartbeat_age_s)


def dead_local_info():
  return dataclasses.replace(workdir_lock.LockInfo.current(LEASE, HB), pid=dead_pid(), process_start=1)


PROTOCOLS = (("posix", "posix"), ("lease", "lease"))


class WorkdirLockTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = os.path.join(tempfile.mkdtemp(), "run")  # acquire creates it
    self.procs = []

  def tearDown(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
      proc.wait(TIMEOUT_S)
      if proc.stdout:
        proc.stdout.close()
    super().tearDown()

  def holder(self, protocol, **kwargs):
    proc = start_holder(self.workdir, protocol, **kwargs)
    self.procs.append(proc)
    return proc

  @parameterized.named_parameters(*PROTOCOLS)
  def test_acquire_refresh_release(self, protocol):
    lock = workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST)
    with lock:
      self.assertTrue(lock.held)
      info = workdir_lock.LockInfo.from_json(open(lock.path).read())
      self.assertEqual((info.pid, info.token), (os.getpid(), lock.info.token))
      self.assertLen(heartbeat_threads(), 1)
      before = os.stat(lock.path).st_mtime if protocol == "posix" else info.heartbeat
      deadline = time.monotonic() + 5
      while time.monotonic() < deadline:  # the heartbeat refreshes the lock
        time.sleep(HB / 2)
        after = (os.stat(lock.path).st_mtime if protocol == "posix"
                 else workdir_lock.LockInfo.from_json(open(lock.path).read()).heartbeat)
        if after > before:
          break
      self.assertGreater(after, before)
      lock.check()
    self.assertFalse(lock.held)
    self.assertEqual(heartbeat_threads(), [])  # joined, not merely told to stop
    time.sleep(3 * HB)
    self.assertEqual(os.listdir(self.workdir), [])  # nothing recreated it, no temporary files left
    with workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST):  # free again
      pass

  def test_released_when_the_body_raises(self):
    with self.assertRaisesRegex(ValueError, "boom"):
      with workdir_lock.WorkdirLock(self.workdir, **FAST):
        raise ValueError("boom")
    self.assertEqual(os.listdir(self.workdir), [])
    self.assertEqual(heartbeat_threads(), [])

  @parameterized.named_parameters(*PROTOCOLS)
  def test_second_trainer_refused_naming_the_holder(self, protocol):
    proc = self.holder(protocol)
    start = time.monotonic()
    with self.assertRaises(workdir_lock.WorkdirLockedError) as caught:
      workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST).acquire()  # default wait: none for a live one
    self.assertLess(time.monotonic() - start, LEASE)
    message = str(caught.exception)
    for part in (f"host {socket.gethostname()}", f"pid {proc.pid}", "started ", "last refreshed ",
                 f"kill {proc.pid}", f"rm {os.path.join(self.workdir, 'trainer.lock')}"):
      self.assertIn(part, message)
    self.assertEqual(caught.exception.holder.pid, proc.pid)
    self.assertEqual(heartbeat_threads(), [])

  @parameterized.parameters(("posix", "reaped"), ("posix", "zombie"), ("posix", "dying"), ("lease", "reaped"))
  def test_sigkilled_holder_taken_over_at_once(self, protocol, after_kill):
    # A long lease: only the dead pid can free it quickly. "dying": taken over while the killed holder is still
    # freeing its memory (the kernel's exiting flag), before it becomes a zombie.
    proc = self.holder(protocol, lease_s=60.0, ballast_mb=256 if after_kill == "dying" else 0)
    proc.send_signal(signal.SIGKILL)
    if after_kill == "reaped":
      proc.wait(TIMEOUT_S)
    elif after_kill == "zombie":  # a zombie until its parent waits: still in the process table, but dead
      deadline = time.monotonic() + TIMEOUT_S
      while workdir_lock._proc_stat(proc.pid)[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    with workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST) as lock:
      self.assertLess(time.monotonic() - start, 2.0)
      self.assertEqual(workdir_lock.LockInfo.from_json(open(lock.path).read()).pid, os.getpid())

  def test_killed_process_is_dead_from_the_moment_kill_returns(self):
    # kill(2) returns before the target has run to set its exiting flag (on this machine ~8 in 100 times); from
    # then on the pending SIGKILL alone says it is dead. 100 tries: passing without that check is ~1e-4 likely.
    for _ in range(100):
      proc = subprocess.Popen(["sleep", "100"])
      info = dataclasses.replace(workdir_lock.LockInfo.current(60.0, HB), pid=proc.pid,
                                 process_start=workdir_lock._proc_stat(proc.pid)[2])
      self.assertTrue(info.process_alive())
      proc.send_signal(signal.SIGKILL)
      alive = info.process_alive()
      proc.wait(TIMEOUT_S)
      self.assertFalse(alive)

  def test_reused_pid_taken_over(self):
    # A lock naming this very (live) process, but with another start time: the pid now belongs to someone else.
    info = dataclasses.replace(workdir_lock.LockInfo.current(60.0, HB), token="old")
    write_lock(self.workdir, dataclasses.replace(info, process_start=info.process_start - 1), "posix")
    with workdir_lock.WorkdirLock(self.workdir, **FAST) as lock:
      self.assertNotEqual(lock.info.token, "old")
    write_lock(self.workdir, info, "posix")  # the same start time: this process holds it
    with self.assertRaisesRegex(workdir_lock.WorkdirLockedError, f"pid {os.getpid()}"):
      workdir_lock.WorkdirLock(self.workdir, **FAST).acquire()

  @parameterized.named_parameters(*PROTOCOLS)
  def test_other_host_refused_within_the_lease_taken_over_after(self, protocol):
    holder = remote_info(0.0, lease_s=1.0)  # the holder's own lease counts, not the taker's
    write_lock(self.workdir, holder, protocol)
    lock = workdir_lock.WorkdirLock(self.workdir, protocol=protocol, wait_s=0, **FAST)
    with self.assertRaises(workdir_lock.WorkdirLockedError) as caught:
      lock.acquire()
    self.assertLess(time.time(), holder.heartbeat + 1.0)
    message = str(caught.exception)
    for part in ("host other-host", "pid 12345", "on other-host: kill 12345", "not been refreshed for 1 s"):
      self.assertIn(part, message)
    time.sleep(max(0.0, holder.heartbeat + 1.0 - time.time()) + 0.05)  # no refresh for a lease: dead
    with lock:
      self.assertEqual(workdir_lock.LockInfo.from_json(open(lock.path).read()).token, lock.info.token)

  @parameterized.named_parameters(*PROTOCOLS)
  def test_default_waits_for_a_holder_that_missed_heartbeats(self, protocol):
    # Refreshed just now (heartbeat every 0.5 s): alive, refused at once.
    write_lock(self.workdir, remote_info(0.0, lease_s=5.0, heartbeat_s=0.5), protocol)
    start = time.monotonic()
    with self.assertRaises(workdir_lock.WorkdirLockedError):
      workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST).acquire()
    self.assertLess(time.monotonic() - start, 0.5)
    holder = remote_info(0.3)  # missed two heartbeats: wait out the last 0.3 s of its lease, then take over
    write_lock(self.workdir, holder, protocol)
    start = time.monotonic()
    with workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST):
      self.assertGreater(time.time(), holder.heartbeat + LEASE)
      self.assertLess(time.monotonic() - start, 2.0)

  @parameterized.named_parameters(*PROTOCOLS)
  def test_wait_s_waits_for_a_release(self, protocol):
    first = workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST).acquire()
    timer = threading.Timer(0.3, first.release)
    timer.start()
    start = time.monotonic()
    try:
      with workdir_lock.WorkdirLock(self.workdir, protocol=protocol, wait_s=5.0, **FAST) as second:
        self.assertBetween(time.monotonic() - start, 0.25, 4.0)
        self.assertFalse(first.held)
        self.assertLen(heartbeat_threads(), 1)
        with self.assertRaises(workdir_lock.WorkdirLockedError):  # and a bounded wait ends in a refusal
          workdir_lock.WorkdirLock(self.workdir, protocol=protocol, wait_s=0.3, **FAST).acquire()
        self.assertEqual(workdir_lock.LockInfo.from_json(open(second.path).read()).token, second.info.token)
    finally:
      timer.join()

  @parameterized.named_parameters(*PROTOCOLS)
  def test_unreadable_lock_file(self, protocol):
    os.makedirs(self.workdir)
    path = os.path.join(self.workdir, "trainer.lock")
    with open(path, "w") as f:
      f.write("{not json")
    if protocol == "posix":  # judged by its age: held while younger than the reader's lease (here 5 s)
      with self.assertRaisesRegex(workdir_lock.WorkdirLockedError, f"unreadable lock file.*5 s old.*rm {path}"):
        workdir_lock.WorkdirLock(self.workdir, protocol=protocol, wait_s=0, heartbeat_s=HB, lease_s=5.0).acquire()
      os.utime(path, (time.time() - 2 * LEASE,) * 2)
    # lease protocol: records are replaced whole, so an unreadable one is no holder's
    with workdir_lock.WorkdirLock(self.workdir, protocol=protocol, wait_s=0, **FAST) as lock:
      self.assertEqual(workdir_lock.LockInfo.from_json(open(path).read()).token, lock.info.token)

  @parameterized.named_parameters(*PROTOCOLS)
  def test_concurrent_takeovers_of_one_stale_lock_exactly_one_wins(self, protocol):
    rounds, racers = 6, 4
    root = os.path.dirname(self.workdir)
    for r in range(rounds):  # alternately a dead process of this machine and an expired holder elsewhere
      write_lock(os.path.join(root, f"w{r}"), dead_local_info() if r % 2 else remote_info(10 * LEASE), protocol)
    # The lease protocol's margin against a racer stalled between its read and its write: 0.3 s.
    procs = [subprocess.Popen([sys.executable, "-c", RACER, root, str(rounds), protocol, "0.3"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(racers)]
    self.procs.extend(procs)
    winners = []
    for r in range(rounds):
      open(os.path.join(root, f"go{r}"), "w").close()
      outcomes = [read_line(proc).split() for proc in procs]
      self.assertCountEqual([o[0] for o in outcomes], [str(r)] * racers)
      won = [proc.pid for proc, o in zip(procs, outcomes) if o[1] == "won"]
      self.assertLen(won, 1, f"round {r}: {outcomes}")
      info = workdir_lock.LockInfo.from_json(open(os.path.join(root, f"w{r}", "trainer.lock")).read())
      self.assertEqual(info.pid, won[0])
      winners.append(won[0])
    for proc in procs:
      proc.stdin.close()
      self.assertEqual(proc.wait(TIMEOUT_S), 0)
    for r in range(rounds):  # each winner released its lock; no break or temporary files left behind
      self.assertEqual(os.listdir(os.path.join(root, f"w{r}")), [])

  @parameterized.named_parameters(*PROTOCOLS)
  def test_heartbeat_notices_a_lost_lock(self, protocol):
    lock = workdir_lock.WorkdirLock(self.workdir, protocol=protocol, **FAST).acquire()
    try:
      other = remote_info(0.0, host="usurper", pid=999)
      write_lock(self.workdir, other, protocol)
      deadline = time.monotonic() + 5
      while lock.lost is None and time.monotonic() < deadline:
        time.sleep(HB / 2)
      with self.assertRaisesRegex(workdir_lock.WorkdirLockLostError, "host usurper pid 999"):
        lock.check()
      while heartbeat_threads() and time.monotonic() < deadline:  # it stops refreshing what is not its own
        time.sleep(0.01)
      self.assertEqual(heartbeat_threads(), [])
    finally:
      lock.release()
    self.assertEqual(workdir_lock.LockInfo.from_json(open(lock.path).read()).token, other.token)  # left alone

  def test_filesystem_without_hard_links_uses_the_lease_protocol(self):
    with mock.patch.object(os, "link", side_effect=PermissionError(1, "Operation not permitted")):
      with workdir_lock.WorkdirLock(self.workdir, **FAST) as lock:
        self.assertEqual(lock.protocol, "lease")
        self.assertEqual(workdir_lock.LockInfo.from_json(open(lock.path).read()).token, lock.info.token)
    self.assertEqual(os.listdir(self.workdir), [])

  def test_bad_settings_named(self):
    with self.assertRaisesRegex(ValueError, r"lease_s=0.15: must exceed 2 \* heartbeat_s"):
      workdir_lock.WorkdirLock(self.workdir, heartbeat_s=0.1, lease_s=0.15)
    with self.assertRaisesRegex(ValueError, r"must exceed 2 \* heartbeat_s \+ settle_s = 3.2"):
      workdir_lock.WorkdirLock("gs://bucket/run", heartbeat_s=0.1, lease_s=1.0)
    with self.assertRaisesRegex(ValueError, "protocol='flock'"):
      workdir_lock.WorkdirLock(self.workdir, protocol="flock")

  def test_gcs_paths_through_epath(self):
    script = MEMORY_GCS + textwrap.dedent("""
      import dataclasses, threading, time
      lock = workdir_lock.WorkdirLock("gs://bucket/run", **FAST)
      assert lock.protocol == "lease", lock.protocol
      with lock:
        info = workdir_lock.LockInfo.from_json(epath.Path("gs://bucket/run/trainer.lock").read_text())
        assert info.token == lock.info.token
        try:
          workdir_lock.WorkdirLock("gs://bucket/run", **FAST).acquire()
          raise AssertionError("a second trainer was let in")
        except workdir_lock.WorkdirLockedError as e:
          assert "gcloud storage rm gs://bucket/run/trainer.lock" in str(e), e
      assert not epath.Path("gs://bucket/run/trainer.lock").exists()
      assert not [t for t in threading.enumerate() if t.name.startswith("workdir-lock")]

      # Racing threads over one expired lock, 5 times: exactly one wins each time.
      for r in range(5):
        stale = dataclasses.replace(workdir_lock.LockInfo.current(0.6, 0.1), host="other-host", boot_id="x",
                                    heartbeat=time.time() - 10)
        path = epath.Path(f"gs://bucket/race{r}/trainer.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stale.to_json())
        barrier, won, locks = threading.Barrier(4), [], []
        def race():
          lock = workdir_lock.WorkdirLock(path.parent, wait_s=0, **FAST)
          locks.append(lock)
          barrier.wait()
          try:
            lock.acquire()
            won.append(lock.info.token)
          except workdir_lock.WorkdirLockedError:
            pass
        threads = [threading.Thread(target=race) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(won) == 1, (r, won)
        assert workdir_lock.LockInfo.from_json(path.read_text()).token == won[0]
        [lock.release() for lock in locks]
        assert not path.exists()
      print("OK")
      """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            timeout=TIMEOUT_S)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout.strip(), "OK")


if __name__ == "__main__":
  absltest.main()
