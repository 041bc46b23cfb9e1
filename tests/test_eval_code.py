"""The `code` scorer runs answers in a limited subprocess: right code passes, wrong code
fails, and hostile code (infinite loop, fork bomb, memory hog) is stopped."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from moa.eval import EvalItem
from moa.eval.code import CodeScorer, build_program

ITEM = EvalItem(
    "HumanEval/0",
    "complete it",
    {
        "prompt": 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    },
)


def score(answer: str, item: EvalItem = ITEM, **options: float) -> tuple[float | None, str]:
    result = asyncio.run(CodeScorer(**options).score(answer, item))
    return result.value, result.note or ""


def test_a_completion_of_the_prompt_passes() -> None:
    assert score("    return a + b\n") == (1.0, "passed")


def test_a_whole_function_in_a_fenced_block_passes() -> None:
    answer = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert score(answer)[0] == 1.0


def test_wrong_code_fails_with_the_reason() -> None:
    value, note = score("```python\ndef add(a, b):\n    return a - b\n```")
    assert value == 0.0
    assert "AssertionError" in note


def test_plain_asserts_as_tests() -> None:
    item = EvalItem(2, "q", {"tests": ["assert double(2) == 4", "assert double(0) == 0"]})
    assert score("def double(x):\n    return 2 * x", item)[0] == 1.0
    assert score("def double(x):\n    return x", item)[0] == 0.0


def test_an_infinite_loop_is_stopped() -> None:
    started = time.perf_counter()
    value, note = score("    while True:\n        pass\n", timeout=2)
    assert value == 0.0
    assert "timed out" in note or "SIGKILL" in note or "SIGXCPU" in note
    assert time.perf_counter() - started < 30


def test_a_fork_bomb_is_stopped_and_leaves_no_process() -> None:
    before = _processes()
    bomb = "```python\nimport os\nwhile True:\n    os.fork()\n```"
    value, note = score(bomb, timeout=3)
    assert value == 0.0
    assert note
    time.sleep(0.5)
    assert _processes() - before < 5


def test_fork_through_subprocess_and_ctypes_is_refused() -> None:
    for answer in (
        "import subprocess\nsubprocess.run(['true'])\ndef add(a, b):\n    return a + b",
        "import ctypes\nctypes.CDLL(None).fork()\ndef add(a, b):\n    return a + b",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))\ndef add(a, b):\n    return a + b",
    ):
        value, note = score(answer)
        assert value == 0.0
        assert "not allowed" in note or "Error" in note


def test_a_memory_hog_is_stopped() -> None:
    value, note = score("    x = bytearray(4 * 1024 ** 3)\n    return a + b\n", memory_mb=256)
    assert value == 0.0
    assert "MemoryError" in note or "memory" in note


def test_the_answer_cannot_skip_the_tests_by_exiting() -> None:
    for answer in ("import sys\nsys.exit(0)", "import os\nos._exit(0)"):
        value, note = score(f"```python\n{answer}\n```")
        assert (value, note) == (0.0, "exited before the tests ran to their end")


def test_build_program_keeps_the_prompt_imports() -> None:
    test = "def check(c):\n    assert c(4) == 2\n"
    item = EvalItem(
        3, "q", {"prompt": "import math\ndef f(x):\n", "test": test, "entry_point": "f"}
    )
    program = build_program("```python\ndef f(x):\n    return math.isqrt(x)\n```", item)
    assert program.startswith("import math")
    assert program.rstrip().endswith("check(f)")


@pytest.fixture(autouse=True)
def _posix() -> None:
    if os.name != "posix":
        pytest.skip("the code scorer's limits are POSIX resource limits")


def _processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())
