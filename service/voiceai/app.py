"""The FastAPI application and the objects that live as long as it does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from voiceai import __version__
from voiceai.api import fork, live, routes
from voiceai.api.deps import Services
from voiceai.call import CallRegistry
from voiceai.config import Settings
from voiceai.engines.stt import SpeechToText, WhisperSTT
from voiceai.events import EventBus
from voiceai.store import CallStore, record_events

log = logging.getLogger(__name__)


async def load_stt(settings: Settings) -> SpeechToText:
    stt = await asyncio.to_thread(
        WhisperSTT,
        settings.stt_model,
        device=settings.stt_device,
        compute_type=settings.stt_compute_type,
        workers=settings.stt_workers,
        timeout_s=settings.stt_timeout_s,
        no_speech_threshold=settings.stt_no_speech_threshold,
    )
    log.info("STT model %s loaded (multilingual: %s)", stt.model_name, stt.multilingual)
    if settings.stt_language == "ru" and not stt.multilingual:
        log.warning("STT model is English-only; Russian needs a multilingual VOICEAI_STT_MODEL")
    return stt


def create_app(settings: Settings, *, stt: SpeechToText | None = None) -> FastAPI:
    """`stt` may be given to share one loaded model between apps (tests, benchmarks)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.media_dir.mkdir(parents=True, exist_ok=True)
        store = CallStore(settings.database_url)
        engine = stt or await load_stt(settings)
        bus = EventBus()
        app.state.services = Services(settings, bus, store, engine, CallRegistry())
        recorder = asyncio.create_task(record_events(bus, store), name="recorder")
        try:
            yield
        finally:
            for call in app.state.services.calls.all():
                await call.abort("service stopped")
            recorder.cancel()  # it writes what is still queued before it stops
            await asyncio.gather(recorder, return_exceptions=True)
            await store.aclose()
            if stt is None:
                await engine.aclose()

    app = FastAPI(title="voiceai", version=__version__, lifespan=lifespan)
    app.include_router(routes.router)
    app.include_router(routes.api)
    app.include_router(fork.router)
    app.include_router(live.router)
    return app
