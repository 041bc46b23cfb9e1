"""Deadlines and quorum, cancellation, fallbacks of proposers and aggregator, and the config
keys that drive them. Timing is asserted with the fake server's own records (which requests
it saw, when, and whether the client went away), never with wall-clock thresholds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from conftest import CANARY_KEY, HANG_GUARD, LOADING_NEURON, interrupt, wait_until

from moa import (
    AggregationFailed,
    ConfigError,
    Generation,
    MixtureOfAgents,
    Neuron,
    NeuronConfig,
    hookimpl,
    load_config,
)
from moa.errors import InvalidResponseError, NeuronError, ProviderError
from moa.errors import TimeoutError as NeuronTimeout
from moa.neurons.base import NeuronRequest
from moa.neurons.llm import LLMNeuron
from moa.plugins import register_plugin, unregister_plugin
from moa.retry import Retrying
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]

FAST_RETRY = {"max_retries": 2, "backoff_base": 0, "backoff_max": 0}


def three_proposers(**layer: Any) -> dict[str, Any]:
    return {
        "proposal_layers": [
            {
                "neurons": [{"model": "m/A"}, {"model": "m/B"}, {"model": "m/C"}],
                **layer,
            }
        ],
        "aggregation_layer": {"model": "m/AGG"},
    }


def other_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - before - {asyncio.current_task()}  # type: ignore[operator]


# -- deadline and quorum ------------------------------------------------------------------


async def test_one_of_three_hangs_deadline_gives_a_partial_result_and_cancels_it(
    fake: FakeProvider, build: Build
) -> None:
    fake.script("m/C", Reply(fault="hang"))
    # min_responses 2: however slow the machine, A and B are waited for; only C is cut
    result = await build(three_proposers(deadline=0.3, min_responses=2)).process("q")

    assert result.partial and result.layers[0].partial
    a, b, c = result.layers[0].neurons
    assert a.ok and b.ok and not c.ok
    assert c.timed_out and c.error_type == "TimeoutError" and c.text is None
    assert c.error is not None and "cut off by the layer deadline of 0.3 s" in c.error
    assert c.attempts == 1
    aggregated = fake.requests_for("m/AGG")[0].last_user or ""
    assert "answer from m/A" in aggregated and "answer from m/B" in aggregated
    assert "Response 3" not in aggregated
    assert result.aggregated == ("proposal_layers[0].neurons[0]", "proposal_layers[0].neurons[1]")
    (hung,) = fake.requests_for("m/C")
    await wait_until(lambda: fake.requests_for("m/C")[0].cancelled)  # closed on the server side
    assert hung.started < fake.requests_for("m/AGG")[0].started


async def test_quorum_waits_past_the_deadline_for_min_responses(
    fake: FakeProvider, build: Build
) -> None:
    fake.script("m/B", Reply(latency=0.6, content="slow but needed"))
    fake.script("m/C", Reply(fault="hang"))
    result = await build(three_proposers(deadline=0.1, min_responses=2)).process("q")

    a, b, c = result.layers[0].neurons
    assert a.ok and b.ok and b.text == "slow but needed"
    assert c.timed_out and result.partial
    slow = fake.requests_for("m/B")[0]
    assert slow.finished is not None and fake.requests_for("m/AGG")[0].started >= slow.finished
    await wait_until(lambda: fake.requests_for("m/C")[0].cancelled)


async def test_no_deadline_hit_means_a_complete_result(fake: FakeProvider, build: Build) -> None:
    result = await build(three_proposers(deadline=30)).process("q")
    assert not result.partial and all(n.ok for n in result.layers[0].neurons)


async def test_a_deadline_never_turns_failures_into_a_cut(fake: FakeProvider, build: Build) -> None:
    fake.script("m/A", Reply(status=400))
    fake.script("m/B", Reply(status=401))
    result = await build(three_proposers(deadline=30)).process("q")
    assert not result.partial
    assert [n.error_type for n in result.layers[0].neurons] == [
        "ProviderError",
        "AuthenticationError",
        None,
    ]


# -- cancellation ---------------------------------------------------------------------------


async def warm(mixture: MixtureOfAgents, fake: FakeProvider) -> set[asyncio.Task[Any]]:
    """One normal run first (litellm starts its own logging worker task on first use), then
    the set of tasks that exist before the run under test."""
    fake.set_default(Reply())
    await mixture.process("warm up")
    fake.reset()
    return set(asyncio.all_tasks())


@pytest.mark.parametrize("layer", [{}, {"deadline": 30}], ids=["no-deadline", "deadline"])
async def test_cancelling_process_cancels_every_upstream_call_and_leaves_no_task(
    fake: FakeProvider, build: Build, layer: dict[str, Any]
) -> None:
    mixture = build(three_proposers(**layer))
    before = await warm(mixture, fake)
    fake.set_default(Reply(fault="hang"))

    task = asyncio.create_task(mixture.process("q"))
    await asyncio.to_thread(fake.wait_for_requests, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not other_tasks(before)  # nothing left running once process() has returned
    await wait_until(lambda: all(r.cancelled for r in fake.requests))
    assert len(fake.requests) == 3


async def test_a_timeout_around_process_cancels_the_aggregator_call(
    fake: FakeProvider, build: Build
) -> None:
    mixture = build(three_proposers())
    before = await warm(mixture, fake)
    fake.script("m/AGG", Reply(fault="hang"))

    async def run() -> None:
        async with asyncio.timeout(30):
            await mixture.process("q")

    task = asyncio.create_task(run())
    await asyncio.to_thread(fake.wait_for_requests, 4)  # 3 proposers + the aggregator
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not other_tasks(before)
    await wait_until(lambda: fake.requests_for("m/AGG")[0].cancelled)


async def test_cancelling_during_a_backoff_sleep_makes_no_further_request(
    fake: FakeProvider, build: Build
) -> None:
    config = three_proposers()
    config["retry"] = {"max_retries": 2, "backoff_base": 30, "backoff_max": 30}
    mixture = build(config)
    before = await warm(mixture, fake)
    fake.set_default(Reply(status=503))
    task = asyncio.create_task(mixture.process("q"))
    await asyncio.to_thread(fake.wait_for_requests, 3)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not other_tasks(before) and len(fake.requests) == 3


# -- fallbacks ------------------------------------------------------------------------------


async def test_a_long_retry_after_hands_over_to_the_fallback_at_once(
    fake: FakeProvider, build: Build
) -> None:
    config = three_proposers()
    config["proposal_layers"][0]["neurons"][2]["fallbacks"] = ["m/BACKUP"]
    config["retry"] = {**FAST_RETRY, "max_retry_after": 1}
    fake.script("m/C", Reply(status=429, retry_after=120))
    result = await build(config).process("q")
    c = result.layers[0].neurons[2]
    assert c.fallback == "m/BACKUP" and c.text == "answer from m/BACKUP" and c.attempts == 2
    assert len(fake.requests_for("m/C")) == 1


async def test_fallbacks_are_tried_in_order_with_their_own_changes(
    fake: FakeProvider, build: Build
) -> None:
    config = three_proposers()
    config["proposal_layers"][0]["neurons"][0] = {
        "model": "m/A",
        "prompt": "SYS",
        "temperature": 0.3,
        "fallbacks": ["m/F1", {"model": "m/F2", "temperature": 1.5, "prompt": "SYS-F2"}],
    }
    fake.script("m/A", Reply(status=404))
    fake.script("m/F1", Reply(status=401))
    result = await build(config).process("q")
    a = result.layers[0].neurons[0]
    assert a.fallback == "m/F2" and a.text == "answer from m/F2" and a.attempts == 3
    assert [e.split(": ")[0] for e in a.attempt_errors] == [
        "proposal_layers[0].neurons[0] (m/A)",
        "proposal_layers[0].neurons[0].fallbacks[0] (m/F1)",
    ]
    (f1,) = fake.requests_for("m/F1")
    (f2,) = fake.requests_for("m/F2")
    assert (f1.system, f1.body["temperature"]) == ("SYS", 0.3)  # type: ignore[index]
    assert (f2.system, f2.body["temperature"]) == ("SYS-F2", 1.5)  # type: ignore[index]
    assert result.response_times["proposal_layers[0].neurons[0] m/A"] > 0


async def test_neuron_max_retries_overrides_the_top_level_default(
    fake: FakeProvider, build: Build
) -> None:
    config = three_proposers()
    config["retry"] = FAST_RETRY
    config["proposal_layers"][0]["neurons"][0]["max_retries"] = 0
    fake.script("m/A", *[Reply(status=500)] * 3)
    fake.script("m/B", Reply(status=500), Reply(status=500))
    result = await build(config).process("q")
    assert len(fake.requests_for("m/A")) == 1 and not result.layers[0].neurons[0].ok
    assert len(fake.requests_for("m/B")) == 3 and result.layers[0].neurons[1].attempts == 3


async def test_aggregation_fallback_model_answers_when_the_aggregator_fails(
    fake: FakeProvider, build: Build
) -> None:
    config = three_proposers()
    config["aggregation_layer"] = {"model": "m/AGG", "prompt": "SYS-AGG", "fallback_model": "m/F"}
    fake.script("m/AGG", Reply(status=401))
    result = await build(config).process("q")
    assert result.content == "answer from m/F" and result.aggregator.fallback == "m/F"
    assert fake.requests_for("m/F")[0].system == "SYS-AGG"


async def test_aggregation_failure_with_fallbacks_says_so_and_keeps_the_proposals(
    fake: FakeProvider, build: Build
) -> None:
    config = three_proposers()
    config["aggregation_layer"] = {
        "model": "m/AGG",
        "fallbacks": ["m/F1"],
        "fallback_model": "m/F2",
    }
    fake.script("m/AGG", Reply(status=400, error_message=f"no {CANARY_KEY}"))
    fake.script("m/F1", Reply(fault="empty_content"))
    fake.script("m/F2", Reply(status=403))
    with pytest.raises(AggregationFailed) as caught:
        await build(config).process("q")
    error = caught.value
    assert "the aggregator and its 2 fallback(s) failed" in str(error)
    assert "aggregation_layer.fallbacks[0] (m/F1)" in str(error)
    assert "aggregation_layer.fallback_model (m/F2)" in str(error)
    assert sorted(error.proposals) == ["answer from m/A", "answer from m/B", "answer from m/C"]
    assert isinstance(error.cause, NeuronError) and error.cause.status_code == 403
    assert CANARY_KEY not in str(error) + repr(error) + repr(error.layers)


# -- the streaming rule, for stream implementations built on Retrying.stream ---------------


async def open_litellm_stream(neuron: LLMNeuron, request: NeuronRequest) -> AsyncIterator[str]:
    """What a streaming neuron does: open a litellm stream (its transport maps the errors),
    yield text."""
    from moa.neurons.llm import load_litellm
    from moa.neurons.llm._litellm import LiteLLMTransport

    transport = LiteLLMTransport(load_litellm(), neuron.config, neuron.route)
    async for chunk in transport.stream(request.messages, timeout_s=5.0):
        if chunk.text:
            yield chunk.text


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(fault="no_done"), InvalidResponseError),
        (Reply(fault="hang_after_first_token", content="one two three"), NeuronTimeout),
    ],
)
async def test_a_stream_that_has_produced_text_is_never_retried(
    fake: FakeProvider, build: Build, reply: Reply, error: type[NeuronError]
) -> None:
    mixture = build({**three_proposers(), "timeout": 1.0, "retry": FAST_RETRY})
    neuron = mixture.layers[0].neurons[0]
    assert isinstance(neuron, LLMNeuron)
    request = NeuronRequest(messages=({"role": "user", "content": "hi"},))
    # litellm's first stream loads its streaming code, which can take longer than the 1 s
    # timeout on a busy machine: warm it up first, so the attempts counted are the test's.
    assert [p async for p in open_litellm_stream(neuron, request)]
    fake.script("m/A", reply, *[Reply()] * 2)
    plan = mixture.layers[0].plans[0]
    retrying = Retrying(plan.retry, plan.timeout)
    received: list[str] = []
    with pytest.raises(error) as caught:
        async for piece in retrying.stream(lambda: open_litellm_stream(neuron, request)):
            received.append(piece)
    assert received and len(fake.requests_for("m/A")) == 2 and retrying.attempts == 1
    assert CANARY_KEY not in str(caught.value)


async def test_a_stream_failing_before_its_first_token_is_retried(
    fake: FakeProvider, build: Build
) -> None:
    mixture = build({**three_proposers(), "retry": FAST_RETRY})
    neuron = mixture.layers[0].neurons[0]
    assert isinstance(neuron, LLMNeuron)
    fake.script("m/A", Reply(status=503), Reply(fault="reset"), Reply(content="at last"))
    request = NeuronRequest(messages=({"role": "user", "content": "hi"},))
    plan = mixture.layers[0].plans[0]
    retrying = Retrying(plan.retry, plan.timeout)
    pieces = [p async for p in retrying.stream(lambda: open_litellm_stream(neuron, request))]
    assert "".join(pieces) == "at last" and retrying.attempts == 3


# -- config ---------------------------------------------------------------------------------


def test_resilience_keys_load_and_dump() -> None:
    config = load_config(
        {
            "timeout": 20,
            "retry": {"max_retries": 3, "backoff_base": 0.25, "max_retry_after": 10},
            "proposal_layers": [
                {
                    "deadline": 5,
                    "min_responses": 2,
                    "neurons": [
                        {"model": "m/a", "fallbacks": ["m/b"], "timeout": 3, "max_retries": 1},
                        {"model": "m/c"},
                    ],
                }
            ],
            "aggregation_layer": {"model": "m/agg", "fallback_model": "m/agg2"},
        }
    )
    assert config.retry.max_retries == 3 and config.timeout == 20
    layer = config.proposal_layers[0]
    assert (layer.deadline, layer.min_responses) == (5, 2)
    (fallback,) = layer.neurons[0].fallback_configs()
    assert getattr(fallback, "model", None) == "m/b" and fallback.timeout == 3
    dumped = config.model_dump()
    assert dumped["aggregation_layer"]["fallback_model"] == "m/agg2"
    assert load_config(dumped) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"min_responses": 4, "deadline": 1},
            "min_responses is 4 but the layer has only 3 neuron(s)",
        ),
        ({"min_responses": 2}, "min_responses only matters with a deadline"),
        ({"deadline": 0}, "proposal_layers[0].deadline: Input should be greater than 0"),
        (
            {"neurons": [{"model": "m/a", "fallbacks": [{"model": "m/b", "colour": "red"}]}]},
            "fallbacks[0]: colour: unknown key",
        ),
        (
            {"neurons": [{"model": "m/a", "fallbacks": [{"type": "echo"}]}]},
            "fallbacks[0]: a fallback cannot change the neuron type",
        ),
        (
            {"neurons": [{"model": "m/a", "fallbacks": [{"fallbacks": ["m/c"]}]}]},
            "fallbacks[0]: a fallback cannot have fallbacks of its own",
        ),
        (
            {"neurons": [{"model": "m/a", "fallbacks": [{"temperature": 9}]}]},
            "fallbacks[0]: temperature: Input should be less than or equal to 2",
        ),
    ],
)
def test_bad_resilience_keys_are_clear_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(three_proposers(**change))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"retry": {"jitter": 2}}, "retry.jitter: Input should be less than or equal to 1"),
        ({"retry": {"max_retry": 2}}, "did you mean 'max_retries'?"),
        ({"timeout": -1}, "timeout: Input should be greater than 0"),
        (
            {"aggregation_layer": {"model": "m/agg", "fallback_model": ""}},
            "aggregation_layer.fallback_model: String should have at least 1 character",
        ),
    ],
)
def test_bad_top_level_resilience_keys(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({**three_proposers(), **change})
    assert message in str(caught.value)


def test_a_fallback_needing_a_missing_key_fails_at_build_time(build: Build) -> None:
    config = three_proposers()
    config["proposal_layers"][0]["neurons"][0]["fallbacks"] = [
        {"model": "m/remote", "base_url": "https://example.invalid/v1", "api_key_env": "NOPE"}
    ]
    with pytest.raises(ConfigError, match="NOPE"):
        build(config)


# -- the same policy for plugin neuron types ------------------------------------------------


class Flaky(Neuron):
    """Fails `failures` times with `status`, then answers; counts its calls and prepares."""

    class Config(NeuronConfig):
        type: Literal["flaky"] = "flaky"
        label_: str = "flaky"
        failures: int = 0
        status: int = 503

    calls: ClassVar[dict[str, int]] = {}
    prepared: ClassVar[set[str]] = set()

    async def prepare(self) -> None:
        self.prepared.add(self.path)

    async def generate(self, request: NeuronRequest) -> Generation:
        assert isinstance(self.config, Flaky.Config)
        seen = self.calls[self.path] = self.calls.get(self.path, 0) + 1
        if seen <= self.config.failures:
            raise ProviderError("flaky failure", status_code=self.config.status)
        return Generation(text=f"{self.config.label_} after {seen}")


class FlakyPlugin:
    @hookimpl
    def register_neurons(self, register: Callable[[str, type[Neuron]], None]) -> None:
        register("flaky", Flaky)


async def test_plugin_neurons_get_retries_timeouts_and_fallbacks(build: Build) -> None:
    plugin = FlakyPlugin()
    register_plugin(plugin, name="flaky-plugin")
    Flaky.calls.clear()
    Flaky.prepared.clear()
    try:
        mixture = build(
            {
                "retry": FAST_RETRY,
                "proposal_layers": [
                    {
                        "neurons": [
                            {"type": "flaky", "failures": 2},
                            {
                                "type": "flaky",
                                "failures": 1,
                                "status": 400,
                                "fallbacks": [{"label_": "spare", "failures": 0}],
                            },
                        ]
                    }
                ],
                "aggregation_layer": {"type": "flaky"},
            }
        )
        result = await mixture.process("q")
    finally:
        unregister_plugin(plugin)
    first, second = result.layers[0].neurons
    assert (first.text, first.attempts) == ("flaky after 3", 3)  # 503 twice, then an answer
    assert (second.text, second.attempts, second.fallback) == ("spare after 1", 2, "flaky")
    assert "proposal_layers[0].neurons[1].fallbacks[0]" in Flaky.prepared


CTRL_C_CHILD = LOADING_NEURON + """
from moa import Settings, create_moa_from_config

