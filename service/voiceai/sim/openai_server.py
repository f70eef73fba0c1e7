"""An OpenAI-compatible server emulator: the wire protocol vLLM, llama.cpp's llama-server,
faster-whisper-server (speaches) and OpenAI speak, on a real socket.

Speaks `GET /v1/models`, `POST /v1/chat/completions` (server-sent events or one JSON object,
OpenAI's field names and error bodies) and `POST /v1/audio/transcriptions` (multipart/form-data;
`json`, `text` or `verbose_json`). With `api_key` set, a request without that bearer key gets
401 as OpenAI answers it (the key's ends shown, masked). Requests are checked as OpenAI checks
them (400 for a tool result that answers no call, arguments that are not JSON text, a missing
file...). Every request is recorded: `chat_requests`, `transcription_requests`.

Chat: `reply(messages)` scripts the model as in the Ollama emulator (text, `tool_call(...)`, or
a list of both). Streamed, the text comes in word-like pieces after a role-only first chunk;
each tool call comes as a first fragment (index, id, name) and then its arguments as JSON text
in `argument_piece_chars` fragments, several chunks each, as vLLM and OpenAI stream them; then
the finish_reason chunk, the usage chunk when `stream_options.include_usage`, `data: [DONE]`.

Transcription: `whisper` (a faster_whisper.WhisperModel, or a WhisperSTT) really transcribes the
uploaded audio; otherwise `transcript` (text, or a function of the audio and language) is the
answer. `flavour` "speaches" answers as faster-whisper-server does (language `en`, words with
their probability), "openai" as OpenAI does (language `english`, words without probability).

    with OpenAIEmulator(reply=lambda messages: "Hello there.", whisper=stt) as server:
        ...  # point the service at server.url (it ends in /v1)

or from a shell: `python -m voiceai.sim.openai_server --port 8000`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from voiceai.audio.pcm import decode_bytes, to_float
from voiceai.engines.openai_stt import LANGUAGE_NAMES
from voiceai.sim.background import BackgroundServer
from voiceai.sim.ollama_server import ReplyFn, polite_echo, split_pieces, tool_call

__all__ = ["OpenAIEmulator", "polite_echo", "tool_call"]

DEFAULT_MODEL: Final = "meta-llama/Llama-3.2-3B-Instruct"
DEFAULT_STT_MODEL: Final = "Systran/faster-whisper-tiny.en"
RATE: Final = 16000
MIN_AUDIO_S: Final = 0.1  # OpenAI: "Minimum audio length is 0.1 seconds."
FORMATS: Final = ("json", "text", "verbose_json")
AUDIO_FORMATS: Final = "['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']"
ROLES: Final = ("system", "developer", "user", "assistant", "tool")
Transcriber = Callable[[np.ndarray, str | None], str]


@dataclass
class ChatRequest:
    """One /v1/chat/completions request as the emulator received it."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    max_tokens: int | None
    tools: list[dict[str, Any]]
    body: dict[str, Any]
    status: int = 200  # the HTTP status answered
    # pending → streaming → done | error | disconnected (the client went away mid-stream)
    outcome: str = "pending"
    chunks_sent: int = 0  # content and tool-call chunks sent


@dataclass
class TranscriptionRequest:
    """One /v1/audio/transcriptions request: its form fields and what was answered."""

    fields: dict[str, list[str]] = field(default_factory=dict)  # the text fields, as sent
    filename: str | None = None
    file_type: str | None = None
    audio_s: float = 0.0
    status: int = 200
    text: str = ""  # what was transcribed


@dataclass
class _Call:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass
class _Transcribed:
    text: str
    language: str
    segments: list[dict[str, Any]]
    words: list[dict[str, Any]]


