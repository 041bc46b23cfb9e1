"""Ctrl-C and SIGTERM end `moa run` and `moa batch` at once, whatever worker threads are
doing; and the executor behind moa's worker threads (moa._runner) never makes anyone wait.

The commands run as real processes (the `moa` entry point, with a neuron type registered in
that process whose model load in a worker thread never ends); no assertion is about time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import HANG_GUARD, LOADING_NEURON, interrupt, wait_until

from moa._runner import DaemonExecutor, run, to_thread
from moa.testing import FakeProvider, Reply

CLI_CHILD = LOADING_NEURON + """
from moa.cli import main

main(sys.argv[1:])
"""
CONFIG = """
proposal_layers:
  - neurons:
    - {model: "m/A"}
    - {type: loading}
aggregation_layer: {model: "m/AGG"}
"""


@pytest.mark.parametrize(
    ("command", "signum", "status", "target"),
    [
        ("run", signal.SIGTERM, 143, "process"),
        ("run", signal.SIGINT, 130, "process"),
        ("batch", signal.SIGTERM, 143, "process"),
        ("batch", signal.SIGINT, 130, "process"),
        # The kernel may run the handler on any thread; on the stuck worker, a Python-level
        # handler waited for the idle main thread to wake up, for ever (issue #14, item 7).
        ("run", signal.SIGINT, 130, "worker thread"),
        ("run", signal.SIGTERM, 143, "worker thread"),
        ("batch", signal.SIGINT, 130, "worker thread"),
        ("eval", signal.SIGINT, 130, "worker thread"),
        ("eval", signal.SIGTERM, 143, "process"),
    ],
)
def test_a_signal_ends_the_command_although_a_worker_thread_never_finishes(
    command: str, signum: int, status: int, target: str, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.set_default(Reply(fault="hang"))
    (tmp_path / "moa.yaml").write_text(CONFIG)
    (tmp_path / "in.jsonl").write_text('{"id": 1, "query": "q"}\n')
    args = {
        "run": ["run", "q"],
        "batch": ["batch", "in.jsonl", "-o", "out.jsonl"],
        "eval": ["eval", "in.jsonl", "--baselines", "", "--no-cache", "--no-progress"],
    }[command]
    env = {**os.environ, "BASE_URL": fake.base_url, "MOA_MAX_RETRIES": "0"}
    child = subprocess.Popen(
        [sys.executable, "-c", CLI_CHILD, *args, "-c", "moa.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        loading, worker = child.stdout.readline().split()
        assert loading == "loading"
        fake.wait_for_requests(1, timeout=HANG_GUARD)
        interrupt(child, signum, target, int(worker))
        _, err = child.communicate(timeout=HANG_GUARD)
    finally:
        child.kill()
    assert child.returncode == status, err
    assert "Error: interrupted" in err and "Traceback" not in err
    if command == "batch":  # nothing half-written; a rerun resumes
        assert (tmp_path / "out.jsonl").read_text() == ""
    if command != "run":
        assert "rerun the same command to resume" in err
    (request,) = fake.requests
    asyncio.run(wait_until(lambda: fake.requests[0].cancelled))
    assert request.model == "m/A"


def test_a_run_cancelled_while_its_worker_thread_is_stuck_returns_at_once() -> None:
    """`run()` (what process_sync and the CLI use) abandons a stuck worker thread."""
    stuck = threading.Event()
    release = threading.Event()
    workers: list[threading.Thread] = []

    def load() -> None:
        workers.append(threading.current_thread())
        stuck.set()
        release.wait()

    async def main() -> None:
        work = asyncio.ensure_future(to_thread(load))
        await asyncio.to_thread(stuck.wait)  # the default executor is the daemon one too
        work.cancel()
        await asyncio.sleep(0)
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run(main())
    (worker,) = workers
    assert worker.daemon and worker.is_alive()  # still stuck, and nobody waited for it
    release.set()


def test_the_daemon_executor_reuses_threads_and_bounds_them() -> None:
    pool = DaemonExecutor(max_workers=2, idle_timeout=5)
    threads = {pool.submit(threading.get_ident).result() for _ in range(20)}
    assert len(threads) <= 2  # idle threads are reused, never more than max_workers
    gate = threading.Event()
    blocked = [pool.submit(gate.wait) for _ in range(2)]
    queued = pool.submit(threading.get_ident)  # both threads busy: it waits its turn
    assert not queued.done()
    gate.set()
    assert all(f.result() for f in blocked) and queued.result()
    pool.shutdown(wait=True)  # returns at once, whatever the threads do
    with pool:
        pass


def test_run_gives_back_the_signal_handling_it_found() -> None:
    """`run()` (process_sync) borrows SIGINT/SIGTERM and the wakeup fd for the run only;
    a SIGINT handler the script installed itself is left in charge during the run."""
    seen: list[int] = []

    def mine(signum: int, frame: object) -> None:
        seen.append(signum)

    async def answer() -> int:
        return 42

    async def interrupted_by_itself() -> int:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.05)  # the script's handler runs; the run is not cancelled
        return 7

    term_before = signal.getsignal(signal.SIGTERM)
    fd_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd_before)
    assert run(answer(), sigterm=True) == 42
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is term_before
    assert signal.set_wakeup_fd(fd_before) == fd_before

    previous = signal.signal(signal.SIGINT, mine)
    try:
        assert run(interrupted_by_itself()) == 7
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIGINT]
