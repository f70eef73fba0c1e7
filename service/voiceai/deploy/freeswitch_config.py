"""Offline checks of the FreeSWITCH configuration overlay (freeswitch/conf) and its environment.

No FreeSWITCH runs where this project is built, so these checks stand in for its start-up: every
file parses as XML and survives FreeSWITCH's line-based preprocessor, the RingCentral gateway
has what registration needs, the fork command carries what mod_audio_fork requires, every
gateway, context and ACL a file names exists, every file under conf_dir a file names is in the
overlay (sounds as 16-bit mono PCM WAV), every loaded module that reads a configuration has it,
and no password is left in a file.
`voiceai check-freeswitch DIR [--env-file .env]` runs them; so does `python -m` on this module.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import wave
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Variables FreeSWITCH sets itself before it reads its configuration.
CORE_VARS = frozenset(
    [
        "hostname",
        "local_ip_v4",
        "local_mask_v4",
        "local_ip_v6",
        "switch_serial",
        "base_dir",
        "recordings_dir",
        "sound_prefix",
        "sounds_dir",
        "conf_dir",
        "log_dir",
        "run_dir",
        "db_dir",
        "mod_dir",
        "htdocs_dir",
        "script_dir",
        "temp_dir",
        "grammar_dir",
        "certs_dir",
        "storage_dir",
        "cache_dir",
        "data_dir",
        "localstate_dir",
        "fonts_dir",
        "images_dir",
        "core_uuid",
        "nat_public_addr",
        "nat_private_addr",
        "nat_type",
        "zrtp_enabled",
    ]
)
BUILTIN_ACLS = frozenset(
    [
        "loopback.auto",
        "localnet.auto",
        "rfc1918.auto",
        "lan.auto",
        "nat.auto",
        "wan.auto",
        "wan_v4.auto",
        "wan_v6.auto",
        "any_v4.auto",
        "any_v6.auto",
        "rfc6598.auto",
    ]
)
GATEWAY_PARAMS = (
    "username",
    "auth-username",
    "password",
    "realm",
    "from-domain",
    "proxy",
    "register",
    "expire-seconds",
    "retry-seconds",
    "ping",
)
FORK_RATES = frozenset({"8k", "16k", "8000", "16000"})
FORK_MIXES = frozenset({"mono", "mixed", "stereo"})
MAX_METADATA = 8192  # mod_audio_fork ignores longer metadata
MAX_CIDRS = 32  # FreeSWITCH reads at most 32 entries of a comma-separated cidr list
DEFAULT_PASSWORD = "cluecon"
# Modules of modules.conf that log "Opening of <name> failed" at start without their configuration.
MODULE_CONFIGS = {
    "mod_console": "console.conf",
    "mod_logfile": "logfile.conf",
    "mod_event_socket": "event_socket.conf",
    "mod_sofia": "sofia.conf",
    "mod_opus": "opus.conf",
}
# record_session (uuid_record) holds back this many 20 ms frames before it writes any,
# 25 when unset: the caller can then be heard up to 0.5 s late against the bot.
MAX_RECORD_PRE_BUFFER_FRAMES = 5
# Channel variables whose value the caller (or the far end) chooses.
CALLER_CONTROLLED = re.compile(
    r"\$\{(caller_id_name|caller_id_number|effective_caller_id_name|effective_caller_id_number"
    r"|ani|aniii|sip_from_\w+|sip_to_\w+|sip_req_\w+|sip_contact_\w+|sip_h_\w+|sip_i_\w+"
    r"|sip_user_agent|sip_call_id|destination_number)\}"
)

_VAR_REF = re.compile(r"\$\$\{([^}]*)\}")
_ONLY_VAR = re.compile(r"^\$\$\{([A-Za-z0-9_.-]+)\}$")
_PREPROCESS = re.compile(r"<x-pre-process\b", re.IGNORECASE)
_PREPROCESS_LINE = re.compile(
    r'^\s*<X-PRE-PROCESS\s+cmd="([^"]*)"\s+data="([^"]*)"\s*/>\s*$', re.IGNORECASE
)
_PREPROCESS_TAG = re.compile(r'<X-PRE-PROCESS\s+cmd="([^"]*)"\s+data="([^"]*)"', re.IGNORECASE)
_PREPROCESS_CMDS = frozenset({"set", "env-set", "exec-set", "stun-set", "include", "exec"})
_ENV_SET = re.compile(r"^([A-Za-z0-9_.-]+)=\$([A-Za-z_][A-Za-z0-9_]*)$")
_SET = re.compile(r"^\s*([A-Za-z0-9_.-]+?)\s*=\s*(.*?)\s*$")
_GATEWAY_REF = re.compile(r"sofia/gateway/([^/\s]+)/")
_CONF_FILE_REF = re.compile(r"\$\$\{conf_dir\}/([^\s\"'<>()!;,]+)")


@dataclass
class _File:
    name: str  # path relative to the checked directory: what problems are reported against
    text: str
    root: ET.Element | None


@dataclass
class _Names:
    """The gateways, ACLs and dialplan contexts the files define."""

    gateways: set[str]
    acls: set[str]
    contexts: set[str]
    complete: bool

    def missing(self, kind: str, name: str) -> bool:
        return self.complete and name not in getattr(self, kind)


@dataclass
class _Vars:
    """What FreeSWITCH's preprocessor would define, with the defaults the files commit to."""

    defaults: dict[str, str] = field(default_factory=dict)
    from_env: dict[str, str] = field(default_factory=dict)  # name -> environment variable
    from_exec: dict[str, str] = field(default_factory=dict)  # name -> shell command

    def defined(self, name: str) -> bool:
        sources = (self.defaults, self.from_env, self.from_exec, CORE_VARS)
        return any(name in source for source in sources)

    def resolve(self, text: str, depth: int = 0) -> str:
        """`text` with $${...} replaced by defaults; a value only known at run time stays <name>."""

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.defaults and depth < 10:
                return self.resolve(self.defaults[name], depth + 1)
            return f"<{name}>"

        return _VAR_REF.sub(one, text)