class OpenAIEmulator:
    """A scripted OpenAI-compatible server on 127.0.0.1 (port 0 = a free one), served by
    uvicorn in a thread."""

    def __init__(
        self,
        *,
        models: Sequence[str] = (DEFAULT_MODEL,),
        reply: ReplyFn = polite_echo,
        stt_models: Sequence[str] = (DEFAULT_STT_MODEL,),
        whisper: Any = None,
        transcript: str | Transcriber = "",
        flavour: Literal["speaches", "openai"] = "speaches",
        api_key: str = "",
        token_delay_s: float = 0.0,
        first_token_delay_s: float = 0.0,
        argument_piece_chars: int = 7,
        fail_with: str | None = None,
        fail_after_chunks: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models = list(models)
        self.reply = reply
        self.stt_models = list(stt_models)
        # WhisperSTT lends its loaded model; a WhisperModel is taken as it is.
        self.whisper = getattr(whisper, "whisper", whisper)
        self.transcript = transcript
        self.flavour = flavour
        self.api_key = api_key
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = first_token_delay_s
        self.argument_piece_chars = argument_piece_chars
        self.fail_with = fail_with  # chat completions answer HTTP 500 with this message
        self.fail_after_chunks = fail_after_chunks  # a mid-stream error chunk after N chunks
        self.chat_requests: list[ChatRequest] = []
        self.transcription_requests: list[TranscriptionRequest] = []
        self.host = host
        self.port = port
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
            ]
        )
        self._background = BackgroundServer(self.app, host, port, "openai-emulator")

    @property
    def url(self) -> str:
        """The base URL clients are given (OpenAI's SDKs and our engines append the paths)."""
        return f"http://{self.host}:{self.port}/v1"

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> OpenAIEmulator:
        self.port = self._background.start(timeout_s)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._background.stop(timeout_s)

    def __enter__(self) -> OpenAIEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_outcome(self, index: int = -1, timeout_s: float = 3.0) -> str:
        """The outcome of a recorded chat request once its stream has ended (or `streaming`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            outcome = self.chat_requests[index].outcome
            if outcome not in ("pending", "streaming"):
                return outcome
            time.sleep(0.01)
        return self.chat_requests[index].outcome

    # --- routes ------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 1735689600, "owned_by": "emulator"}
                    for name in [*self.models, *self.stt_models]
                ],
            }
        )

    async def _chat(self, request: Request) -> Response:
        record = ChatRequest("", [], False, None, [], {})
        self.chat_requests.append(record)
        response = await self._chat_response(request, record)
        record.status = response.status_code
        if response.status_code >= 400:
            record.outcome = "error"
        return response

    async def _chat_response(self, request: Request, record: ChatRequest) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            return _error(400, f"We could not parse the JSON body of your request. ({exc})")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        record.body = body
        record.model = str(body.get("model") or "")
        record.messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        record.stream = body.get("stream") is True
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        record.max_tokens = limit if isinstance(limit, int) else None
        record.tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        if not record.model:
            return _error(400, "you must provide a model parameter", param="model")
        if record.model not in self.models:
            return _error(
                404,
                f"The model `{record.model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if (problem := check_messages(body.get("messages"))) is not None:
            return _error(400, problem[0], param=problem[1])
        if (problem := check_tools(body.get("tools"))) is not None:
            return _error(400, problem[0], param=problem[1])
        if self.fail_with is not None:
            return _error(500, self.fail_with, kind="server_error")
        texts, calls = _script(self.reply(record.messages))
        finish = "tool_calls" if calls else "stop"
        if record.max_tokens is not None and record.max_tokens < len(texts):
            texts, calls, finish = texts[: record.max_tokens], [], "length"
        if record.stream:
            options = body.get("stream_options") or {}
            usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
            events = self._stream(record, texts, calls, finish, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        return await self._whole(record, texts, calls, finish)

    async def _stream(
        self,
        record: ChatRequest,
        texts: list[str],
        calls: list[_Call],
        finish: str,
        usage: bool,
    ) -> AsyncIterator[bytes]:
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _event(_head(completion_id, created, record.model, [choice], "chunk"))

        record.outcome = "streaming"
        try:
            yield chunk({"role": "assistant", "content": ""})  # before the first token
            await asyncio.sleep(self.first_token_delay_s)
            deltas = [{"content": text} for text in texts]
            deltas += [delta for i, call in enumerate(calls) for delta in self._fragments(i, call)]
            for index, delta in enumerate(deltas):
                if self.fail_after_chunks is not None and index >= self.fail_after_chunks:
                    record.outcome = "error"
                    yield _event(_error_body("Internal server error", "InternalServerError"))
                    return
                if index:
                    await asyncio.sleep(self.token_delay_s)
                yield chunk(delta)
                record.chunks_sent += 1
            yield chunk({}, finish)
            if usage:
                last = _head(completion_id, created, record.model, [], "chunk")
                last["usage"] = _usage(record.messages, len(deltas))
                yield _event(last)
            yield b"data: [DONE]\n\n"
            record.outcome = "done"
        finally:
            # Starlette cancels (or closes) this generator when the client disconnects.
            if record.outcome == "streaming":
                record.outcome = "disconnected"

    def _fragments(self, index: int, call: _Call) -> list[dict[str, Any]]:
        """A tool call as streamed: id and name first, then its arguments in pieces."""
        first = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        size = max(1, self.argument_piece_chars)
        pieces = [call.arguments[i : i + size] for i in range(0, len(call.arguments), size)]
        rest = [{"index": index, "function": {"arguments": piece}} for piece in pieces]
        return [{"tool_calls": [first]}, *({"tool_calls": [fragment]} for fragment in rest)]

    async def _whole(
        self, record: ChatRequest, texts: list[str], calls: list[_Call], finish: str
    ) -> Response:
        await asyncio.sleep(self.first_token_delay_s + self.token_delay_s * len(texts))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        result = _head(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), record.model, [])
        result["choices"] = [choice]
        result["usage"] = _usage(record.messages, len(texts) + len(calls))
        record.chunks_sent = len(texts) + len(calls)
        record.outcome = "done"
        return JSONResponse(result)

    async def _transcriptions(self, request: Request) -> Response:
        record = TranscriptionRequest()
        self.transcription_requests.append(record)
        response = await self._transcription_response(request, record)
        record.status = response.status_code
        return response

    async def _transcription_response(
        self, request: Request, record: TranscriptionRequest
    ) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return _error(
                400,
                f"Invalid Content-Type header ({content_type or 'none'}), expected "
                "multipart/form-data.",
            )
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception as exc:
            return _error(400, f"Could not parse multipart form: {exc}")
        try:
            for name, value in form.multi_items():
                if isinstance(value, str):
                    record.fields.setdefault(name, []).append(value)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _error(400, "Missing required parameter: 'file'.", param="file")
            record.filename, record.file_type = upload.filename, upload.content_type
            data = await upload.read()
        finally:
            await form.close()
        return await self._transcribe_upload(record, data)

    async def _transcribe_upload(self, record: TranscriptionRequest, data: bytes) -> Response:
        fields = {name: values[-1] for name, values in record.fields.items()}
        model = fields.get("model", "")
        if not model:
            return _error(400, "Missing required parameter: 'model'.", param="model")
        if model not in self.stt_models:
            return _error(
                404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )
        response_format = fields.get("response_format", "json")
        if response_format not in FORMATS:
            return _error(
                400,
                f"Invalid value: '{response_format}'. This emulator answers {', '.join(FORMATS)}.",
                param="response_format",
            )
        granularities = record.fields.get("timestamp_granularities[]", [])
        if any(g not in ("word", "segment") for g in granularities):
            return _error(
                400,
                "timestamp_granularities must be word or segment",
                param="timestamp_granularities",
            )
        if granularities and response_format != "verbose_json":
            return _error(
                400,
                "timestamp_granularities is only supported with response_format=verbose_json",
                param="timestamp_granularities",
            )
        language = fields.get("language") or None
        if language is not None and not (len(language) == 2 and language.isalpha()):
            return _error(
                400,
                f"Invalid language '{language}'. Language parameter must be specified in "
                "ISO-639-1 format.",
                param="language",
            )
        if fields.get("stream", "false").lower() == "true":
            return _error(400, f"Streaming is not supported for the {model} model.", param="stream")
        try:
            samples = await asyncio.to_thread(decode_bytes, data, RATE)
        except Exception:
            return _error(400, f"Invalid file format. Supported formats: {AUDIO_FORMATS}")
        record.audio_s = samples.size / RATE
        if record.audio_s < MIN_AUDIO_S:
            return _error(
                400, f"Audio file is too short. Minimum audio length is {MIN_AUDIO_S} seconds."
            )
        result = await self._transcribe(to_float(samples), language, "word" in granularities)
        record.text = result.text
        if response_format == "text":
            return PlainTextResponse(result.text + "\n")
        if response_format == "json":
            return JSONResponse({"text": result.text})
        return JSONResponse(self._verbose(result, record.audio_s, granularities))

    def _verbose(
        self, result: _Transcribed, duration: float, granularities: list[str]
    ) -> dict[str, Any]:
        openai = self.flavour == "openai"
        words = [dict(w) for w in result.words]
        segments = [dict(s) for s in result.segments]
        for word in words if openai else ():
            word.pop("probability", None)  # OpenAI's words carry no probability
        for segment in segments:
            if openai:
                segment.pop("words", None)
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": LANGUAGE_NAMES.get(result.language, result.language)
            if openai
            else result.language,
            "duration": round(duration, 2),
            "text": result.text,
        }
        if not openai or "segment" in granularities or not granularities:
            body["segments"] = segments
        if "word" in granularities:
            body["words"] = words
        return body

    async def _transcribe(
        self, audio: np.ndarray, language: str | None, words: bool
    ) -> _Transcribed:
        if self.whisper is not None:
            return await asyncio.to_thread(_whisper, self.whisper, audio, language, words)
        scripted = self.transcript
        text = scripted if isinstance(scripted, str) else scripted(audio, language)
        return _scripted(text, language or "en", len(audio) / RATE)

    def _denied(self, request: Request) -> Response | None:
        """OpenAI's 401s: no key at all, or a wrong one (its ends shown, the middle masked)."""
        if not self.api_key:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if given.strip() != self.api_key:
            masked = given[:3] + "*" * max(len(given) - 7, 0) + given[-4:]
            return _error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None


