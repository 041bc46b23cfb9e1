"""The fault matrix: every fault the fake provider can inject, through litellm over HTTP, with
and without a fallback. Each row checks how many requests were made (retries), whether the
neuron was excluded or its fallback answered, the error it is recorded with, and that the
canary API key leaks nowhere: result, reprs, log lines, error messages, tracebacks."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import CANARY_KEY, moa_frame_locals, wait_until

from moa import AllNeuronsFailed, MixtureOfAgents
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]

RETRIES = 2  # so a fault retried to exhaustion makes 3 requests
TIMEOUT = 0.5  # per attempt of the hanging rows (ample for a warm call to reach the server)


@dataclass(frozen=True)
class Row:
    replies: tuple[Reply, ...]
    requests: int  # chat requests the faulty model receives
    error_type: str | None  # None: it recovered on a retry
    status: int | None = None
    hangs: bool = False  # each request hangs until our timeout cancels it

    @property
    def recovers(self) -> bool:
        return self.error_type is None


def times(reply: Reply, n: int = RETRIES + 1) -> tuple[Reply, ...]:
    return (reply,) * n


MATRIX: dict[str, Row] = {
    "429+retry-after then ok": Row(
        (Reply(status=429, retry_after=0.05), Reply(content="recovered")), 2, None
    ),
    "429 every time": Row(
        times(Reply(status=429, retry_after=0.01)), 3, "RateLimitError", status=429
    ),
    "500": Row(times(Reply(status=500)), 3, "ProviderError", status=500),
    "502": Row(times(Reply(status=502)), 3, "ProviderError", status=502),
    "503+retry-after then ok": Row(
        (Reply(status=503, retry_after=0.05), Reply(content="recovered")), 2, None
    ),
    "503": Row(times(Reply(status=503)), 3, "ProviderError", status=503),
    "500 echoing the key": Row(
        times(Reply(status=500, error_message=f"bad key {CANARY_KEY}")), 3, "ProviderError", 500
    ),
    "408": Row(times(Reply(status=408)), 3, "TimeoutError", status=408),
    "409": Row(times(Reply(status=409)), 3, "ProviderError", status=409),
    "504": Row(times(Reply(status=504)), 3, "ProviderError", status=504),
    "400": Row((Reply(status=400),), 1, "ProviderError", status=400),
    "401": Row((Reply(status=401),), 1, "AuthenticationError", status=401),
    "403": Row((Reply(status=403),), 1, "AuthenticationError", status=403),
    "404": Row((Reply(status=404),), 1, "ProviderError", status=404),
    "422": Row((Reply(status=422),), 1, "ProviderError", status=422),
    "connection reset": Row(times(Reply(fault="reset")), 3, "ProviderConnectionError"),
    "hang before headers": Row(times(Reply(fault="hang")), 3, "TimeoutError", hangs=True),
    "hang after first token": Row(
        times(Reply(fault="hang_after_first_token")), 3, "TimeoutError", hangs=True
    ),
    "body trickling in for ever": Row(times(Reply(fault="keep_alive")), 3, "TimeoutError", hangs=True),
    "malformed body": Row((Reply(fault="malformed"),), 1, "InvalidResponseError"),
    "empty choices": Row((Reply(fault="empty_choices"),), 1, "InvalidResponseError"),
    "null content": Row((Reply(fault="null_content"),), 1, "InvalidResponseError"),
    "empty content": Row((Reply(fault="empty_content"),), 1, "InvalidResponseError"),
}

REASONS = {
    "RateLimitError": "rate limited",
    "ProviderConnectionError": "connection failed",
    "TimeoutError": "no answer within 0.5 s",
}
BY_NAME = {
    "408": "timed out: fake error 408 [HTTP 408]",
    "504": ": fake error 504 [HTTP 504]",
    "400": ": fake error 400 [HTTP 400]",
    "401": "credentials rejected: fake error 401 [HTTP 401]",
}
INVALID_REASONS = {
    "malformed body": "not valid JSON",
    "empty choices": "no choices",
    "null content": "null content",
    "empty content": "empty content",
}


def config(fallback: bool, hangs: bool = False) -> dict[str, object]:
    bad: dict[str, object] = {"model": "meta-llama/BAD", "prompt": "SYS-BAD"}
    if hangs:  # a short timeout only where the test waits for it (never for a real answer)
        bad["timeout"] = TIMEOUT
    if fallback:
        bad["fallbacks"] = [{"model": "meta-llama/BACKUP", "timeout": 10}]
    return {
        "proposal_layers": [{"neurons": [{"model": "meta-llama/OK"}, bad]}],
        "aggregation_layer": {"model": "meta-llama/AGG"},
        "retry": {"max_retries": RETRIES, "backoff_base": 0, "backoff_max": 0},
    }


@pytest.fixture(autouse=True)
async def _warm_litellm(fake: FakeProvider, build: Build) -> None:
    """litellm's first call in a process does lazy set-up work; make it before the short
    per-attempt timeouts of the hanging rows start counting."""
    global _warm
    if not _warm:
        await build(config(fallback=False)).process("warm up")
        fake.reset()
        _warm = True


_warm = False


def assert_no_leak(*texts: str) -> None:
    for text in texts:
        assert CANARY_KEY not in text


@pytest.mark.parametrize("fallback", [False, True], ids=["alone", "with-fallback"])
@pytest.mark.parametrize("name", list(MATRIX))
async def test_fault(
    name: str,
    fallback: bool,
    fake: FakeProvider,
    build: Build,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    row = MATRIX[name]
    fake.script("meta-llama/BAD", *row.replies)
    fake.script("meta-llama/BACKUP", "backup answer")
    mixture = build(config(fallback, hangs=row.hangs))

    result = await mixture.process("hi")

    bad = result.layers[0].neurons[1]
    requests = fake.requests_for("meta-llama/BAD")
    assert len(requests) == row.requests  # retried exactly as the policy says
    assert all(r.system == "SYS-BAD" for r in requests)
    assert bad.attempts == row.requests + (1 if fallback and not row.recovers else 0)
    assert len(bad.attempt_errors) == row.requests - (1 if row.recovers else 0)
    if row.hangs:  # every timed-out attempt was closed: the server saw the client go away
        await wait_until(lambda: all(r.cancelled for r in fake.requests_for("meta-llama/BAD")))
    if row.recovers:
        assert bad.ok and bad.text == "recovered" and bad.fallback is None
        assert not fake.requests_for("meta-llama/BACKUP")
    elif fallback:  # the fallback answered, with the neuron's options
        assert bad.ok and bad.text == "backup answer" and bad.fallback == "meta-llama/BACKUP"
        (backup,) = fake.requests_for("meta-llama/BACKUP")
        assert backup.system == "SYS-BAD"
        assert bad.attempt_errors[-1].startswith("proposal_layers[0].neurons[1] (meta-llama/BAD)")
    else:  # excluded and flagged with a clear reason
        assert not bad.ok and bad.text is None
        assert bad.error_type == row.error_type and bad.status_code == row.status
        assert bad.error is not None
        assert bad.error.startswith("proposal_layers[0].neurons[1] (meta-llama/BAD): ")
        reason = (
            BY_NAME.get(name) or INVALID_REASONS.get(name) or REASONS.get(row.error_type or "", "")
        )
        assert reason in bad.error
        agg_request = fake.requests_for("meta-llama/AGG")[0]
        assert "answer from meta-llama/OK" in (agg_request.last_user or "")
        assert "Response 2" not in (agg_request.last_user or "")  # nothing stands in for it
    assert result.content == "answer from meta-llama/AGG" and not result.partial
    if "+retry-after" in name:  # honoured Retry-After (server-side timestamps)
        first, second = requests
        assert first.finished is not None and second.started - first.finished >= 0.05
    assert_no_leak(
        result.model_dump_json(),
        repr(result),
        repr(mixture),
        repr(mixture.neurons),
        caplog.text,
        mixture.config.model_dump_json(),
    )


@pytest.mark.parametrize(
    "name", ["500 echoing the key", "401", "connection reset", "empty content"]
)
async def test_when_every_neuron_fails_the_error_and_its_traceback_hold_no_key(
    name: str, fake: FakeProvider, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    row = MATRIX[name]
    fake.script("meta-llama/OK", *row.replies)
    fake.script("meta-llama/BAD", *row.replies)
    mixture = build(config(fallback=False))
    with pytest.raises(AllNeuronsFailed) as caught:
        await mixture.process("hi")
    error = caught.value
    assert [type(e).__name__ for e in error.exceptions] == [row.error_type] * 2
    assert [e.index for e in error.exceptions] == [0, 1]  # type: ignore[attr-defined]
    assert all(e.status_code == row.status for e in error.exceptions)  # type: ignore[attr-defined]
    assert all(e.attempts == row.requests for e in error.exceptions)  # type: ignore[attr-defined]
    with_locals = moa_frame_locals(error)  # what an error tracker capturing locals sees
    assert "generate" in with_locals  # the frames of the neuron call itself are there
    assert_no_leak(
        str(error),
        repr(error),
        *(repr(e) for e in error.exceptions),
        "".join(traceback.format_exception(error)),
        with_locals,
        caplog.text,
    )
    assert not fake.requests_for("meta-llama/AGG")


def test_matrix_covers_every_scripted_fault() -> None:
    from typing import get_args

    from moa.testing import Fault

    scripted = {r.fault for row in MATRIX.values() for r in row.replies if r.fault}
    echoing = {"echo_text", "echo_sse", "echo_error", "echo_partial", "echo_content"}
    # no_done: streams only; the echoing upstream has its own matrix in test_leaks.py
    assert scripted | {"no_done"} | echoing == set(get_args(Fault))