def check_freeswitch(directory: Path) -> list[str]:
    """Every problem found in the FreeSWITCH XML under `directory`, one line each, naming the
    file. An empty list means the configuration passed."""
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory}: not a directory"]
    paths = sorted(directory.rglob("*.xml"))
    if not paths:
        return [f"{directory}: no .xml files"]
    problems: list[str] = []
    files: list[_File] = []
    for path in paths:
        name = path.relative_to(directory).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        problems += [f"{name}:{line}: {msg}" for line, msg in _preprocessor_problems(text)]
        try:
            root: ET.Element | None = ET.fromstring(text)
        except ET.ParseError as exc:
            problems.append(f"{name}: not well-formed XML ({exc})")
            root = None
        files.append(_File(name, text, root))

    variables = _collect_vars(files)
    problems += _undefined_vars(files, variables)
    problems += _conf_files(directory, files)
    names = _Names(
        gateways=_check_gateways(files, variables, problems),
        acls=_check_acls(files, variables, problems) | BUILTIN_ACLS,
        contexts={
            str(c.get("name")) for f in files if f.root is not None for c in f.root.iter("context")
        },
        # A file that does not parse hides the names it defines: "not defined" would mislead.
        complete=all(f.root is not None for f in files),
    )
    _check_profiles(files, variables, names, problems)
    _check_event_socket(files, variables, names, problems)
    _check_passwords(files, variables, problems)
    _check_dialplan(files, variables, names, problems)
    problems += _module_configs(files)
    if names.contexts and names.complete:
        problems += _record_pre_buffer(files, variables)
    return list(dict.fromkeys(problems))


# --- the preprocessor ----------------------------------------------------------------------


def _preprocessor_problems(text: str) -> Iterator[tuple[int, str]]:
    """FreeSWITCH preprocesses line by line before any XML parser sees the file."""
    comments = [(m.start(), m.end()) for m in re.finditer(r"<!--.*?-->", text, re.S)]
    offset = 0
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(line)
        stripped = line.strip()
        for tag in ("<include>", "</include>"):
            if tag in line and stripped != tag:
                yield number, f"{tag} must be alone on its line (the preprocessor drops the line)"
        found = _PREPROCESS.search(line)
        if found is None:
            continue
        at = start + found.start()
        if any(a <= at < b for a, b in comments):
            yield number, "an X-PRE-PROCESS tag in a comment still runs: delete the line"
            continue
        match = _PREPROCESS_LINE.match(line)
        if match is None:
            yield (
                number,
                (
                    'an X-PRE-PROCESS tag must be alone on its line as <X-PRE-PROCESS cmd="…" '
                    'data="…"/> (the preprocessor drops the rest of the line)'
                ),
            )
            continue
        cmd, data = match.group(1).lower(), match.group(2)
        if cmd not in _PREPROCESS_CMDS:
            yield number, f"unknown preprocessor command {cmd!r}"
        elif cmd == "env-set" and not _ENV_SET.match(data):
            yield number, f'env-set needs data="name=$ENV_NAME", not {data!r}'