def check_messages(messages: Any) -> tuple[str, str] | None:
    """What OpenAI says of a bad `messages` (text, param), or None: each tool call needs an id,
    `type: function` and its arguments as JSON text, and every call needs its result next."""
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': expected an array with minimum length 1.", "messages"
    pending: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            return f"Invalid value: '{role}'. Supported values are: {ROLES}.", f"{where}.role"
        role = message["role"]
        if pending and role != "tool":
            return _unanswered(pending), "messages"
        if role == "tool":
            answered = message.get("tool_call_id")
            if not answered:
                return f"Missing required parameter: '{where}.tool_call_id'.", where
            if answered not in pending:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"{where}.role",
                )
            pending.remove(answered)
        elif role == "assistant" and message.get("tool_calls"):
            for j, call in enumerate(message["tool_calls"]):
                problem = _check_call(call, f"{where}.tool_calls[{j}]")
                if problem is not None:
                    return problem
                pending.append(call["id"])
        elif message.get("content") is None:
            return f"Missing required parameter: '{where}.content'.", f"{where}.content"
    if pending:
        return _unanswered(pending), "messages"
    return None


def _check_call(call: Any, where: str) -> tuple[str, str] | None:
    if not isinstance(call, dict) or not call.get("id"):
        return f"Missing required parameter: '{where}.id'.", f"{where}.id"
    if call.get("type") != "function":
        return f"Missing required parameter: '{where}.type'.", f"{where}.type"
    function = call.get("function")
    if not isinstance(function, dict) or not function.get("name"):
        return f"Missing required parameter: '{where}.function.name'.", f"{where}.function"
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        kind = "an object" if isinstance(arguments, dict) else type(arguments).__name__
        return (
            f"Invalid type for '{where}.function.arguments': expected a string, but got {kind} "
            "instead.",
            f"{where}.function.arguments",
        )
    return None


