"""Several service replicas on one PostgreSQL: one record, one live view, every call controlled
from any replica, and the calls of a replica that died ended.

- Each replica is named (VOICEAI_REPLICA_ID); each call's record names the replica serving it.
- Its bus events go out by NOTIFY on `voiceai_events`; every replica LISTENs and republishes the
  others' events on its own bus marked remote: its viewers see them, its store and metrics skip
  them (the replica that has the call records and counts it).
- It keeps the calls in progress on the others (seeded from the records, then kept from their
  events) for the snapshot a new /ws/live viewer gets first.
- A control request (hang up, transfer, say, mute) for a call another replica has goes to that
  replica on `voiceai_control`; its answer comes back on `voiceai_replies`.
- It heartbeats in the `replicas` table; a replica silent for VOICEAI_REPLICA_TIMEOUT_S is lost:
  its calls are ended ("replica lost"), call.ended is published for them, and their callers are
  handed to the dialplan's apology and fallback.

With SQLite the service is a single replica and none of this runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from datetime import datetime
from typing import Any

import psycopg
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from voiceai import events
from voiceai.config import Settings
from voiceai.events import BaseEvent, EventBus, Subscription, parse_event
from voiceai.store import CallStore, LostCall
from voiceai.telephony import commands
from voiceai.telephony.switches import Switches

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "voiceai_events"
CONTROL_CHANNEL = "voiceai_control"
REPLIES_CHANNEL = "voiceai_replies"
CHANNELS = (EVENTS_CHANNEL, CONTROL_CHANNEL, REPLIES_CHANNEL)
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; this leaves room for the envelope.
MAX_PAYLOAD = 7900
LOST = "replica lost"
BEAT_S = 5.0  # heartbeat period, at most: a third of the timeout when that is shorter
CONTROL_TIMEOUT_S = 8.0  # a forwarded request's answer; a transfer waits on FreeSWITCH (5 s)
PING_S = 5.0  # the listening connection is checked this often: a dead server must be noticed
RECONNECT_MAX_S = 10.0
SEND_RETRY_S = 2.0  # while the database cannot be reached, events are dropped, not queued
LISTEN_WAIT_S = 10.0  # at start, for the first LISTEN (before the service takes calls)
STOP_SEND_S = 2.0  # at shutdown, for the events still queued for the others
EVENTS_QUEUE = 10_000
BATCH = 200  # events taken from the queue for one round of NOTIFYs
MAX_REMOTE_CALLS = 10_000
TRIM_KEEP = (1000, 200, 40, 0)  # characters kept of each text, tried in turn until one fits

# (call id, action, request body) -> (HTTP status, response body): the route's own code.
ControlHandler = Callable[[str, str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
# (call id, the name of the FreeSWITCH it is on): sends a lost call's caller to the apology.
SafetyNet = Callable[[str, str | None], Awaitable[None]]


def replica_id(settings: Settings) -> str:
    """VOICEAI_REPLICA_ID, or this host's name and process id (the same for the process's life)."""
    if settings.replica_id:
        return settings.replica_id
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "replica"
    return f"{host}-{os.getpid()}"


def clustered(settings: Settings) -> bool:
    """Replicas share calls only through PostgreSQL; SQLite is a single replica's."""
    return make_url(settings.database_url).get_backend_name() == "postgresql"


def safety_net(switches: Switches) -> SafetyNet:
    """Hands a lost call to the dialplan's apology and fallback, as an over-capacity one: its
    fork closed with its replica, and the dialplan parks such a call in silence."""

    async def send(call_id: str, switch_name: str | None) -> None:
        switch = switches.get(switch_name)
        if switch is None or not switch.connected:
            log.warning("call %s: lost with its replica; no event socket to send it on", call_id)
            return
        try:
            await commands.to_safety_net(switch.esl, call_id)
            log.info("call %s: lost with its replica, sent to the apology and fallback", call_id)
        except Exception as exc:  # hung up meanwhile, most often
            log.info("call %s: lost with its replica, not sent to the apology: %s", call_id, exc)

    return send


