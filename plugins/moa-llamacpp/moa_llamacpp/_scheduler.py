"""Continuous batching: every request for one loaded model decodes as its own sequence of one
llama.cpp context, all of them in one batch per step (the shape of llama.cpp's
`examples/parallel`).

One thread per model runs the loop, so there is never more than one decode per model at a
time. Each step it drops cancelled sequences (freeing their KV cells), admits waiting requests
into free slots, then decodes one batch holding the next token of every generating sequence
and prompt tokens of newly admitted ones, and samples each sequence with its own sampler
chain (temperature, seed, penalties). A request arriving mid-generation joins at the next
step; a finished one leaves and frees its slot.

A prompt that starts like one already in the cache (k samples of the same question) is not
evaluated again: the cells of the shared prefix are given to the new sequence with
`llama_memory_seq_cp` and only the rest of its prompt is decoded.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa_llamacpp._llama import LoadedModel, Plan

__all__ = ["Ask", "Outcome", "Scheduler", "SlotOverflowError", "Ticket"]

MIN_SHARED_PREFIX = 32
"""Shorter common prefixes are decoded again rather than shared (waiting a step for a
leader's prompt to be evaluated costs more than a few tokens)."""


class SlotOverflowError(ValueError):
    """The prompt does not fit in one sequence's share of the context."""


@dataclass(frozen=True)
class Ask:
    """What a neuron asks of the model."""

    messages: tuple[Mapping[str, str], ...]
    temperature: float
    max_tokens: int
    seed: int | None
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    """A finished sequence."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    queued_seconds: float
    shared_prefix: int


Emit = Callable[[str, object], None]
"""Thread-safe: ("delta", str), ("done", Outcome) or ("error", BaseException)."""


@dataclass(eq=False)
class Ticket:
    """One request's sequence: its state while it waits, decodes and generates."""

    ask: Ask
    emit: Emit
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    admitted: float | None = None
    seq_id: int = -1
    plan: Plan | None = None
    sampler: Any = None
    leader: Ticket | None = None
    shared: int = 0
    pending: list[int] = field(default_factory=list)
    n_past: int = 0
    generated: int = 0
    limit: int = 0
    text: bytes = b""
    sent: int = 0
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))

    @property
    def prompt_in_cache(self) -> int:
        """How many prompt tokens this sequence's cells hold."""
        return min(self.n_past, len(self.plan.prompt)) if self.plan is not None else 0