def _unanswered(pending: list[str]) -> str:
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(pending)
    )


def check_tools(tools: Any) -> tuple[str, str] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "Invalid type for 'tools': expected an array.", "tools"
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return f"Missing required parameter: 'tools[{i}].type'.", f"tools[{i}].type"
        if not isinstance(function, dict) or not function.get("name"):
            return f"Missing required parameter: 'tools[{i}].function.name'.", f"tools[{i}]"
    return None


def _script(reply: Any) -> tuple[list[str], list[_Call]]:
    """A scripted reply's text pieces and its tool calls (arguments as JSON text)."""
    items = [reply] if isinstance(reply, str | Mapping) or hasattr(reply, "name") else list(reply)
    texts: list[str] = []
    calls: list[_Call] = []
    for item in items:
        if isinstance(item, str):
            texts += split_pieces(item)
            continue
        calls.append(_scripted_call(item))
    return texts, calls


def _scripted_call(item: Any) -> _Call:
    """A `tool_call(...)` dict or a ToolCall-like object, with its arguments as JSON text."""
    get = item.get if isinstance(item, Mapping) else lambda key: getattr(item, key, None)
    arguments = get("arguments")
    # A string is sent as it is, to play a model that writes broken JSON.
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return _Call(str(get("id") or f"call_{uuid.uuid4().hex[:24]}"), str(get("name")), text)