neurons = [{"model": "m/A"}, {"model": "m/B"}, {"model": "m/C"}, {"type": "loading"}]
config = {"proposal_layers": [{"neurons": neurons}], "aggregation_layer": {"model": "m/AGG"}}
mixture = create_moa_from_config(config, settings=Settings(base_url=sys.argv[1]))
print("ready", flush=True)
try:
    mixture.process_sync("q")
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("target", ["process", "worker thread"])
def test_ctrl_c_during_process_sync_cancels_cleanly(
    fake: FakeProvider, tmp_path: Path, target: str
) -> None:
    """Ctrl-C while three calls are in flight and a worker thread is stuck loading a model:
    the calls are cancelled, KeyboardInterrupt reaches the script and it exits, although the
    thread never finishes (asyncio.run used to wait for it for ever).

    "worker thread": the kernel may run a process's signal handler on any of its threads.
    When it picked the stuck worker, asyncio.Runner's Python-level SIGINT handler waited for
    the main thread to wake up, which an event loop idle on hung upstreams never did: the
    script hung for ever (issue #14, item 7). Sent to that thread on purpose here."""
    fake.set_default(Reply(fault="hang"))
    env = {k: v for k, v in os.environ.items() if k not in {"PROVIDER_API_KEY", "BASE_URL"}}
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, fake.base_url],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        loading, worker = child.stdout.readline().split()
        assert loading == "loading"
        fake.wait_for_requests(3, timeout=HANG_GUARD)
        interrupt(child, signal.SIGINT, target, int(worker))
        out, err = child.communicate(timeout=HANG_GUARD)
    finally:
        child.kill()
    assert child.returncode == 130 and out.split() == ["interrupted"], err
    assert "Task was destroyed" not in err and "never retrieved" not in err
    assert len(fake.requests) == 3
    asyncio.run(wait_until(lambda: all(r.cancelled for r in fake.requests)))


