"""The `voiceai` command: serve, check-config, simulate."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from pathlib import Path

from voiceai.config import Settings, SettingsError, load_settings

log = logging.getLogger("voiceai")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voiceai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="run the service (fork socket, REST API)")
    commands.add_parser("check-config", help="print the effective settings, secrets masked")

    sim = commands.add_parser("simulate", help="place a simulated call against a running service")
    sim.add_argument("wavs", nargs="+", type=Path, help="what the caller says, one file a turn")
    sim.add_argument("--url", help="service base URL (default: from VOICEAI_HOST/PORT)")
    sim.add_argument("--rate", default="16k", help="call sample rate: 8k or 16k")
    sim.add_argument("--frame-ms", type=int, default=20, choices=(20, 30))
    sim.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = flat out")
    sim.add_argument("--call-id", help="call id (default: a new uuid)")
    sim.add_argument("--gap-ms", type=int, default=1500, help="silence after each file")
    sim.add_argument("--out", type=Path, help="write the whole call (caller + bot) to this WAV")

    fs = commands.add_parser("check-freeswitch", help="check a FreeSWITCH config overlay")
    fs.add_argument("directory", type=Path, help="the overlay, e.g. freeswitch/conf")
    fs.add_argument("--env-file", type=Path, help="also check the values FreeSWITCH reads (.env)")

    args = parser.parse_args(argv)
    if args.command == "check-freeswitch":  # needs no service settings
        from voiceai.deploy.freeswitch_config import run

        return run(args.directory, args.env_file)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"voiceai: {exc}", file=sys.stderr)
        return 2

    if args.command == "check-config":
        from voiceai.logs import escape_controls

        for name, value in settings.masked().items():
            print(f"{name}={escape_controls(value)}")  # a multi-line prompt stays one line
        return 0
    if args.command == "serve":
        return serve(settings)
    from voiceai.sim.simulate import simulate

    return asyncio.run(simulate(settings, args))


def serve(settings: Settings) -> int:
    import uvicorn

    from voiceai.api.guards import http_server_options
    from voiceai.app import create_app
    from voiceai.logs import configure_logging
    from voiceai.preflight import check_startup

    configure_logging(settings.log_level, settings.secret_values())
    try:  # before any model loads: one line naming the setting, not the app's traceback
        check_startup(settings)
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    host = settings.host
    if not settings.api_token.get_secret_value() and not _is_loopback(host):
        log.warning("no VOICEAI_API_TOKEN set: listening on 127.0.0.1 only, not %s", host)
        host = "127.0.0.1"
    try:
        app = create_app(settings)
        uvicorn.run(
            app,
            host=host,
            port=settings.port,
            log_config=None,
            ws_max_size=1024 * 1024,  # the fork endpoint refuses frames over 64 KiB anyway
            ws_ping_interval=None,  # mod_audio_fork does not answer pings reliably
            **http_server_options(),  # bounded, timed request heads
        )
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