def _preprocess_commands(files: Sequence[_File]) -> Iterator[tuple[_File, str, str]]:
    # Like FreeSWITCH: wherever the tag stands on a line, comments included.
    for f in files:
        for line in f.text.splitlines():
            match = _PREPROCESS_TAG.search(line)
            if match:
                yield f, match.group(1).lower(), match.group(2)


def _collect_vars(files: Sequence[_File]) -> _Vars:
    variables = _Vars()
    for _f, cmd, data in _preprocess_commands(files):
        if cmd == "set" and (match := _SET.match(data)):
            variables.defaults[match.group(1)] = match.group(2)
        elif cmd == "env-set" and (match := _ENV_SET.match(data)):
            variables.from_env[match.group(1)] = match.group(2)
        elif cmd in ("exec-set", "stun-set") and (match := _SET.match(data)):
            variables.from_exec[match.group(1)] = match.group(2)
    return variables


def _undefined_vars(files: Sequence[_File], variables: _Vars) -> Iterator[str]:
    # The preprocessor expands $${...} everywhere, comments included.
    for f in files:
        for number, line in enumerate(f.text.splitlines(), start=1):
            for match in _VAR_REF.finditer(line):
                if not variables.defined(match.group(1)):
                    yield f"{f.name}:{number}: $${{{match.group(1)}}} is never set"


def _conf_files(directory: Path, files: Sequence[_File]) -> Iterator[str]:
    """A file named as $${conf_dir}/... (a script exec-set runs, a sound the dialplan plays)
    must be in the overlay, for it is what FreeSWITCH's conf_dir is."""
    conf = next((p.parent for p in sorted(directory.rglob("freeswitch.xml"))), directory)
    for f in files:
        for name in dict.fromkeys(_CONF_FILE_REF.findall(f.text)):
            path = conf / name
            if not path.is_file():
                yield f"{f.name}: names $${{conf_dir}}/{name}, which is not in {conf}"
            elif path.suffix.lower() == ".wav" and (problem := _wav_problem(path)):
                yield f"{f.name}: $${{conf_dir}}/{name} {problem}"


def _wav_problem(path: Path) -> str | None:
    """What stops FreeSWITCH playing `path` as a telephone prompt, if anything."""
    try:
        with wave.open(str(path), "rb") as sound:
            channels, width, frames = sound.getnchannels(), sound.getsampwidth(), sound.getnframes()
    except (OSError, EOFError, wave.Error) as exc:
        return f"is not a PCM WAV file ({exc})"
    if channels != 1 or width != 2:
        return f"must be 16-bit mono, not {8 * width}-bit with {channels} channels"
    return None if frames else "holds no audio"


# --- gateways, profiles, ACLs, event socket ------------------------------------------------


def _params(element: ET.Element) -> dict[str, str]:
    return {str(p.get("name")): str(p.get("value", "")) for p in element.findall("param")}


def _int(value: str) -> int | None:
    return int(value) if re.fullmatch(r"-?[0-9]+", value) else None


def _check_gateways(files: Sequence[_File], variables: _Vars, problems: list[str]) -> set[str]:
    names: set[str] = set()
    for f in files:
        for gateway in f.root.iter("gateway") if f.root is not None else ():
            name = str(gateway.get("name", ""))
            names.add(name)
            params = _params(gateway)
            label = f"{f.name}: gateway {name!r}"
            for required in GATEWAY_PARAMS:
                if not params.get(required, "").strip():
                    problems.append(f"{label} has no {required!r} param")
            if "register" in params and variables.resolve(params["register"]) != "true":
                problems.append(f"{label} must register (register=true) to receive calls")
            expire = _int(variables.resolve(params.get("expire-seconds", "")))
            if expire is not None and not 30 <= expire <= 600:
                problems.append(
                    f"{label}: expire-seconds={expire}; keep it 30..600, RingCentral stops "
                    "sending calls to idle registrations"
                )
            ping = _int(variables.resolve(params.get("ping", "")))
            if ping is not None and not 5 <= ping <= 120:
                problems.append(f"{label}: ping={ping}; an OPTIONS ping every 5..120 s is needed")
    return names