@pytest.mark.parametrize(
    ("raised", "error_type"),
    [
        (TimeoutError("read timed out"), "TimeoutError"),
        (ConnectionResetError(104, "Connection reset by peer"), "ProviderConnectionError"),
        (OSError(-2, "Name or service not known"), "ProviderConnectionError"),
    ],
)
async def test_network_builtins_from_a_plugin_fail_that_neuron_after_retries(
    moa_fake_neurons: Any, raised: BaseException, error_type: str
) -> None:
    """A plugin whose HTTP library raises builtin network exceptions: retried, then that
    neuron is left out; the secret it declares never shows in the recorded error."""
    from moa import create_moa_from_config

    moa = create_moa_from_config(
        {
            "retry": FAST_RETRY,
            "proposal_layers": [{"neurons": [{"type": "fake", "name": "net"}, {"type": "fake"}]}],
            "aggregation_layer": {"type": "fake", "name": "agg"},
        },
        is_file_path=False,
    )
    moa_fake_neurons["net"].enqueue(raised, raised, raised)
    result = await moa.process("q")
    failed = result.layers[0].neurons[0]
    assert (failed.error_type, failed.attempts, failed.text) == (error_type, 3, None)
    assert type(raised).__name__ in (failed.error or "")
    assert len(moa_fake_neurons["net"].history) == 3


@pytest.mark.parametrize("raised", [TypeError("bug"), KeyError("choices"), FileNotFoundError("x")])
async def test_other_exceptions_from_a_plugin_propagate_as_bugs(
    moa_fake_neurons: Any, raised: BaseException
) -> None:
    from moa import create_moa_from_config

    moa = create_moa_from_config(
        {
            "retry": FAST_RETRY,
            "proposal_layers": [{"neurons": [{"type": "fake", "name": "bug"}, {"type": "fake"}]}],
            "aggregation_layer": {"type": "fake", "name": "agg"},
        },
        is_file_path=False,
    )
    moa_fake_neurons["bug"].enqueue(raised)
    with pytest.raises(type(raised)):
        await moa.process("q")
    assert len(moa_fake_neurons["bug"].history) == 1  # never retried


def test_network_failure_redacts_declared_secrets() -> None:
    from moa.retry import network_failure

    error = network_failure(ConnectionError(f"refused for key {CANARY_KEY}"), [CANARY_KEY])
    assert error is not None and CANARY_KEY not in str(error) and "***" in str(error)
    assert network_failure(ValueError("x")) is None
