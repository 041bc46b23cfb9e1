"""The `code` scorer: run an answer against the item's tests in a limited subprocess.

HumanEval-style items carry `prompt` (signature and docstring), `test` (a `check(candidate)`
function) and `entry_point`; other items may carry `tests` (plain asserts). The program is
the code of the answer (its last fenced block, else the whole text) after the prompt,
followed by the tests; it passes when it exits with status 0.

Limits, from the outside in: a wall-clock timeout after which the whole process group is
killed (the child runs in its own session); CPU seconds, address space, file size and open
files set with `resource.setrlimit` in the child before the answer runs; as root, the child
drops to user `nobody` with `RLIMIT_NPROC` 1, so it cannot fork; and an audit hook (which
Python code cannot remove) refuses fork, exec, spawn, subprocess, signals to other processes,
sockets and ctypes. This stops accidents and the usual hostile answers (infinite loops, fork
bombs, memory hogs); it is not a security boundary for code written to escape it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
import tempfile

from moa.eval.data import EvalDataError, EvalItem
from moa.eval.scorers import Score, Scorer

__all__ = ["CodeScorer", "build_program", "run_limited"]

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)

_PRELUDE = r"""
import os, resource, sys
limits = {limits!r}
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
if os.geteuid() == 0:
    import pwd
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
    os.setuid(nobody.pw_uid)
BLOCKED = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
           "subprocess.Popen", "os.kill", "os.killpg", "socket.", "ctypes.", "os.setuid",
           "pty.spawn", "signal.pthread_kill", "resource.setrlimit")
def _audit(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError(f"moa eval sandbox: {{event}} is not allowed")
code = compile(sys.stdin.read(), "<answer>", "exec")
sys.addaudithook(_audit)
del os, resource
exec(code, {{"__name__": "__main__"}})
"""


def extract_code(answer: str) -> str:
    """The last fenced code block of `answer`, else the whole answer."""
    blocks = _FENCE.findall(answer)
    return str(blocks[-1]) if blocks else answer


def build_program(answer: str, item: EvalItem) -> str:
    """The program the `code` scorer runs for `answer` to `item`."""
    code = extract_code(answer)
    fields = item.fields
    prompt = str(fields.get("prompt") or "")
    entry = fields.get("entry_point")
    if "test" in fields and isinstance(entry, str):
        body = (
            f"{prompt}\n{code}" if f"def {entry}" not in code else f"{prompt}\n    pass\n\n{code}"
        )
        return f"{body}\n\n{fields['test']}\n\ncheck({entry})\n"
    tests = fields.get("tests")
    if isinstance(tests, list):
        tests = "\n".join(str(t) for t in tests)
    if not isinstance(tests, str):
        raise EvalDataError(
            f"item {item.id!r} has neither 'test' with 'entry_point' nor 'tests' for the "
            "code scorer"
        )
    return f"{prompt}\n{code}\n\n{tests}\n"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_limited(
    program: str, *, seconds: float = 10.0, memory_mb: int = 512
) -> tuple[bool, str]:
    """Run `program` under the limits above. Returns (passed, reason). It passes when it
    runs to its end (a line printed after the tests proves it: exiting early with status 0
    is not a pass) and exits with status 0."""
    sentinel = secrets.token_hex(16)
    program = f"{program}\n\nprint({sentinel!r}, flush=True)\n"
    limits = {
        "RLIMIT_CPU": max(1, int(seconds) + 1),
        "RLIMIT_AS": memory_mb * 1024 * 1024,
        "RLIMIT_FSIZE": 16 * 1024 * 1024,
        "RLIMIT_NOFILE": 64,
        "RLIMIT_CORE": 0,
    }
    with tempfile.TemporaryDirectory(prefix="moa-eval-code-") as workdir:
        os.chmod(workdir, 0o777)  # the child may run as nobody
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _PRELUDE.format(limits=limits),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=workdir, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(program.encode()), seconds)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return False, f"timed out after {seconds:g} s"
        finally:
            _kill_group(proc.pid)  # whatever it left behind
    if proc.returncode == 0:
        if out.decode("utf-8", "replace").splitlines()[-1:] == [sentinel]:
            return True, "passed"
        return False, "exited before the tests ran to their end"
    if proc.returncode is not None and proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return False, f"killed by {name} (CPU or memory limit)"
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return False, (lines[-1][:300] if lines else f"exit status {proc.returncode}")


class CodeScorer(Scorer):
    """1 when the answer's code passes the item's tests within `timeout` seconds and
    `memory_mb` of address space, else 0 with the reason as the note."""

    name = "code"
    vote_extract = "exact"

    def __init__(self, timeout: float | str = 10.0, memory_mb: int | str = 512) -> None:
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)

    def extract(self, answer: str) -> str | None:
        return extract_code(answer).strip() or None

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        program = build_program(answer, item)
        passed, reason = await run_limited(program, seconds=self.timeout, memory_mb=self.memory_mb)
        return Score(1.0 if passed else 0.0, None, reason)
