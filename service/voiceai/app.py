"""The FastAPI application and the objects that live as long as it does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import numpy as np
from fastapi import FastAPI
from threadpoolctl import threadpool_limits

from voiceai import __version__, events
from voiceai.agents import Agents, AgentsReloader, load_configured_agents
from voiceai.api import calls, fork, guards, live, routes, viewer
from voiceai.api.calls import run_forwarded
from voiceai.api.deps import Services
from voiceai.audio.turns import TurnConfig
from voiceai.audio.vad import SileroModel, VadError
from voiceai.cluster import Cluster, clustered, replica_id, safety_net
from voiceai.config import Settings, hide_url_password
from voiceai.conversation.registry import CallRegistry
from voiceai.conversation.session import CallPolicy, Engines
from voiceai.conversation.tools import ToolLines
from voiceai.engines.llm import LanguageModel, build_llm, tools_warning
from voiceai.engines.stt import WHISPER_RATE, SpeechToText, WhisperSTT
from voiceai.engines.stt_scheduler import TranscriptionScheduler
from voiceai.engines.tts import SpeechSynthesizer, build_tts
from voiceai.engines.turn import SmartTurn, TurnCompletion
from voiceai.events import EventBus
from voiceai.metrics import Metrics
from voiceai.prompts import PromptCache
from voiceai.store import CallStore, record_events
from voiceai.telephony.esl import EslClient, EslEvent
from voiceai.telephony.switches import Switch, Switches

log = logging.getLogger(__name__)

# What the service listens to on the event socket; plain names first, then CUSTOM subclasses.
ESL_EVENTS = (
    "CHANNEL_ANSWER",
    "CHANNEL_HANGUP_COMPLETE",
    "PLAYBACK_START",
    "PLAYBACK_STOP",
    "DTMF",
)
ESL_CUSTOM = (
    "mod_audio_fork::connect",
    "mod_audio_fork::connect_failed",
    "mod_audio_fork::disconnect",
)


async def load_stt(settings: Settings) -> SpeechToText:
    if settings.stt_engine == "openai":
        from voiceai.engines.openai_stt import OpenAISTT

        remote = OpenAISTT(
            settings.stt_url,
            settings.stt_model,
            api_key=settings.stt_api_key.get_secret_value(),
            timeout_s=settings.stt_timeout_s,
            no_speech_threshold=settings.stt_no_speech_threshold,
        )
        log.info("STT: %s at %s", remote.model_name, hide_url_password(settings.stt_url))
        if settings.stt_language == "ru" and not remote.multilingual:
            log.warning(
                "STT model %s is English-only (*.en): Russian needs another", remote.model_name
            )
        return remote
    workers, threads = settings.stt_concurrency()
    stt = await asyncio.to_thread(
        WhisperSTT,
        settings.stt_model,
        device=settings.stt_device,
        compute_type=settings.stt_compute_type,
        workers=workers,
        threads=threads,
        timeout_s=settings.stt_timeout_s,
        no_speech_threshold=settings.stt_no_speech_threshold,
    )
    log.info(
        "STT model %s loaded (multilingual: %s; %d at once, %d CPU threads each)",
        stt.model_name,
        stt.multilingual,
        workers,
        threads,
    )
    if settings.stt_language == "ru" and not stt.multilingual:
        log.warning("STT model is English-only; Russian needs a multilingual VOICEAI_STT_MODEL")
    return stt


def load_turn_taking(settings: Settings) -> tuple[SileroModel | None, TurnCompletion | None]:
    """The speech detector and the end-of-turn model, loaded once for every call.

    A missing model file degrades turn-taking (webrtcvad, words only) with a warning naming the
    setting, rather than stopping a service that can still answer calls.
    """
    vad = turn_model = None
    if settings.vad == "silero":
        try:
            vad = SileroModel()
            log.info("speech detector: Silero VAD (%s)", vad.path.name)
        except VadError as exc:
            log.warning("VOICEAI_VAD=silero unavailable, using webrtcvad: %s", exc)
    if settings.turn_model == "smart-turn":
        try:
            turn_model = SmartTurn()
            log.info("end-of-turn model: %s", turn_model.name)
        except Exception as exc:
            log.warning("VOICEAI_TURN_MODEL=smart-turn unavailable, words alone judge: %s", exc)
    return vad, turn_model


async def warm_up_models(
    settings: Settings,
    stt: SpeechToText,
    tts: SpeechSynthesizer,
    prompts: PromptCache,
    turn_model: TurnCompletion | None,
    agents: Agents | None = None,
) -> None:
    """Load every model into memory before the first caller needs it (cold starts are a peer
    complaint): one transcription, the voices, the greetings, the apology and the tools' fixed
    lines, the turn model."""
    started = time.perf_counter()
    rate = settings.fork_rate
    language = "ru" if settings.stt_language == "ru" else "en"
    noise = (np.random.default_rng(0).standard_normal(WHISPER_RATE) * 0.001).astype(np.float32)
    steps: list[tuple[str, Awaitable[object]]] = [
        ("speech recognition", stt.transcribe(noise, language)),
        ("voice", tts.synthesize("Hello.", language, rate)),
    ]
    phrases = {(settings.greeting, language), (settings.apology, language)}
    if agents is not None:
        for agent in (agents.default, *agents.by_did.values()):
            spoken = agent.call_language() or language
            phrases.add((agent.greeting, spoken))
            if len(agent.toolbox):
                lines = ToolLines()
                phrases.update((lines.say(w, spoken), spoken) for w in ("filler", "failed"))
    steps += [
        (f"phrase {text[:30]!r}", prompts.get(text, lang, rate)) for text, lang in phrases if text
    ]
    if turn_model is not None:
        steps.append(("end-of-turn model", turn_model.complete_probability(noise)))
    for what, step in steps:
        try:
            await step
        except Exception as exc:  # the call that needs it will say so again
            log.warning("warm-up: %s failed: %s", what, exc)
    log.info("models warm in %.1f s", time.perf_counter() - started)


def call_policy(settings: Settings) -> CallPolicy:
    return CallPolicy(
        turn=TurnConfig(
            vad_aggressiveness=settings.vad_aggressiveness,
            speech_threshold=settings.vad_threshold if settings.vad == "silero" else 0.5,
            min_speech_ms=settings.min_speech_ms,
            babble_margin_db=settings.babble_margin_db,
            pause_ms=settings.pause_ms,
            end_of_turn_ms=settings.end_of_turn_ms,
            incomplete_ms=settings.incomplete_turn_ms,
            max_utterance_ms=settings.max_utterance_ms,
            pre_roll_ms=settings.pre_roll_ms,
        ),
        barge_in_min_ms=settings.barge_in_min_ms,
        resume_hold_ms=settings.resume_hold_ms,
        complete_threshold=settings.turn_complete_threshold,
        system_prompt=settings.prompt(),
        greeting=settings.greeting,
        apology=settings.apology,
        fallback_number=settings.fallback_number,
        transfer_digit=settings.transfer_digit,
        media_dir=settings.media_dir,
        partial_transcripts=settings.partial_transcripts,
        record_calls=settings.record_calls,
        tool_lines=ToolLines(filler_after_s=settings.tool_filler_ms / 1000),
        max_tool_rounds=settings.max_tool_rounds,
    )


def create_app(
    settings: Settings,
    *,
    stt: SpeechToText | None = None,
    llm: LanguageModel | None = None,
    tts: SpeechSynthesizer | None = None,
) -> FastAPI:
    """Engines may be given to share loaded models between apps (tests, benchmarks)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One BLAS thread: calls run side by side, and OpenBLAS's idle threads spin. Measured:
        # a Smart Turn check cost 85 ms of CPU for 42 ms of work, a transcription 12 % more.
        threadpool_limits(limits=1, user_api="blas")
        settings.media_dir.mkdir(parents=True, exist_ok=True)
        agents = await asyncio.to_thread(load_configured_agents, settings)  # a bad file: no start
        replica = replica_id(settings)
        store = CallStore(settings.database_url, replica=replica)
        bus = EventBus()
        calls = CallRegistry()
        stt_engine = stt or await load_stt(settings)
        vad, turn_model = await asyncio.to_thread(load_turn_taking, settings)
        sharing: Cluster | None = None  # set below when replicas share calls

        def elsewhere(call_id: str) -> bool:
            return sharing is not None and sharing.runs_elsewhere(call_id)

        switches = _event_sockets(settings, calls, bus, elsewhere)
        tts_engine = tts or build_tts(settings)
        # Without FreeSWITCH's event socket the bot cannot speak: don't load a model for nothing.
        llm_engine = llm or (await build_llm(settings) if switches else None)
        llm_warming = asyncio.create_task(_warm_up_llm(llm_engine))
        offered = agents.for_did(None).toolbox.specs()
        if llm_engine is not None and (why_not := tools_warning(llm_engine, offered)):
            log.warning("%s", why_not)
        prompts = PromptCache(tts_engine, settings.media_dir / "prompts")
        await warm_up_models(settings, stt_engine, tts_engine, prompts, turn_model, agents)
        # The default switch's; a call's own switch replaces it (api/fork.py).
        control = switches.default.control if switches.default else None
        transcriber = TranscriptionScheduler(stt_engine, workers=settings.stt_concurrency()[0])
        engines = Engines(
            transcriber, llm_engine, tts_engine, control, prompts, bus, vad, turn_model
        )
        metrics = Metrics()
        metrics.watch_stt(transcriber)
        metrics.watch_store(store)
        metrics.watch_switches(switches)
        watching_loop = asyncio.create_task(metrics.watch_loop(), name="loop-lag")
        app.state.services = Services(
            settings, bus, store, engines, switches, call_policy(settings), calls, metrics, agents
        )
        reloader = AgentsReloader(settings, partial(setattr, app.state.services, "agents"))
        reloader.install(asyncio.get_running_loop())
        recorder = asyncio.create_task(record_events(bus, store), name="recorder")
        counting = asyncio.create_task(metrics.consume(bus), name="metrics")
        pruner = asyncio.create_task(_prune_records(store, settings.retention_days))
        await switches.start()
        if clustered(settings):  # replicas share calls through PostgreSQL only
            sharing = Cluster(
                replica,
                settings.database_url,
                bus,
                store,
                timeout_s=settings.replica_timeout_s,
                execute=partial(run_forwarded, app.state.services),
                safety_net=safety_net(switches),
            )
            await sharing.start()
            app.state.services.cluster = sharing
        try:
            yield
        finally:
            reloader.uninstall(asyncio.get_running_loop())
            for call in calls.all():
                await call.abort("service stopped")
            if sharing is not None:
                await sharing.stop()  # after the calls' last events, which it sends first
            llm_warming.cancel()
            pruner.cancel()
            watching_loop.cancel()
            await transcriber.aclose()
            await switches.stop()
            recorder.cancel()  # it writes what is still queued before it stops
            counting.cancel()
            await asyncio.gather(
                recorder, counting, llm_warming, pruner, watching_loop, return_exceptions=True
            )
            await store.aclose()
            if stt is None:
                await stt_engine.aclose()
            if llm is None and llm_engine is not None:
                await llm_engine.aclose()
            if isinstance(turn_model, SmartTurn):
                turn_model.close()

    app = FastAPI(title="voiceai", version=__version__, lifespan=lifespan)
    guards.install(app, settings)
    app.include_router(routes.router)
    app.include_router(calls.router)
    app.include_router(fork.router)
    app.include_router(live.router)
    app.include_router(viewer.router)
    return app