def _check_acls(files: Sequence[_File], variables: _Vars, problems: list[str]) -> set[str]:
    names: set[str] = set()
    for f in files:
        for acl in f.root.iter("list") if f.root is not None else ():
            nodes = acl.findall("node")
            if not nodes and acl.get("default") is None:
                continue
            names.add(str(acl.get("name", "")))
            for node in nodes:
                cidrs = variables.resolve(str(node.get("cidr", "")))
                if "<" in cidrs or not cidrs:
                    continue
                parts = [c.strip() for c in cidrs.split(",")]
                if len(parts) > MAX_CIDRS:
                    problems.append(
                        f"{f.name}: ACL {acl.get('name')!r} has {len(parts)} networks in one "
                        f"node; FreeSWITCH reads {MAX_CIDRS}"
                    )
                for part in parts:
                    try:
                        ipaddress.ip_network(part, strict=False)
                    except ValueError:
                        problems.append(f"{f.name}: ACL {acl.get('name')!r}: {part!r} is no CIDR")
    return names


def _acl_names(value: str) -> list[str]:
    return [n.strip().lstrip("!") for n in value.split(",") if n.strip()]


def _check_profiles(
    files: Sequence[_File], variables: _Vars, names: _Names, problems: list[str]
) -> None:
    for f in files:
        for profile in f.root.iter("profile") if f.root is not None else ():
            settings = profile.find("settings")
            params = _params(settings) if settings is not None else {}
            if "sip-port" not in params:
                continue  # not a SIP profile (mod_logfile has profiles too)
            label = f"{f.name}: SIP profile {profile.get('name')!r}"
            if params.get("rtp-timer-name") != "soft":
                problems.append(f"{label} needs rtp-timer-name=soft (no RTP clock otherwise)")
            for key in ("apply-inbound-acl", "apply-register-acl", "local-network-acl"):
                for acl in _acl_names(params.get(key, "")):
                    if names.missing("acls", acl):
                        problems.append(f"{label}: {key} names ACL {acl!r}, which is not defined")
            if params.get("auth-calls") == "false" and not params.get("apply-inbound-acl"):
                problems.append(f"{label} takes calls from anyone: auth-calls=false, no ACL")
            wanted = [params.get("context", "")]
            wanted += [_params(g).get("context", "") for g in profile.iter("gateway")]
            for context in filter(None, (variables.resolve(c) for c in wanted)):
                if names.missing("contexts", context):
                    problems.append(
                        f"{label} sends calls to context {context!r}, which no dialplan defines"
                    )


def _configurations(files: Sequence[_File], name: str) -> Iterator[tuple[_File, ET.Element]]:
    for f in files:
        for conf in f.root.iter("configuration") if f.root is not None else ():
            if conf.get("name") == name:
                yield f, conf


def _check_event_socket(
    files: Sequence[_File], variables: _Vars, names: _Names, problems: list[str]
) -> None:
    for f, conf in _configurations(files, "event_socket.conf"):
        settings = conf.find("settings")
        params = _params(settings) if settings is not None else {}
        label = f"{f.name}: event socket"
        password = params.get("password", "")
        var = _ONLY_VAR.match(password)
        if not password:
            problems.append(f"{label} has no password: mod_event_socket then uses ClueCon")
        elif var is None:
            problems.append(f"{label} password must be a $${{...}} variable from the environment")
        elif var.group(1) not in variables.from_exec and not variables.defaults.get(var.group(1)):
            problems.append(
                f"{label}: $${{{var.group(1)}}} can be empty, and an empty password becomes "
                "ClueCon (set it with exec-set through a guard like voiceai/esl-password.sh)"
            )
        acl_names = _acl_names(params.get("apply-inbound-acl", ""))
        if not acl_names:
            problems.append(f"{label} has no apply-inbound-acl: limit it to the service's network")
        for acl in acl_names:
            if names.missing("acls", acl):
                problems.append(f"{label}: apply-inbound-acl names ACL {acl!r}, not defined")
        if not params.get("listen-ip"):
            problems.append(f"{label} has no listen-ip")