class Scheduler:
    """The decode loop of one model; `load` builds the model on the loop's thread."""

    def __init__(
        self,
        load: Callable[[], LoadedModel],
        *,
        n_ctx: int,
        n_parallel: int,
        name: str,
        lock: threading.Lock,
    ) -> None:
        self._load = load
        self.n_parallel = n_parallel
        self.slot_ctx = n_ctx // n_parallel
        self.n_ctx = n_ctx
        self.lock = lock
        """Held while a batch decodes (one decode per model at a time)."""
        self.model: LoadedModel | None = None
        self.generated_tokens = 0
        """Tokens sampled on this model since it was created (for diagnostics and tests)."""
        self.peak_batch = 0
        """Most sequences that have held a slot at once."""
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._active: dict[int, Ticket] = {}
        self._load_waiters: list[Callable[[BaseException | None], None]] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- called from any thread -------------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the model has been unloaded")
            self._waiting.append(ticket)
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> None:
        """Stop a request at the next step; its slot and cells are freed."""
        with self._cond:
            ticket.cancelled = True
            self._cond.notify()

    def when_loaded(self, callback: Callable[[BaseException | None], None]) -> None:
        """Load the model if needed, then call `callback(error or None)` on the loop thread."""
        with self._cond:
            self._load_waiters.append(callback)
            self._cond.notify()

    def close(self) -> None:
        """Finish what is running, then free the model and end the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    @property
    def busy(self) -> int:
        """Sequences holding a slot now."""
        return len(self._active)

    # -- the loop thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._active or self._load_waiters or self._closing):
                    self._cond.wait()
                if self._closing and not self._active:
                    waiting, self._waiting = list(self._waiting), deque()
                    loaders, self._load_waiters = self._load_waiters, []
                    break
                cancelled = [t for t in self._active.values() if t.cancelled]
                admit: list[Ticket] = []
                while (
                    not self._closing
                    and self._waiting
                    and len(self._active) + len(admit) < self.n_parallel
                ):
                    ticket = self._waiting.popleft()
                    if not ticket.cancelled:
                        admit.append(ticket)
                if self.model is None:
                    # all of them learn of a failed load
                    admit.extend(t for t in self._waiting if not t.cancelled)
                    self._waiting.clear()
                loaders, self._load_waiters = self._load_waiters, []
            if self.model is None and not self._ensure_loaded(admit, loaders):
                continue
            for callback in loaders:
                callback(None)
            try:
                self._step(cancelled, admit)
            except BaseException as exc:  # a failed decode fails every sequence in flight
                self._fail_all(exc)
        unloaded = RuntimeError("the model was unloaded before answering")
        for ticket in waiting:
            _tell(ticket, "error", unloaded)
        for callback in loaders:
            callback(unloaded)
        if self.model is not None:
            self.model.close()
            self.model = None

    def _ensure_loaded(
        self, admit: list[Ticket], loaders: list[Callable[[BaseException | None], None]]
    ) -> bool:
        try:
            self.model = self._load()
        except BaseException as exc:  # every waiter gets the load error; the next retries
            for callback in loaders:
                callback(exc)
            for ticket in admit:
                _tell(ticket, "error", exc)
            return False
        with self._cond:  # the tickets past n_parallel go back to the queue, in order
            extra = admit[self.n_parallel :]
            del admit[self.n_parallel :]
            self._waiting.extendleft(reversed(extra))
        return True

    def _step(self, cancelled: list[Ticket], admit: list[Ticket]) -> None:
        model = self.model
        assert model is not None
        with self.lock:
            for ticket in cancelled:
                self._release(ticket)
            for ticket in admit:
                self._admit(model, ticket)
            entries, outputs = self._batch(model)
            if not entries:
                return
            model.decode(entries)
            for ticket, index in outputs:
                self._advance(model, ticket, index)

    def _admit(self, model: LoadedModel, ticket: Ticket) -> None:
        ask = ticket.ask
        try:
            plan = model.plan(
                ask.messages,
                temperature=ask.temperature,
                max_tokens=ask.max_tokens,
                seed=ask.seed,
                params=ask.params,
            )
            if not plan.prompt:
                raise ValueError("the chat template rendered an empty prompt")
            if len(plan.prompt) >= self.slot_ctx:
                raise SlotOverflowError(
                    f"Requested tokens ({len(plan.prompt)}) exceed context window of "
                    f"{self.slot_ctx} tokens per sequence (n_ctx {self.n_ctx} split between "
                    f"n_parallel {self.n_parallel} sequences)"
                )
            sampler = model.sampler(plan)
        except BaseException as exc:
            _tell(ticket, "error", exc)
            return
        ticket.seq_id = next(i for i in range(self.n_parallel) if i not in self._active)
        self._active[ticket.seq_id] = ticket
        self.peak_batch = max(self.peak_batch, len(self._active))
        ticket.admitted = time.perf_counter()
        ticket.plan, ticket.sampler = plan, sampler
        room = self.slot_ctx - len(plan.prompt)
        ticket.limit = (
            room if not plan.max_tokens or plan.max_tokens <= 0 else min(plan.max_tokens, room)
        )
        ticket.pending = list(plan.prompt)
        leader, shared = self._best_prefix(ticket)
        if leader is not None:
            ticket.leader, ticket.shared = leader, shared

    def _best_prefix(self, ticket: Ticket) -> tuple[Ticket | None, int]:
        """The active sequence whose prompt shares the longest prefix with this one."""
        assert ticket.plan is not None
        prompt = ticket.plan.prompt
        best: tuple[Ticket | None, int] = (None, 0)
        for other in self._active.values():
            if other is ticket or other.plan is None or other.leader is not None:
                continue
            shared = _common_prefix(prompt, other.plan.prompt)
            # the last prompt token is decoded again: its logits start the answer
            shared = min(shared, len(prompt) - 1)
            if shared >= MIN_SHARED_PREFIX and shared > best[1]:
                best = (other, shared)
        return best

    def _batch(self, model: LoadedModel) -> tuple[list[tuple[int, int, int, bool]], list[Any]]:
        """The entries of the next decode: first the next token of every generating
        sequence, then prompt tokens, up to the batch size."""
        for ticket in list(self._active.values()):
            leader = ticket.leader
            if leader is None:
                continue
            if leader.seq_id in self._active and self._active[leader.seq_id] is leader:
                if leader.prompt_in_cache < ticket.shared:
                    continue  # the leader's prompt is not evaluated that far yet
                model.share(leader.seq_id, ticket.seq_id, ticket.shared)
                ticket.n_past = ticket.shared
                del ticket.pending[: ticket.shared]
            else:
                ticket.shared = 0  # the leader left first: evaluate the whole prompt
            ticket.leader = None
        entries: list[tuple[int, int, int, bool]] = []
        outputs: list[Any] = []
        ready = [t for t in self._active.values() if t.leader is None and t.pending]
        ready.sort(key=lambda t: len(t.pending) > 1)  # generating sequences first
        for ticket in ready:
            room = model.n_batch - len(entries)
            if room <= 0:
                break
            chunk = ticket.pending[:room]
            done = len(chunk) == len(ticket.pending)
            for offset, token in enumerate(chunk):
                last = done and offset == len(chunk) - 1
                entries.append((token, ticket.n_past + offset, ticket.seq_id, last))
            if done:
                outputs.append((ticket, len(entries) - 1))
            ticket.n_past += len(chunk)
            del ticket.pending[: len(chunk)]
        return entries, outputs

    def _advance(self, model: LoadedModel, ticket: Ticket, index: int) -> None:
        """Sample this sequence's next token and tell its caller."""
        assert ticket.plan is not None
        token = model.sample(ticket.sampler, index)
        self.generated_tokens += 1
        finish: str | None = None
        if model.is_end(token):
            finish = "stop"
        else:
            ticket.generated += 1
            ticket.text += model.piece(token)
            stop_at = _first_stop(ticket.text, ticket.plan.stop)
            if stop_at is not None:
                ticket.text, finish = ticket.text[:stop_at], "stop"
            elif ticket.generated >= ticket.limit:
                finish = "length"
            else:
                ticket.pending = [token]
        safe = len(ticket.text) if finish else _safe_end(ticket.text, ticket.plan.stop)
        if safe > ticket.sent:
            delta = ticket.decoder.decode(ticket.text[ticket.sent : safe], final=bool(finish))
            ticket.sent = safe
            if delta:
                _tell(ticket, "delta", delta)
        if finish is not None:
            self._finish(ticket, finish)

    def _finish(self, ticket: Ticket, finish_reason: str) -> None:
        assert ticket.plan is not None and ticket.admitted is not None
        outcome = Outcome(
            text=ticket.text.decode("utf-8", errors="ignore"),
            finish_reason=finish_reason,
            prompt_tokens=len(ticket.plan.prompt),
            completion_tokens=ticket.generated,
            queued_seconds=ticket.admitted - ticket.submitted,
            shared_prefix=ticket.shared,
        )
        self._release(ticket)
        _tell(ticket, "done", outcome)

    def _release(self, ticket: Ticket) -> None:
        if self._active.get(ticket.seq_id) is ticket:
            del self._active[ticket.seq_id]
            if self.model is not None:
                self.model.forget(ticket.seq_id)
        if ticket.sampler is not None:
            ticket.sampler.close()
            ticket.sampler = None

    def _fail_all(self, exc: BaseException) -> None:
        for ticket in list(self._active.values()):
            self._release(ticket)
            _tell(ticket, "error", exc)


def _tell(ticket: Ticket, kind: str, value: object) -> None:
    """Hand an event to the caller; a caller that cannot hear any more is cancelled."""
    try:
        ticket.emit(kind, value)
    except Exception:  # e.g. its event loop is closed
        ticket.cancelled = True


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _first_stop(text: bytes, stops: Sequence[bytes]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _safe_end(text: bytes, stops: Sequence[bytes]) -> int:
    """How much of `text` can be sent: all but a tail that may begin a stop string."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return len(text) - hold
