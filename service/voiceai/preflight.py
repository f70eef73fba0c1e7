"""Start-up checks of the settings only the machine can judge (the database answers, the media
folder is writable, the speech model is there), run before any model loads: each failure is
one SettingsError naming the setting and the fix, instead of a traceback from the app's start."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from voiceai.config import Settings, SettingsError

DATABASE_TIMEOUT_S = 15.0


def check_startup(settings: Settings) -> None:
    check_media_dir(settings.media_dir)
    check_database(settings.database_url)
    if settings.stt_engine == "whisper":  # a transcription server has its own model
        check_stt_model(settings.stt_model)
    check_agents(settings)


def check_media_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise SettingsError(
            f"invalid setting VOICEAI_MEDIA_DIR: cannot write to {str(path)!r} "
            f"({exc.strerror or exc}); make it a folder this user can write, or point "
            "VOICEAI_MEDIA_DIR elsewhere"
        ) from None


def check_database(url: str) -> None:
    """Opens one connection (with the driver it needs); the error never shows the password."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    parsed = make_url(url)
    setting = "invalid setting VOICEAI_DATABASE_URL"
    try:
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed)
    except ImportError as exc:
        raise SettingsError(
            f"{setting}: its driver ({exc.name or parsed.drivername}) is not installed; "
            "install it or use another URL"
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"{setting}: cannot create the folder of {parsed.database!r} ({exc.strerror or exc}); "
            "use a path this user can write"
        ) from None

    def connect() -> None:
        with engine.connect():
            pass

    try:
        _within(DATABASE_TIMEOUT_S, connect)
    except TimeoutError:
        raise SettingsError(
            f"{setting}: the database did not answer within {DATABASE_TIMEOUT_S:.0f} s; "
            "check the host and port"
        ) from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SettingsError(
            f"{setting}: cannot open the database ({reason}); check that it exists and that "
            "this user (or the URL's user and password) may open it"
        ) from None
    finally:
        engine.dispose()


def check_stt_model(name: str) -> None:
    """The model is a directory holding model.bin, or a hub model that is downloaded (or can
    be: online, the app downloads it when it starts)."""
    from voiceai.engines.stt import resolve_model

    resolved = resolve_model(name)
    fix = "set it to auto, a model name (tiny, base, small...) or a faster-whisper model folder"
    path = Path(resolved).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise SettingsError(
                f"invalid setting VOICEAI_STT_MODEL: {resolved!r} holds no model.bin; {fix}"
            )
        return
    looks_like_path = resolved.startswith((".", "/", "~")) or path.is_absolute()
    if looks_like_path:
        raise SettingsError(f"invalid setting VOICEAI_STT_MODEL: no folder {resolved!r}; {fix}")
    import huggingface_hub
    from faster_whisper.utils import available_models, download_model

    if "/" not in resolved and resolved not in available_models():  # nor an owner/name hub id
        raise SettingsError(f"invalid setting VOICEAI_STT_MODEL: unknown model {resolved!r}; {fix}")
    try:
        download_model(resolved, local_files_only=True)
    except Exception:  # not downloaded
        if huggingface_hub.is_offline_mode():
            raise SettingsError(
                f"invalid setting VOICEAI_STT_MODEL: {resolved!r} is not downloaded and "
                f"HF_HUB_OFFLINE is set; download it first, or {fix}"
            ) from None


def check_agents(settings: Settings) -> None:
    """VOICEAI_TOOLS_FILE and VOICEAI_AGENTS_FILE load: their errors name the file and entry."""
    from voiceai.agents import load_configured_agents

    load_configured_agents(settings)  # ToolsFileError, AgentsFileError: SettingsErrors


def _within(seconds: float, work: Callable[[], None]) -> None:
    """Runs blocking `work` on a daemon thread: a database that never answers cannot hold the
    process at exit."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="preflight", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if failure:
        raise failure[0]