def _check_passwords(files: Sequence[_File], variables: _Vars, problems: list[str]) -> None:
    password_vars: set[str] = set()
    for f in files:
        for element in f.root.iter() if f.root is not None else ():
            for value in element.attrib.values():
                if DEFAULT_PASSWORD in value.lower():
                    problems.append(f"{f.name}: FreeSWITCH's default password ClueCon is left in")
            name = str(element.get("name", "")).lower()
            if element.tag in ("param", "variable") and "password" in name:
                value = str(element.get("value", ""))
                var = _ONLY_VAR.match(value)
                if var:
                    password_vars.add(var.group(1))
                elif value:
                    problems.append(
                        f"{f.name}: {element.get('name')} has a literal value; passwords come "
                        "from the environment as $${...} variables"
                    )
    for _f, cmd, data in _preprocess_commands(files):
        match = _SET.match(data)
        if cmd == "set" and match and match.group(1) in password_vars and match.group(2):
            problems.append(f"{_f.name}: $${{{match.group(1)}}} has a committed default password")


def _module_configs(files: Sequence[_File]) -> Iterator[str]:
    roots = [f.root for f in files if f.root is not None]
    configured = {str(c.get("name")) for root in roots for c in root.iter("configuration")}
    for f, conf in _configurations(files, "modules.conf"):
        for load in conf.iter("load"):
            needed = MODULE_CONFIGS.get(str(load.get("module", "")))
            if needed and needed not in configured:
                yield (
                    f"{f.name}: loads {load.get('module')}, but no file configures {needed} "
                    f"(FreeSWITCH logs 'Opening of {needed} failed')"
                )


def _record_pre_buffer(files: Sequence[_File], variables: _Vars) -> Iterator[str]:
    """The service records calls with uuid_record; a global variable reaches every channel."""
    value = variables.defaults.get("RECORD_PRE_BUFFER_FRAMES")
    frames = _int(value) if value is not None else None
    if frames is not None and 1 <= frames <= MAX_RECORD_PRE_BUFFER_FRAMES:
        return
    where = [f.name for f, cmd, data in _preprocess_commands(files) if "RECORD_PRE_BUFFER" in data]
    where = where or [f.name for f in files if f.root is not None and _has(f.root, "context")]
    shown = value if value is not None else "unset (25)"
    yield (
        f"{', '.join(dict.fromkeys(where))}: RECORD_PRE_BUFFER_FRAMES={shown}; set it to "
        f"1..{MAX_RECORD_PRE_BUFFER_FRAMES} globally, or call recordings can hear the caller up "
        "to 0.5 s late against the bot"
    )


# --- the dialplan --------------------------------------------------------------------------


def _actions(extension: ET.Element) -> Iterator[tuple[str, str]]:
    for condition in extension.iter("condition"):
        for child in condition:
            if child.tag in ("action", "anti-action"):
                yield str(child.get("application", "")), str(child.get("data", ""))


def _check_dialplan(
    files: Sequence[_File], variables: _Vars, names: _Names, problems: list[str]
) -> None:
    forks = 0
    for f in files:
        for context in f.root.iter("context") if f.root is not None else ():
            for extension in context.findall("extension"):
                label = f"{f.name}: extension {extension.get('name')!r}"
                park_timeout = False
                for app, raw in _actions(extension):
                    data = variables.resolve(raw)
                    for gateway in _GATEWAY_REF.findall(data):
                        if names.missing("gateways", gateway):
                            problems.append(
                                f"{label} names gateway {gateway!r}, which no SIP profile defines"
                            )
                    target = _transfer_context(app, data)
                    if target and names.missing("contexts", target):
                        problems.append(f"{label}: {app} to context {target!r}, not defined")
                    if app == "set" and data.startswith("park_timeout="):
                        seconds = _int(data.split("=", 1)[1].split(":", 1)[0])
                        park_timeout = seconds is None or seconds > 0
                    if app == "park" and not park_timeout:
                        problems.append(
                            f"{label} parks without park_timeout: a call nobody takes would "
                            "wait forever"
                        )
                    if app == "set" and raw.startswith("MOD_AUDIO_BASIC_AUTH_PASSWORD="):
                        value = raw.split("=", 1)[1]
                        if value and not _ONLY_VAR.match(value):
                            problems.append(
                                f"{label}: the fork password must be a $${{...}} "
                                "variable from the environment"
                            )
                    for command in _fork_commands(raw):
                        if command.split()[1:2] == ["start"]:
                            forks += 1
                            problems += [
                                f"{label}: {m}" for m in _fork_problems(command, variables)
                            ]
    if forks == 0 and names.contexts and names.complete:
        dialplans = [f.name for f in files if f.root is not None and _has(f.root, "context")]
        problems.append(f"{', '.join(dialplans)}: no extension starts uuid_audio_fork … start")


