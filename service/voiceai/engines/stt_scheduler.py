"""Many calls, few cores: who gets speech recognition next.

Every call's transcriptions go through one TranscriptionScheduler in front of the engine:
- a turn's final transcript goes first, then the early one that lets a reply start at a pause,
  then partials (the live view's courtesy);
- within a priority, calls take turns (round robin), so one talkative call cannot starve others;
- no partial runs while a final or early transcription waits, and a partial that is no longer
  wanted when its turn comes (its turn ended, a newer one replaced it) is dropped unrun;
- the timeout counts the transcription itself, never the wait in the queue: a final does not
  fail because other calls were busy;
- when saturated, callers stop asking for early transcriptions (listener.py): one a turn.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voiceai.engines.stt import SpeechToText, STTError, Transcript

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    FINAL = 0  # a finished turn: the caller is waiting for the answer
    EARLY = 1  # a pause being judged: its text may end the turn and start the reply
    PARTIAL = 2  # what the caller has said so far, for the live view


class Dropped(Exception):
    """A partial transcription was dropped unrun (stale, or replaced by a newer one)."""


@dataclass(eq=False)  # identity: jobs hold numpy arrays, which do not compare as booleans
class _Job:
    audio: np.ndarray
    language: str | None
    call_id: str
    priority: Priority
    wanted: Callable[[], bool]
    future: asyncio.Future[Transcript | None]
    started: asyncio.Event | None = None  # set when a worker takes it
    queued_at: float = field(default_factory=time.perf_counter)


class TranscriptionScheduler:
    def __init__(
        self,
        stt: SpeechToText,
        *,
        workers: int,
    ) -> None:
        self.stt = stt
        self.multilingual = stt.multilingual
        self.workers = workers
        self.dropped_partials = 0
        # Who wants to know (the metrics): each job's wait, each dropped partial.
        self.on_wait: Callable[[Priority, float], None] | None = None
        self.on_drop: Callable[[], None] | None = None
        # priority → call id → that call's waiting jobs.
        self._queues: dict[Priority, dict[str, deque[_Job]]] = {p: {} for p in Priority}
        # When each call last had a job picked: the least recently served call goes next, so a
        # newcomer never waits behind a call that was just served (fair across calls).
        self._served: dict[str, int] = {}
        self._ticks = itertools.count()
        self._ready = asyncio.Condition()
        self._runners: list[asyncio.Task[None]] = []

    def waiting(self, priority: Priority | None = None) -> int:
        levels = [priority] if priority is not None else list(Priority)
        return sum(len(jobs) for p in levels for jobs in self._queues[p].values())

    @property
    def saturated(self) -> bool:
        """Every worker has a finished turn's transcription waiting for it: judging pauses early
        would only add work that delays the turns already over."""
        return self.waiting(Priority.FINAL) >= self.workers

    def start(self) -> None:
        if not self._runners:
            self._runners = [
                asyncio.create_task(self._run(), name=f"stt-worker-{i}")
                for i in range(self.workers)
            ]

    async def aclose(self) -> None:
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners = []
        for queue in self._queues.values():
            for jobs in queue.values():
                for job in jobs:
                    job.future.cancel()
            queue.clear()

    async def transcribe(
        self,
        audio: np.ndarray,
        language: str | None,
        *,
        call_id: str = "",
        priority: Priority = Priority.FINAL,
        wanted: Callable[[], bool] | None = None,
        started: asyncio.Event | None = None,
    ) -> Transcript | None:
        """Queue `audio` and wait for its words; raises STTError, or Dropped for a partial.
        `started` is set when a worker takes the job (its wait in the queue is over)."""
        self.start()
        job = _Job(
            audio,
            language,
            call_id,
            priority,
            wanted or (lambda: True),
            asyncio.get_running_loop().create_future(),
            started,
        )
        queue = self._queues[priority]
        jobs = queue.setdefault(call_id, deque())
        if priority is Priority.PARTIAL:
            while jobs:  # one partial a call: the newer audio replaces the older
                self._drop(jobs.popleft())
        jobs.append(job)
        async with self._ready:
            self._ready.notify()
        try:
            return await job.future
        finally:
            self._remove(job)  # if the caller gave up waiting, it no longer holds a place

    def promote(self, call_id: str) -> None:
        """The call's early transcription became its turn's final one (the turn ended, or the
        pause outlasted the silence rule): it moves to the final queue, ahead of other early
        ones. One that is already running needs nothing."""
        jobs = self._queues[Priority.EARLY].pop(call_id, None)
        if not jobs:
            return
        for job in jobs:
            job.priority = Priority.FINAL
        self._queues[Priority.FINAL].setdefault(call_id, deque()).extend(jobs)

    def _drop(self, job: _Job) -> None:
        self.dropped_partials += 1
        if self.on_drop is not None:
            self.on_drop()
        if not job.future.done():
            job.future.set_exception(Dropped("partial transcription dropped"))

    def _remove(self, job: _Job) -> None:
        jobs = self._queues[job.priority].get(job.call_id)
        if jobs is not None and job in jobs:
            jobs.remove(job)
            if not jobs:
                del self._queues[job.priority][job.call_id]
        if not any(job.call_id in queue for queue in self._queues.values()):
            self._served.pop(job.call_id, None)  # nothing waits: forget it (no growth per call)

    def _next(self) -> _Job | None:
        """The next job: highest priority first, calls in turn; partials only when nothing
        more urgent waits; stale partials dropped on the way."""
        for priority in Priority:
            queue = self._queues[priority]
            while queue:
                call_id = min(queue, key=lambda c: self._served.get(c, -1))
                jobs = queue[call_id]
                job = jobs.popleft()
                if not jobs:
                    del queue[call_id]
                self._served[call_id] = next(self._ticks)
                if job.future.done():
                    continue  # cancelled while waiting
                if priority is Priority.PARTIAL and not job.wanted():
                    self._drop(job)
                    continue
                return job
        return None

    async def _run(self) -> None:
        while True:
            async with self._ready:
                job = self._next()
                while job is None:
                    await self._ready.wait()
                    job = self._next()
            if job.started is not None:
                job.started.set()
            waited = time.perf_counter() - job.queued_at
            if self.on_wait is not None:
                self.on_wait(job.priority, waited)
            try:
                result = await self.stt.transcribe(job.audio, job.language)
            except asyncio.CancelledError:
                job.future.cancel()
                raise
            except Exception as exc:
                if not job.future.done():
                    error = exc if isinstance(exc, STTError) else STTError(str(exc))
                    job.future.set_exception(error)
                continue
            if not job.future.done():
                job.future.set_result(result)