PRUNE_EVERY_S = 6 * 3600


async def _prune_records(store: CallStore, retention_days: int) -> None:
    """Old call records go, at start and then a few times a day."""
    if retention_days <= 0:
        return
    while True:
        try:
            pruned = await store.prune(retention_days)
            if pruned:
                log.info("pruned %d call records older than %d days", pruned, retention_days)
        except Exception:
            log.exception("could not prune old call records")
        await asyncio.sleep(PRUNE_EVERY_S)


async def _warm_up_llm(llm: LanguageModel | None) -> None:
    """Load the model before the first caller needs it (cold starts are a peer complaint)."""
    if llm is None:
        return
    try:
        await llm.warm_up()
        log.info("LLM %s is warm", llm.name)
    except Exception as exc:
        log.warning("LLM %s warm-up failed: %s", llm.name, exc)


def _event_sockets(
    settings: Settings, calls: CallRegistry, bus: EventBus, elsewhere: Callable[[str], bool]
) -> Switches:
    """One event socket a FreeSWITCH (VOICEAI_FREESWITCHES, or VOICEAI_ESL_HOST/PORT)."""
    password = settings.esl_password.get_secret_value()
    if not password:
        log.warning("no VOICEAI_ESL_PASSWORD: calls are transcribed but the bot cannot speak")
        return Switches()
    sockets = settings.event_sockets()
    switches = Switches(
        [_switch(settings, name, host, port, password) for name, host, port in sockets]
    )
    for switch in switches:
        _wire(switch, switches, calls, bus, elsewhere, named=len(sockets) > 1)
    return switches


