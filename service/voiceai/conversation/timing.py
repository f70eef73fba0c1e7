"""When each stage of one reply happened, relative to the caller's last word."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class TurnTiming:
    speech_end_at: float  # loop clock
    stages: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str) -> None:
        self.stages.setdefault(stage, asyncio.get_running_loop().time())

    def as_ms(self) -> dict[str, int]:
        return {k: round((t - self.speech_end_at) * 1000) for k, t in self.stages.items()}