def _has(root: ET.Element, tag: str) -> bool:
    return next(root.iter(tag), None) is not None


def _transfer_context(app: str, data: str) -> str | None:
    """The XML context a transfer-like application sends the call to, if it names one."""
    words = data.split()
    if app == "sched_transfer":
        words = words[1:]
    elif app == "transfer":
        words = [w for w in words if w not in ("-bleg", "-both")]
    elif app != "execute_extension":
        return None
    if len(words) >= 3 and words[1] == "XML":
        return words[2]
    return None


def _fork_commands(data: str) -> Iterator[str]:
    """The arguments of each uuid_audio_fork call in an action's data, in either form:
    `${uuid_audio_fork(ARGS)}` (API expansion) or `uuid_audio_fork ARGS` (api_on_answer)."""
    for match in re.finditer(r"uuid_audio_fork(\(|\s+)", data):
        start = match.end()
        if match.group(1) != "(":
            yield data[start:]
            continue
        depth = 1
        for end in range(start, len(data)):
            depth += {"(": 1, ")": -1}.get(data[end], 0)
            if depth == 0:
                yield data[start:end]
                break
        else:
            yield data[start:]


def _fork_problems(command: str, variables: _Vars) -> Iterator[str]:
    words = command.split()
    if len(words) < 4:
        yield "uuid_audio_fork start needs a URL and mono|mixed|stereo"
        return
    url = variables.resolve(words[2])
    if "<" not in url.split("/fork")[0] and not re.match(r"^wss?://", url):
        yield f"the fork URL {url!r} is not ws:// or wss://"
    if words[3] not in FORK_MIXES:
        yield f"the fork mix {words[3]!r} is not mono, mixed or stereo"
    rate = variables.resolve(words[4]) if len(words) > 4 else ""
    if re.fullmatch(r"[0-9]+k?", rate) and rate not in FORK_RATES:
        yield f"the fork's sample rate {rate!r} is not 8k or 16k"
        return
    if rate not in FORK_RATES:
        yield "the fork has no sample rate (8k or 16k) after the mix: FreeSWITCH 1.10 crashes"
        return
    if len(words) < 6 or words[5].startswith(("{", "[")):
        yield "the fork has no bug name (e.g. voiceai) before its metadata"
        return
    if len(words) > 7:
        yield "the fork metadata contains spaces: mod_audio_fork splits it into pieces"
        return
    if len(words) == 7:
        yield from _metadata_problems(words[6], variables)


def _metadata_problems(metadata: str, variables: _Vars) -> Iterator[str]:
    if not metadata.startswith(("{", "[")):
        yield "the fork metadata must be JSON starting with { or ["
    if "'" in metadata:
        yield "the fork metadata contains an apostrophe: mod_audio_fork strips it"
    for match in CALLER_CONTROLLED.finditer(metadata):
        yield (
            f"the fork metadata expands the caller-controlled {match.group(0)} as it is; "
            "reduce it with a regex first"
        )
    sample = re.sub(r"\$\{[^{}]*\}", "x", variables.resolve(metadata))
    if len(sample) > MAX_METADATA:
        yield f"the fork metadata is longer than {MAX_METADATA} bytes"
    try:
        parsed = json.loads(sample)
    except ValueError as exc:
        yield f"the fork metadata is not JSON ({exc})"
        return
    if isinstance(parsed, dict) and "switch" not in parsed:
        yield (
            'the fork metadata has no "switch" (e.g. "switch":"$${fs_switchname}"): a service '
            "serving several FreeSWITCH could not tell which one the call is on"
        )


# --- the environment FreeSWITCH reads ------------------------------------------------------