def _switch(settings: Settings, name: str, host: str, port: int, password: str) -> Switch:
    esl = EslClient(
        host,
        port,
        password,
        events=ESL_EVENTS,
        custom=ESL_CUSTOM,
        reconnect_max_s=3.0,  # a restarted FreeSWITCH is back in seconds; callers can't wait
        heartbeat_s=settings.esl_heartbeat_s,
    )
    return Switch(name, esl)


def _wire(
    switch: Switch,
    switches: Switches,
    calls: CallRegistry,
    bus: EventBus,
    elsewhere: Callable[[str], bool],
    *,
    named: bool,
) -> None:
    """Events to the call they name (uuids are unique across switches); a lost socket to the
    calls on that switch only."""
    where = f"FreeSWITCH {switch.name}" if named else "FreeSWITCH"

    async def route(event: EslEvent) -> None:
        # Events are routed by the JSON body's Unique-ID only (caller data cannot forge it).
        if calls.deliver(event):
            return
        if event.name == "CHANNEL_HANGUP_COMPLETE" and event.uuid and not elsewhere(event.uuid):
            # A call being dialled, or one whose fork never came: its record gets the cause.
            cause = event.headers.get("Hangup-Cause")
            bus.publish(events.CallHangup(call_id=event.uuid, cause=cause))
        elif event.subclass == "mod_audio_fork::connect_failed":
            log.error("%s could not connect the fork of %s: %s", where, event.uuid, event.body)

    def state_changed(state: str) -> None:
        log.info("%s event socket %s", where, state)
        bus.publish(events.EslState(state=state))  # type: ignore[arg-type]
        if state == "disconnected":
            for call_id in switches.calls_on(switch):
                if (call := calls.get(call_id)) is not None:
                    call.on_esl_lost()

    switch.esl.on_event(route)
    switch.esl.on_state(state_changed)
