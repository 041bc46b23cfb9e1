"""Shared fixtures. Every test runs behind the network guard, in an empty working directory
with no provider variables set, so nothing from the developer's machine leaks in."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import moa
from moa import MixtureOfAgents, Settings, create_moa_from_config
from moa.plugins import reload_plugins
from moa.testing import FakeProvider
from moa.testing.pytest_plugin import CANARY_KEY

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

# A job started in the background by a shell without job control (`bash script &`, as some
# CI runners do) ignores SIGINT, and every process it starts inherits that: Ctrl-C would do
# nothing in the children the interrupt tests start. They are about a terminal's Ctrl-C, so
# the suite gives SIGINT back its default (children then start with Python's handler).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ECHO_PLUGIN = Path(__file__).parent / "plugins" / "moa-echo"

__all__ = [
    "CANARY_KEY",
    "EXAMPLES",
    "ROOT",
    "installed",
    "moa_frame_locals",
    "HANG_GUARD",
    "LOADING_NEURON",
    "interrupt",
    "kill_after_lines",
    "signal_thread",
    "wait_until",
]


HANG_GUARD = 300.0
"""Seconds a test waits for a child process or a condition before failing. Only so a broken
build fails instead of hanging: never a speed bar (a busy 2-core CI machine can be 20x slower
than an idle one, and a test must not fail for that)."""


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition on the fake server's records (it sees disconnects asynchronously);
    fail after `HANG_GUARD` seconds."""
    async with asyncio.timeout(HANG_GUARD):
        while not condition():  # noqa: ASYNC110 - set by the server thread, no Event to await
            await asyncio.sleep(0.01)


_TGKILL = {"x86_64": 234, "aarch64": 131, "i686": 270, "armv7l": 268}  # Linux syscall numbers


def signal_thread(pid: int, tid: int, signum: int) -> None:
    """Send `signum` to one thread (`tid`, a native thread id) of process `pid`: what the
    kernel does with a process-directed signal when it picks that thread to run the handler.
    Skips the test where there is no `tgkill`."""
    machine = os.uname().machine
    if sys.platform != "linux" or machine not in _TGKILL:
        pytest.skip(f"thread-directed signals are only sent on Linux here, not {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_TGKILL[machine], pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {signum}) failed")


def kill_after_lines(args: Sequence[str], env: Mapping[str, str], out: Path, lines: int) -> None:
    """Run `python -m moa *args` and SIGKILL it once `out` holds `lines` whole lines: a crash
    in the middle of a run, at a point that does not depend on the machine's speed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa", *args],
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not (out.exists() and out.read_bytes().count(b"\n") >= lines):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, f"fewer than {lines} lines in {HANG_GUARD:g} s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


LOADING_NEURON = """
import asyncio, sys, threading
from typing import Literal
from moa import Generation, Neuron, NeuronConfig, hookimpl
from moa.plugins import register_plugin


class Loading(Neuron):
    \"\"\"Loads its model in a worker thread, as a local-model neuron does; this load never
    ends (a stuck import, a download that hangs). Prints its thread's native id.\"\"\"

    class Config(NeuronConfig):
        type: Literal["loading"] = "loading"

    async def generate(self, request):
        await asyncio.to_thread(self.load)
        return Generation(text="loaded")

    def load(self):
        print("loading", threading.get_native_id(), flush=True)
        threading.Event().wait()


class Plugin:
    @hookimpl
    def register_neurons(self, register):
        register("loading", Loading)


register_plugin(Plugin(), name="loading")
"""
"""The start of a child script for the interrupt tests: neuron type `loading`, whose model
load in a worker thread never ends; it prints `loading <native thread id>` when it starts."""


def interrupt(child: subprocess.Popen[str], signum: int, target: str, worker: int) -> None:
    """Send `signum` to `child` ("process") or to its thread `worker` ("worker thread": where
    the kernel may deliver a process's signal)."""
    if target == "process":
        child.send_signal(signum)
    else:
        signal_thread(child.pid, worker, signum)


def moa_frame_locals(error: BaseException) -> str:
    """Every frame of moa's own code in the tracebacks of `error` and its sub-exceptions and
    causes, with the repr of each local variable."""
    package = str(Path(moa.__file__).parent)
    seen: set[int] = set()
    lines: list[str] = []

    def walk(exc: BaseException | None) -> None:
        if exc is None or id(exc) in seen:
            return
        seen.add(id(exc))
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            if frame.f_code.co_filename.startswith(package):
                lines.append(frame.f_code.co_name)
                lines.extend(f"{k}={v!r}" for k, v in frame.f_locals.items())
        for sub in getattr(exc, "exceptions", ()):
            walk(sub)
        walk(exc.__cause__)
        walk(exc.__context__)

    walk(error)
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _isolated(
    moa_network_guard: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "PROVIDER_API_KEY",
        "BASE_URL",
        "MOA_LOAD_PLUGINS",
        "MOA_REQUEST_TIMEOUT",
        "MOA_MAX_RETRIES",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GROQ_API_KEY",
        "MOA_REDIS_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    from moa.ratelimit import use_backend

    use_backend(None)  # rate-limit buckets start empty, and the backend is chosen anew


@pytest.fixture
def fake(moa_fake_provider: FakeProvider) -> FakeProvider:
    return moa_fake_provider


@pytest.fixture
def build(moa_settings: Settings) -> Callable[..., MixtureOfAgents]:
    """Build a mixture from YAML text or a dict, with bare models sent to the fake provider."""

    def _build(config: str | dict[str, Any], **overrides: Any) -> MixtureOfAgents:
        settings = moa_settings.model_copy(update=overrides) if overrides else moa_settings
        source = textwrap.dedent(config) if isinstance(config, str) else config
        return create_moa_from_config(source, is_file_path=False, settings=settings)

    return _build


@contextlib.contextmanager
def installed(source: Path, target: Path, module: str) -> Iterator[Path]:
    """Build and install the distribution at `source` for real (pip, dist-info, entry
    point) into `target`, put on sys.path while the block runs; plugins are reloaded."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(source),
        ],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    reload_plugins()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        importlib.invalidate_caches()
        sys.modules.pop(module, None)
        reload_plugins()


@pytest.fixture(scope="module")
def chatapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """docs/example-plugin (moa-chatapi), installed for real for the tests of one module."""
    example = ROOT / "docs" / "example-plugin"
    with installed(example, tmp_path_factory.mktemp("site-packages"), "moa_chatapi") as target:
        yield target


@pytest.fixture(scope="session")
def echo_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/plugins/moa-echo, installed for real into a private directory for this session."""
    with installed(ECHO_PLUGIN, tmp_path_factory.mktemp("site-packages"), "moa_echo") as target:
        yield target


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's `redis-server` package) on 127.0.0.1 and a free port,
    with no persistence, for the session."""
    import shutil
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
         "no", "--dir", str(workdir), "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                err = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"redis-server did not start: {err}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