_XML_UNSAFE = re.compile(r"[\"'<>&\r\n]|\$\{")
_HOST = r"[A-Za-z0-9.-]+"
_ESL_PASSWORD = re.compile(r"^[A-Za-z0-9._~+=:@%^*,/-]+$")


def _match(pattern: str, hint: str) -> Callable[[str], str | None]:
    regex = re.compile(pattern)
    return lambda value: None if regex.fullmatch(value) else hint


def _port(value: str) -> str | None:
    port = _int(value)
    return None if port is not None and 1 <= port <= 65535 else "must be a port, 1..65535"


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address"
    return None


def _ext_ip(value: str) -> str | None:
    if value in ("auto", "auto-nat") or re.fullmatch(rf"(stun|host):{_HOST}(:[0-9]+)?", value):
        return None
    return None if _ip(value) is None else "must be an IP, auto, stun:host[:port] or host:name"


def _cidrs(value: str) -> str | None:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) > MAX_CIDRS:
        return f"has {len(parts)} networks; FreeSWITCH reads at most {MAX_CIDRS}"
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            return f"{part!r} is not a network (a.b.c.d/n)"
    return None


def _between(low: int, high: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        number = _int(value)
        return None if number is not None and low <= number <= high else f"must be {low}..{high}"

    return check


def _esl_password(value: str) -> str | None:
    if value.lower() == DEFAULT_PASSWORD:
        return "is FreeSWITCH's public default: choose another (e.g. openssl rand -hex 24)"
    if not _ESL_PASSWORD.fullmatch(value):
        return "may use only letters, digits and ._~+=:@%^*,/- (e.g. openssl rand -hex 24)"
    return None


def _absolute(value: str) -> str | None:
    return None if value.startswith("/") else "must be an absolute path FreeSWITCH can read"


# Every environment variable voiceai_vars.xml reads, with what its value must look like.
FREESWITCH_ENV: dict[str, Callable[[str], str | None]] = {
    "RC_USERNAME": _match(r"[0-9]{4,15}", "must be the device's phone number, digits only"),
    "RC_AUTH_ID": _match(r"[A-Za-z0-9]{1,40}", "must be the device's authorization id"),
    "RC_PASSWORD": _match(r"\S+", "must not be empty or contain spaces"),
    "RC_DOMAIN": _match(_HOST, "must be a host name (sip.ringcentral.com)"),
    "RC_PROXY": _match(
        rf"{_HOST}(:[0-9]{{1,5}})?", "must be host:port, e.g. sip10.ringcentral.com:5090"
    ),
    "RC_TRANSPORT": _match(r"udp|tcp|tls", "must be udp, tcp or tls"),
    "RC_SRTP": _match(
        r"(forbidden|optional|mandatory|true|false)(:[A-Z0-9_:]+)?",
        "must be forbidden, optional or mandatory[:SUITE]",
    ),
    "FS_DID": _match(r"[0-9]{0,20}", "must be digits (a number or an extension), or empty"),
    "FS_SIP_IP": _ip,
    "FS_SIP_PORT": _port,
    "FS_TLS": _match(r"true|false", "must be true or false"),
    "FS_TLS_PORT": _port,
    "FS_EXT_SIP_IP": _ext_ip,
    "FS_EXT_RTP_IP": _ext_ip,
    "FS_RTP_START_PORT": _port,
    "FS_RTP_END_PORT": _port,
    "FS_CODECS": _match(r"[A-Za-z0-9@.-]+(,[A-Za-z0-9@.-]+)*", "must be a comma list of codecs"),
    "FS_SIP_ALLOW_CIDRS": _cidrs,
    "FS_SWITCHNAME": _match(
        r"[A-Za-z0-9._-]{1,64}", "must be letters, digits, . _ - (at most 64), e.g. fs1"
    ),
    "FS_ESL_LISTEN_IP": _ip,
    "FS_ESL_ALLOW_CIDRS": _cidrs,
    "VOICEAI_ESL_PORT": _port,
    "VOICEAI_ESL_PASSWORD": _esl_password,
    "FS_FORK_URL": _match(
        r"wss?://[^\s/'\"]+(/[^\s'\"]*[^/\s'\"])?", "must be ws://host:port (no trailing /)"
    ),
    "FS_FORK_RATE": _match(r"8k|16k", "must be 8k or 16k"),
    "VOICEAI_FORK_USER": _match(r"[^\s:$]*", "must not contain spaces, : or $"),
    "VOICEAI_FORK_PASSWORD": _match(r"[^\s$]*", "must not contain spaces or $"),
    "FS_TAKE_TIMEOUT": _between(2, 120),
    "FS_MAX_CALL_SECONDS": _between(60, 86400),
    "VOICEAI_FALLBACK_NUMBER": _match(r"(\+?[0-9]{2,20})?", "must be digits (+ allowed), or empty"),
    "VOICEAI_MEDIA_DIR": _absolute,
    "FS_LOG_LEVEL": _match(
        r"debug|info|notice|warning|err|crit|alert", "must be a FreeSWITCH log level"
    ),
}
REQUIRED_ENV = ("RC_USERNAME", "RC_AUTH_ID", "RC_PASSWORD", "VOICEAI_ESL_PASSWORD")
# May be set to nothing; every other name set to nothing would replace its default with "".
EMPTY_OK = frozenset({"VOICEAI_FORK_USER", "VOICEAI_FORK_PASSWORD", "VOICEAI_FALLBACK_NUMBER"})


def check_environment(env: Mapping[str, str]) -> list[str]:
    """Problems with the values FreeSWITCH will read from `env` (an .env file's or the process's
    environment), one line each naming the variable. Secrets are never echoed."""
    problems = [f"{name} is not set" for name in REQUIRED_ENV if not env.get(name)]
    for name, check in FREESWITCH_ENV.items():
        value = env.get(name)
        if value == "" and name not in EMPTY_OK and name not in REQUIRED_ENV:
            problems.append(
                f"{name} is empty: FreeSWITCH would use that; delete it for the default"
            )
        if not value:
            continue
        if _XML_UNSAFE.search(value):
            problems.append(f"{name} contains \" ' < > & or ${{, which break FreeSWITCH's XML")
        elif hint := check(value):
            problems.append(f"{name} {hint}")
    transport = env.get("RC_TRANSPORT") or "udp"
    port = (env.get("RC_PROXY") or "").rpartition(":")[2]
    if transport == "tls":
        if env.get("FS_TLS") != "true":
            problems.append("RC_TRANSPORT=tls needs FS_TLS=true")
        if not (env.get("RC_SRTP") or "").startswith(("mandatory", "true")):
            problems.append("RC_TRANSPORT=tls needs RC_SRTP=mandatory (RingCentral: 488)")
        if port and port != "5096":
            problems.append("RC_TRANSPORT=tls: RingCentral's TLS proxy port is 5096")
    elif port == "5096":
        problems.append(f"RC_PROXY uses the TLS port 5096 but RC_TRANSPORT={transport}")
    start, end = _int(env.get("FS_RTP_START_PORT", "")), _int(env.get("FS_RTP_END_PORT", ""))
    if start is not None and end is not None and start >= end:
        problems.append("FS_RTP_START_PORT must be below FS_RTP_END_PORT")
    if env.get("VOICEAI_FORK_PASSWORD") and not env.get("VOICEAI_FORK_USER"):
        problems.append("VOICEAI_FORK_PASSWORD is set without VOICEAI_FORK_USER: set both")
    return problems


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as Docker Compose reads an .env file (comments, quotes, `export `)."""
    values: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def run(directory: Path, env_file: Path | None = None) -> int:
    """Print the problems (or that there are none); 0 when there are none, 1 otherwise."""
    problems = check_freeswitch(directory)
    if env_file is not None:
        if Path(env_file).is_file():
            problems += [f"{env_file}: {p}" for p in check_environment(read_env_file(env_file))]
        else:
            problems.append(f"{env_file}: no such file (copy .env.example and fill it in)")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in the FreeSWITCH configuration", file=sys.stderr)
        return 1
    checked = f"{directory}" + (f" and {env_file}" if env_file is not None else "")
    print(f"{checked}: the FreeSWITCH configuration passed every check")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="voiceai check-freeswitch", description="Check a FreeSWITCH configuration overlay."
    )
    parser.add_argument("directory", type=Path, help="the overlay, e.g. freeswitch/conf")
    parser.add_argument("--env-file", type=Path, help="also check its values, e.g. .env")
    args = parser.parse_args(argv)
    return run(args.directory, args.env_file)


if __name__ == "__main__":
    raise SystemExit(main())