def _whisper(model: Any, audio: np.ndarray, language: str | None, words: bool) -> _Transcribed:
    """A real transcription, as faster-whisper-server makes it (greedy here: 2 shared cores)."""
    found, info = model.transcribe(
        audio, language=language, beam_size=1, word_timestamps=words, vad_filter=False
    )
    segments = []
    for index, s in enumerate(found):
        segments.append(
            {
                "id": index,
                "seek": s.seek,
                "start": round(s.start, 2),
                "end": round(s.end, 2),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
                "words": [
                    {
                        "word": w.word,
                        "start": round(w.start, 2),
                        "end": round(w.end, 2),
                        "probability": w.probability,
                    }
                    for w in s.words or ()
                ],
            }
        )
    text = "".join(s["text"] for s in segments).strip()
    all_words = [w for s in segments for w in s["words"]]
    return _Transcribed(text, info.language, segments, all_words)


def _scripted(text: str, language: str, duration: float) -> _Transcribed:
    """A scripted answer shaped like a real one: one segment, words spread over the audio."""
    if not text.strip():
        return _Transcribed("", language, [], [])
    spoken = text.split()
    step = duration / len(spoken)
    words = [
        {
            "word": f" {word}",
            "start": round(i * step, 2),
            "end": round((i + 1) * step, 2),
            "probability": 0.9,
        }
        for i, word in enumerate(spoken)
    ]
    segment = {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": round(duration, 2),
        "text": f" {text.strip()}",
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": -0.2,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.01,
        "words": words,
    }
    return _Transcribed(text.strip(), language, [segment], words)


def _head(
    completion_id: str, created: int, model: str, choices: list[Any], kind: str = ""
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk" if kind == "chunk" else "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_emulator",
        "choices": choices,
    }


def _usage(messages: list[dict[str, Any]], completion: int) -> dict[str, int]:
    prompt = sum(len(str(m.get("content") or "").split()) + 4 for m in messages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _event(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    return JSONResponse(_error_body(message, kind, param, code), status_code=status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a scripted OpenAI-compatible API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", help=f"chat model (default {DEFAULT_MODEL})")
    parser.add_argument("--reply", help="fixed reply text (default: a polite echo)")
    parser.add_argument("--api-key", default="", help="bearer key required; empty = none")
    parser.add_argument("--whisper", help="faster-whisper model to transcribe with (e.g. tiny.en)")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between pieces")
    parser.add_argument("--first-token-delay", type=float, default=0.2, help="seconds to first")
    args = parser.parse_args(argv)
    fixed: str | None = args.reply

    def fixed_reply(messages: list[dict[str, Any]]) -> str:
        return fixed or polite_echo(messages)

    whisper = None
    if args.whisper:
        from faster_whisper import WhisperModel

        whisper = WhisperModel(args.whisper, device="cpu", compute_type="int8")
    emulator = OpenAIEmulator(
        models=args.model or [DEFAULT_MODEL],
        reply=fixed_reply,
        whisper=whisper,
        api_key=args.api_key,
        token_delay_s=args.token_delay,
        first_token_delay_s=args.first_token_delay,
    )
    print(f"OpenAI-compatible emulator on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(emulator.app, host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
