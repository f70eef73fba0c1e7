"""What every route needs: the app's lifespan services and the API token check."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request, WebSocket, status

from voiceai.agents import Agent, Agents
from voiceai.cluster import Cluster
from voiceai.config import Settings
from voiceai.conversation.registry import CallRegistry
from voiceai.conversation.session import CallPolicy, Engines
from voiceai.engines.tts import build_tts
from voiceai.events import EventBus
from voiceai.metrics import Metrics
from voiceai.prompts import PromptCache
from voiceai.store import CallStore
from voiceai.telephony.switches import Switches


@dataclass
class Services:
    """The app's lifespan objects; nothing else is shared between requests."""

    settings: Settings
    bus: EventBus
    store: CallStore
    engines: Engines
    switches: Switches  # FreeSWITCH's event sockets, by switch name; none when not configured
    policy: CallPolicy
    calls: CallRegistry
    metrics: Metrics
    agents: Agents  # by dialled number; SIGHUP replaces it, calls keep the agent they took
    # Outbound calls being dialled: their prompt/greeting overrides, by call id.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    voiced: dict[str, Engines] = field(default_factory=dict)  # by an agent's own voice
    background: set[asyncio.Task[None]] = field(default_factory=set)  # e.g. calls being dialled
    cluster: Cluster | None = None  # the other replicas (PostgreSQL only): voiceai/cluster.py

    def engines_for(self, agent: Agent) -> Engines:
        """The shared engines, or a copy that speaks with the agent's own edge-tts voice (made
        once a voice, with its own prompt cache: a greeting is cached in the voice it is in)."""
        if not agent.voice or agent.voice == self.settings.tts_voice:
            return self.engines
        if self.settings.tts not in ("edge", "auto"):
            return self.engines  # the offline voices are the same for every agent
        engines = self.voiced.get(agent.voice)
        if engines is None:
            tts = build_tts(self.settings.model_copy(update={"tts_voice": agent.voice}))
            slug = hashlib.sha256(agent.voice.encode()).hexdigest()[:12]
            prompts = PromptCache(tts, self.settings.media_dir / "prompts" / slug)
            engines = dataclasses.replace(self.engines, tts=tts, prompts=prompts)
            self.voiced[agent.voice] = engines
        return engines

    def agent_for(self, call_id: str, did: str | None) -> tuple[Agent, CallPolicy]:
        """Who answers a call: the agent of the number dialled, with an outbound call's own
        prompt and greeting (POST /api/calls) over it."""
        agent = self.agents.for_did(did)
        policy = agent.policy(self.policy)
        if overrides := self.overrides.pop(call_id, None):
            policy = dataclasses.replace(policy, **overrides)
        return agent, policy


def services(conn: Request | WebSocket) -> Services:
    return conn.app.state.services


def token_ok(settings: Settings, given: str | None) -> bool:
    expected = settings.api_token.get_secret_value()
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def require_token(request: Request) -> None:
    if not token_ok(services(request).settings, bearer(request.headers.get("authorization"))):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API token (Authorization: Bearer ...)",
            headers={"WWW-Authenticate": "Bearer"},
        )