class Cluster:
    """This replica's part among replicas: started in the app's lifespan, before it takes calls."""

    def __init__(
        self,
        replica: str,
        database_url: str,
        bus: EventBus,
        store: CallStore,
        *,
        timeout_s: float,
        execute: ControlHandler,
        safety_net: SafetyNet | None = None,
    ) -> None:
        self.replica = replica
        self._conninfo = _connect_kwargs(database_url)
        self._bus = bus
        self._store = store
        self._timeout_s = timeout_s
        self._beat_s = min(BEAT_S, timeout_s / 3)
        self._execute = execute
        self._safety_net = safety_net
        self._remote: dict[str, dict[str, Any]] = {}  # calls in progress elsewhere, by id
        self._pending: dict[str, asyncio.Future[tuple[int, dict[str, Any]]]] = {}
        self._sender: psycopg.AsyncConnection[Any] | None = None
        self._sending = asyncio.Lock()
        self._send_failed = False
        self._send_retry_at = 0.0
        self._listening = asyncio.Event()
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        seen = await self._store.heartbeat(self.replica)
        if seen is not None and seen < self._timeout_s:
            log.warning(
                "replica id %s was alive %.0f s ago: if another service runs with it, give each "
                "its own VOICEAI_REPLICA_ID (a restart after a crash also says this)",
                self.replica,
                seen,
            )
        # Before this replica takes a call: those still active under its id are from before.
        own = await self._store.end_own_calls(self.replica, LOST)
        self._sub = self._bus.subscribe(maxsize=EVENTS_QUEUE)
        self._spawn(self._listen(), "cluster-listen")
        self._spawn(self._publish(self._sub), "cluster-publish")
        self._spawn(self._watch(own), "cluster-heartbeat")
        try:
            await asyncio.wait_for(self._listening.wait(), LISTEN_WAIT_S)
        except TimeoutError:
            log.warning("not listening to the other replicas yet; still trying")
        log.info(
            "replica %s: sharing calls with the other replicas through PostgreSQL "
            "(heartbeat every %g s, lost after %g s)",
            self.replica,
            self._beat_s,
            self._timeout_s,
        )

    async def stop(self) -> None:
        """After this replica's calls ended (the publisher sends what is queued first)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sub is not None:
            self._sub.close()
        if self._sender is not None:
            await self._sender.close()
        for future in self._pending.values():
            future.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    # -- what the API asks ----------------------------------------------------------------------

    def runs_elsewhere(self, call_id: str) -> bool:
        """Whether another replica has this call (its FreeSWITCH events are that one's)."""
        return call_id in self._remote

    def remote_calls(self) -> list[dict[str, Any]]:
        """Summaries of the calls in progress on other replicas, as a call's summary() is."""
        return [_copy(summary) for summary in self._remote.values()]

    async def forward(
        self, owner: str, call_id: str, action: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Runs a control request on the replica that has the call; its status and answer."""
        request_id = uuid.uuid4().hex
        payload = _dumps(
            {
                "id": request_id,
                "from": self.replica,
                "to": owner,
                "call": call_id,
                "action": action,
                "body": body,
            }
        )
        if len(payload.encode()) >= MAX_PAYLOAD:
            return 413, {"detail": f"too large to send to replica {owner}, which has the call"}
        answer = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                if not await self._notify(CONTROL_CHANNEL, payload):
                    return 503, {"detail": "the other replicas cannot be reached (database)"}
                return await answer
        except TimeoutError:
            log.warning("call %s: replica %s did not answer %s in time", call_id, owner, action)
            return 504, {
                "detail": f"replica {owner}, which has the call, did not answer within "
                f"{CONTROL_TIMEOUT_S:g} s"
            }
        finally:
            self._pending.pop(request_id, None)

    # -- sending --------------------------------------------------------------------------------

    async def _publish(self, sub: Subscription) -> None:
        """This replica's call events, to the others, in order, several to a NOTIFY."""
        try:
            while True:
                await self._send_queued(sub, [await sub.get()])
        except asyncio.CancelledError:
            # At shutdown the calls' last events (call.ended) still reach the others' viewers.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_SEND_S):
                    while not sub.queue.empty():
                        await self._send_queued(sub, [])
            raise

    async def _send_queued(self, sub: Subscription, batch: list[BaseEvent]) -> None:
        while len(batch) < BATCH and not sub.queue.empty():
            batch.append(sub.queue.get_nowait())
        for payload in _packed(self.replica, (e for e in batch if _crosses(e))):
            await self._notify(EVENTS_CHANNEL, payload)

    async def _notify(self, channel: str, payload: str) -> bool:
        """One NOTIFY; False when the database cannot be reached (said once, then retried)."""
        loop = asyncio.get_running_loop()
        async with self._sending:
            if self._send_failed and loop.time() < self._send_retry_at:
                return False
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = await psycopg.AsyncConnection.connect(
                        **self._conninfo,
                        autocommit=True,
                        application_name=f"voiceai-notify-{self.replica}"[:63],
                    )
                await self._sender.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            except (psycopg.Error, OSError) as exc:
                if not self._send_failed:
                    log.warning(
                        "cannot send to the other replicas (%s): their viewers miss "
                        "this replica's events and its control answers until it can",
                        _describe(exc),
                    )
                self._send_failed, self._send_retry_at = True, loop.time() + SEND_RETRY_S
                if self._sender is not None:
                    with contextlib.suppress(Exception):
                        await self._sender.close()
                self._sender = None
                return False
            if self._send_failed:
                log.info("sending to the other replicas again")
                self._send_failed = False
            return True

    # -- receiving ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTENs for the other replicas for the app's lifetime, reconnecting with backoff."""
        delay, failed = 1.0, False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    **self._conninfo,
                    autocommit=True,
                    application_name=f"voiceai-listen-{self.replica}"[:63],  # in pg_stat_activity
                ) as conn:
                    for channel in CHANNELS:  # constants: never a value from outside
                        await conn.execute(f"LISTEN {channel}")
                    # After LISTEN, so a call that starts meanwhile is in one or the other.
                    await self._seed()
                    if failed:
                        log.info("listening to the other replicas again")
                    delay, failed = 1.0, False
                    self._listening.set()
                    while True:
                        async for note in conn.notifies(timeout=PING_S):
                            self._received_safely(note.channel, note.payload)
                        await conn.execute("SELECT 1")  # a server that went quiet fails here
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listening.clear()
                log.warning(
                    "lost the connection that hears the other replicas (%s); reconnecting in %g s",
                    _describe(exc),
                    delay,
                )
                failed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _received_safely(self, channel: str, payload: str) -> None:
        try:
            self._received(channel, payload)
        except Exception:  # one odd message must not cost the others (or the connection)
            log.exception("a message on %s could not be handled", channel)

    def _received(self, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("a message on %s that is not JSON was ignored", channel)
            return
        if not isinstance(message, dict):
            return
        if channel == EVENTS_CHANNEL:
            self._events_from(message)
        elif channel == CONTROL_CHANNEL and message.get("to") == self.replica:
            self._spawn(self._answer(message), "cluster-control")
        elif channel == REPLIES_CHANNEL and message.get("to") == self.replica:
            answer = self._pending.get(str(message.get("id")))
            body = message.get("body")
            if answer is not None and not answer.done():
                answer.set_result((int(message.get("status", 502)), body if _is_map(body) else {}))

    def _events_from(self, message: dict[str, Any]) -> None:
        sender = message.get("replica")
        if not isinstance(sender, str) or sender == self.replica:
            return
        for wire in message.get("events") or []:
            try:
                event = parse_event(wire).from_replica(sender)
            except (ValidationError, TypeError, AttributeError):
                log.debug("an event from replica %s did not parse", sender)
                continue
            self._track(event)
            self._bus.publish(event)

    async def _answer(self, message: dict[str, Any]) -> None:
        """A control request for a call here, run as a request to this replica would be."""
        call_id, action = str(message.get("call", "")), str(message.get("action", ""))
        body = message.get("body")
        sender = message.get("from")
        try:
            status, answer = await self._execute(call_id, action, body if _is_map(body) else {})
        except Exception:
            log.exception("call %s: %s asked by replica %s failed", call_id, action, sender)
            status, answer = 500, {"detail": "internal error"}
        log.info("call %s: %s asked by replica %s: %d", call_id, action, sender, status)
        reply = {"id": message.get("id"), "to": sender, "status": status}
        payload = _dumps({**reply, "body": answer})
        if len(payload.encode()) >= MAX_PAYLOAD:
            payload = _dumps({**reply, "body": {"detail": "answer too large to send back"}})
        await self._notify(REPLIES_CHANNEL, payload)

    # -- the calls in progress elsewhere ----------------------------------------------------------

    async def _seed(self) -> None:
        """The calls in progress elsewhere, from the records: for a replica that starts (or
        reconnects) while others have calls, whose call.started it did not hear."""
        records = await self._store.active_calls_elsewhere(self.replica)
        self._remote = {r["id"]: _summary_of(r) for r in records[-MAX_REMOTE_CALLS:]}

    def _track(self, event: BaseEvent) -> None:
        """Keeps a remote call's summary as its session keeps its own (session.summary())."""
        if isinstance(event, events.CallStarted):
            self._remote[event.call_id] = {
                "id": event.call_id,
                "caller": event.caller,
                "caller_name": event.caller_name,
                "callee": event.callee,
                "direction": event.direction,
                "state": event.state,
                "started_at": event.at,
                "muted": False,
                "turns": [],
                "tool_calls": [],
                "messages": [],
                "replica": event.replica,
            }
            while len(self._remote) > MAX_REMOTE_CALLS:  # ends that never came: oldest go
                del self._remote[next(iter(self._remote))]
            return
        if isinstance(event, events.CallEnded):
            self._remote.pop(event.call_id, None)
            return
        summary = self._remote.get(event.call_id)
        if summary is None:
            return
        match event:
            case events.CallState():
                summary["state"] = event.state
            case events.CallMuted():
                summary["muted"] = event.muted
            case events.TranscriptFinal():
                turn = {"speaker": "caller", "text": event.text, "timings": {}, "at": event.at}
                summary["turns"].append(turn)
            case events.BotSaid():
                turn = {"speaker": "bot", "text": event.text, "timings": event.timings}
                summary["turns"].append({**turn, "at": event.at})
            case events.ToolCalled():
                summary["tool_calls"].append({**event.data, "at": event.at})
            case events.MessageTaken():
                summary["messages"].append({**event.data, "at": event.at})

    # -- heartbeats and lost replicas -----------------------------------------------------------

    async def _watch(self, own: list[LostCall]) -> None:
        """Heartbeats; ends the calls of replicas that stopped. `own`: this replica's calls from
        before a restart, announced once its event socket had a moment to connect."""
        failing = False
        while True:
            await asyncio.sleep(self._beat_s)
            try:
                await self._store.heartbeat(self.replica)
                lost = own + await self._store.end_lost_calls(self.replica, self._timeout_s, LOST)
                own = []
            except Exception as exc:
                if not failing:
                    log.warning(
                        "cannot write this replica's heartbeat (%s); after %g s without "
                        "one the other replicas end its calls",
                        _describe(exc),
                        self._timeout_s,
                    )
                failing = True
                continue
            if failing:
                log.info("this replica's heartbeat is written again")
                failing = False
            if lost:
                await self._ended(lost)

    async def _ended(self, lost: list[LostCall]) -> None:
        """Calls of a lost replica, their records ended: call.ended for every viewer (marked as
        the lost replica's, so no store or metrics counts it again), the callers to the apology."""
        for replica in sorted({call.replica for call in lost}):
            ids = [call.call_id for call in lost if call.replica == replica]
            log.warning(
                "replica %s lost (%s): %d call%s in progress ended: %s",
                replica,
                "this one, before it restarted"
                if replica == self.replica
                else f"no heartbeat for {self._timeout_s:g} s",
                len(ids),
                "" if len(ids) == 1 else "s",
                ", ".join(ids[:20]) + (" …" if len(ids) > 20 else ""),
            )
        ended = []
        for call in lost:
            self._remote.pop(call.call_id, None)
            event = events.CallEnded(call_id=call.call_id, reason=LOST, turns=call.turns)
            ended.append(self._bus.publish(event.from_replica(call.replica)))
        for payload in _packed(self.replica, ended):
            await self._notify(EVENTS_CHANNEL, payload)
        if self._safety_net is not None:
            for call in lost:
                self._spawn(self._safety_net(call.call_id, call.switch), "cluster-safety-net")


# -- payloads ------------------------------------------------------------------------------------


def _crosses(event: BaseEvent) -> bool:
    """A call's event of this replica: another's is its own to send, a service-wide one (the
    event socket's state) is about this replica only."""
    return not event.remote and bool(event.call_id) and not isinstance(event, events.Snapshot)


def _packed(replica: str, batch: Iterable[BaseEvent]) -> Iterator[str]:
    """NOTIFY payloads `{"replica", "events": [wire, ...]}`, each under MAX_PAYLOAD bytes."""
    head = '{"replica":' + json.dumps(replica) + ',"events":['
    room = MAX_PAYLOAD - len(head.encode()) - 2
    texts: list[str] = []
    size = 0
    for event in batch:
        text = event.wire_text
        if len(text.encode()) > room:
            text = _trimmed(event, room)
            if text is None:
                log.warning("call %s: a %s too large to send even cut", event.call_id, event.type)
                continue
        length = len(text.encode()) + 1
        if texts and size + length > room:
            yield head + ",".join(texts) + "]}"
            texts, size = [], 0
        texts.append(text)
        size += length
    if texts:
        yield head + ",".join(texts) + "]}"


def _trimmed(event: BaseEvent, room: int) -> str | None:
    """An event too large for a NOTIFY, cut to fit: its long texts end in "…", then its maps
    and lists are emptied. Only the other replicas' viewers see this form; the record, written
    by the replica that has the call, is whole."""
    wire = event.wire()
    for keep in TRIM_KEEP:
        text = _dumps({**wire, "data": _cut(wire["data"], keep)})
        if len(text.encode()) <= room:
            return text
    return None


def _cut(value: Any, keep: int, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value if len(value) <= keep else value[:keep] + "…"
    if isinstance(value, dict):
        if keep == 0 and depth > 0:
            return {}
        return {k: _cut(v, keep, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [] if keep == 0 else [_cut(v, keep, depth + 1) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_map(value: Any) -> bool:
    return isinstance(value, dict)


def _copy(summary: dict[str, Any]) -> dict[str, Any]:
    lists = ("turns", "tool_calls", "messages")
    return {**summary, **{key: list(summary[key]) for key in lists}}


def _summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """A call's summary from its record (the state is unknown until its next call.state)."""
    return {
        "id": record["id"],
        "caller": record["caller"],
        "caller_name": None,
        "callee": record["callee"],
        "direction": record["direction"],
        "state": None,
        "started_at": _timestamp(record["started_at"]),
        "muted": False,
        "turns": [
            {
                "speaker": t["speaker"],
                "text": t["text"],
                "timings": t["timings"] or {},
                "at": _timestamp(t["at"]),
            }
            for t in record["turns"]
        ],
        "tool_calls": [{**t, "at": _timestamp(t["at"])} for t in record["tool_calls"]],
        "messages": [{**m, "at": _timestamp(m["at"])} for m in record["messages"]],
        "replica": record["replica"],
    }


def _timestamp(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def _connect_kwargs(url: str) -> dict[str, Any]:
    """psycopg's connection arguments for the store's SQLAlchemy URL (its password included)."""
    parsed = make_url(url)
    _, kwargs = parsed.get_dialect()().create_connect_args(parsed)
    kwargs.pop("context", None)  # SQLAlchemy's adapters, not libpq's
    kwargs.setdefault("connect_timeout", 10)
    return kwargs


def _describe(exc: BaseException) -> str:
    """The driver's own message, first line: no URL, no password."""
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0][:200]}"
