"""One frozen settings object, filled from defaults, a TOML file, `OMNI_*` variables and flags, in that order.

Each field documents itself (`help`), so `--help`, the start-up print-out and docs come from one place.
Built once in `__main__` and passed down explicitly: no globals.

Must not import: torch, the engine, sockets.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SECRET_FIELDS = frozenset({"token", "ice_server"})  # TURN URLs carry credentials
ICE_SCHEMES = ("stun", "stuns", "turn", "turns")


def _opt(default: Any, help: str, *, flag: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class Settings:
    # Serving.
    host: str = _opt("0.0.0.0", "Address to listen on (0.0.0.0: this machine's every address, for phones on the LAN).")
    port: int = _opt(8443, "Port for the page, the realtime API and health/metrics, all on https.")
    tls: bool = _opt(True, "Serve https/wss. Browsers only give camera and microphone to secure pages.")
    cert: str | None = _opt(None, "TLS certificate (PEM). Default: a self-signed one made in --ssl-dir.")
    key: str | None = _opt(None, "TLS private key (PEM) for --cert.")
    ssl_dir: str = _opt(str(PACKAGE_ROOT / "ssl"), "Where the self-signed certificate is kept.")
    token: str | None = _opt(None, "Access token required on every connection. Default: a random one per start.")
    no_auth: bool = _opt(False, "Switch the access token off. Anyone who can reach the port can use the model.")
    web_root: str = _opt(str(PACKAGE_ROOT / "web_client"), "Directory of the browser client.")
    event_loop: str = _opt(
        "auto", "asyncio, or uvloop (its sockets and TLS cost a call less CPU); auto: uvloop where it is installed."
    )
    ws_compression: bool = _opt(
        False,
        "Accept permessage-deflate on WebSockets: base64 reply audio a third smaller, for ~10 ms of the event "
        "loop's CPU per second of reply audio per call (the page's default path, WebRTC, sends Opus anyway).",
    )
    # Engine.
    engine: str = _opt(
        "auto",
        "auto (MiniCPM-o when a CUDA GPU, --model or --device says so, else the tiny engine), minicpmo, tiny, "
        "or null (no model at all, replies are one fixed sentence: for measuring the server alone).",
    )
    model: str = _opt(
        "",
        "Hub id or local directory of MiniCPM-o 2.6 (default openbmb/MiniCPM-o-2_6); naming one means the real model.",
    )
    device: str = _opt(
        "auto",
        "Device for the real model: auto (cuda, else mps, else cpu), cuda, mps or cpu; naming one means the real model.",
    )
    dtype: str = _opt("bf16", "Weights dtype for the real model: bf16, fp16 or fp32.")
    engine_cost: str = _opt("none", "Tiny and null engines: emulate the real model's speed (minicpmo-2.6, or k=v,...).")
    engine_faults: float = _opt(
        0.0, "Tiny engine, for tests: share of reply steps (0-1) that fail as the real model's text decoding can."
    )
    seed: int = _opt(0, "Tiny engine weight and sampling seed.")
    warm_up: bool = _opt(True, "Run one prefill and a short reply before saying ready.")
    # Conversations.
    max_sessions: int = _opt(8, "Concurrent calls one model serves; more callers wait in the queue.")
    max_queue: int = _opt(16, "Callers allowed to wait; beyond that new calls are refused.")
    max_new_tokens: int = _opt(256, "Longest reply, in LLM tokens.")
    max_prompt_tokens: int = _opt(
        2048, "Longest instructions a call may give (system prompt, instructions and persona), in LLM tokens."
    )
    max_context_tokens: int = _opt(8192, "Context the model was trained to; older turns are dropped beyond it.")
    max_call_s: float = _opt(1800.0, "Longest call, in seconds.")
    reply_lead_in_max_ms: int = _opt(
        350,
        "Longest start-up hold of a reply's first audio (0: none). The hold is learned from how the engine's "
        "chunks arrive (MiniCPM-o 2.6 at its published speed: ~0.15 s; the tiny engine: none), so the listener "
        "never runs dry after the first chunk.",
    )
    idle_timeout_s: float = _opt(120.0, "A call that sends no audio for this long is closed.")
    init_timeout_s: float = _opt(
        30.0, "Time a caller has after session.queue_done to send session.init (and its offer)."
    )
    # Capacity (docs/capacity.md): the KV memory budget admission counts against, besides max_sessions.
    kv_budget_gb: float = _opt(
        0.0,
        "Memory for conversations' KV caches in GB (0: no limit); each call reserves max_context_tokens × the "
        "engine's KV bytes per token (MiniCPM-o 2.6: 56 KiB, 0.47 GB at 8192 tokens).",
    )
    # Turn-taking (silero-vad).
    vad_threshold: float = _opt(0.5, "Speech probability that counts as speech.")
    vad_silence_ms: int = _opt(
        800, "Silence that ends the user's turn when the end-of-turn model does not (it is not sure, or is off)."
    )
    vad_min_speech_ms: int = _opt(200, "Speech shorter than this is ignored (clicks, coughs).")
    # Turn ends and speculation (docs/protocol.md, turn_detection).
    turn_model: bool = _opt(
        True, "Ask Smart Turn v3.2, after --turn-pause-ms of silence, whether the user has finished."
    )
    turn_model_threshold: float = _opt(
        0.5, "Smart Turn's probability of a finished utterance at or above which the turn ends at once."
    )
    turn_pause_ms: int = _opt(
        200, "Silence after which the end-of-turn model is asked (it is less accurate after shorter ones)."
    )
    speculate: bool = _opt(
        True,
        "Start the reply when speech pauses (--speculate-pause-ms), before the turn is confirmed, on spare model "
        "time only; if the user goes on it is dropped and the model state rolled back exactly.",
    )
    speculate_pause_ms: int = _opt(
        100,
        "Silence after which a reply is speculated, at most --turn-pause-ms: the sooner, the more of the reply is "
        "ready when the turn is confirmed. The turn's audio ends there, whichever rule then ends the turn.",
    )
    resume_window_ms: int = _opt(
        400,
        "A user who speaks again before the reply has played this long continues their turn: the reply is "
        "withdrawn (response.cancelled) and rolled back. 0: never.",
    )
    preroll_ms: int = _opt(500, "Audio kept from before speech starts, so the first syllable is not lost.")
    barge_in: bool = _opt(True, "Let the user interrupt a reply by speaking.")
    # Limits on what clients send.
    max_message_bytes: int = _opt(8 * 1024 * 1024, "Largest WebSocket message.")
    max_append_s: float = _opt(5.0, "Most audio one input.append may carry, in seconds.")
    max_input_burst_s: float = _opt(
        10.0, "Audio a call may send ahead of real time before pieces are refused (rate_limited); 0: no limit."
    )
    max_frame_bytes: int = _opt(2 * 1024 * 1024, "Largest camera frame (JPEG bytes).")
    max_frame_pixels: int = _opt(4096 * 2304, "Largest camera frame (pixels).")
    # WebRTC (the page's default media path; docs/webrtc.md).
    ice_server: tuple[str, ...] = _opt(
        (),
        "A STUN or TURN server the server and the page use for WebRTC; repeat for more. stun:HOST:PORT, or "
        "turn:USER:CREDENTIAL@HOST:PORT[?transport=tcp]. Default: none (host candidates: this machine or its LAN).",
    )
    webrtc_connect_timeout_s: float = _opt(15.0, "How long WebRTC may take to connect before the call is refused.")
    webrtc_ports: str = _opt(
        "",
        "UDP ports WebRTC media may use, LOW-HIGH (e.g. 50000-50100: one port per call per address, so at least "
        "--max-sessions of them). Default: any the OS gives (its ephemeral range).",
    )
    # Voice library: cloned voices, role-play characters, voice-cloning TTS (docs/voices.md).
    data_dir: str = _opt(
        str(PACKAGE_ROOT / "data"), "Where voices, characters and the user-id signing secret are kept."
    )
    max_voice_bytes: int = _opt(
        8 * 1024 * 1024, "Largest voice file to upload or record (at most --max-message-bytes)."
    )
    max_voice_input_s: float = _opt(120.0, "Longest voice file decoded; decoding stops there and the file is refused.")
    voice_decode_timeout_s: float = _opt(10.0, "Longest time spent decoding one voice file.")
    max_voices_per_user: int = _opt(20, "Voices one person may keep.")
    max_characters_per_user: int = _opt(50, "Role-play characters one person may keep.")
    max_library_bytes: int = _opt(500 * 1024 * 1024, "Disk the whole voice library may use.")
    # Cluster mode (issue 7): engine replicas on Ray Serve behind this process; see docs/cluster.md.
    cluster: str = _opt("", "Engines as Ray Serve replicas: auto (`ray start`'s cluster), local, or a Ray address.")
    replicas: int = _opt(2, "Cluster mode: engine replicas to deploy (each serves --max-sessions calls).")
    replica_gpus: float | None = _opt(None, "Cluster mode: GPUs per replica (default 1; 0 for the tiny engine).")
    replica_cpus: float = _opt(1.0, "Cluster mode: CPUs reserved per replica.")
    cluster_call_timeout_s: float = _opt(30.0, "Cluster mode: longest wait for one engine call (then engine_timeout).")
    cluster_reply_window: int = _opt(2, "Cluster mode: reply chunks requested ahead from a replica.")
    # Operations (issue 6): connection limits, slow clients, browser origins, shutdown.
    max_connections_per_ip: int = _opt(16, "Realtime connections one address may hold; more get HTTP 429.")
    allow_origin: str = _opt(
        "", "Other web origins whose pages may connect (comma-separated, e.g. https://app.example; * for any)."
    )
    send_timeout_s: float = _opt(10.0, "A client that stops reading for this long is disconnected (slow_client).")
    shutdown_grace_s: float = _opt(5.0, "On SIGTERM/SIGINT, how long calls get to end before they are cut.")
    # Logs.
    log_level: str = _opt("info", "debug, info, warning or error.")
    log_json: bool = _opt(False, "Log one JSON object per line.")
    config: str | None = _opt(None, "A TOML file with any of these settings (keys as here, with underscores).")

    def describe(self) -> list[str]:
        """`name = value` lines for the start-up print-out, secrets masked."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "****"
            lines.append(f"{f.name} = {value!r}")
        return lines


# The options that choose and shape the engine; tools other than the server (stream_file) take these.
ENGINE_FIELDS = (
    "engine",
    "model",
    "device",
    "dtype",
    "engine_cost",
    "engine_faults",
    "seed",
    "max_new_tokens",
    "config",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omni-server",
        description="Real-time voice and video assistant on MiniCPM-o 2.6. Every option can also be set as "
        "OMNI_<NAME> in the environment or in a TOML file given with --config.",
    )
    add_settings_arguments(parser)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser | Any, names: Sequence[str] | None = None) -> None:
    """Add a flag for each named `Settings` field (all by default) to `parser` or an argument group of it."""
    for f in dataclasses.fields(Settings):
        if names is not None and f.name not in names:
            continue
        name = "--" + f.name.replace("_", "-")
        kind = _kind(f)
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        elif kind is tuple:
            parser.add_argument(name, action="append", default=None, help=f.metadata["help"])
        else:
            parser.add_argument(name, type=kind, default=None, help=f"{f.metadata['help']} (default: {f.default})")


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> Settings:
    """Defaults, then the TOML file, then `OMNI_*` variables, then flags (`parser`'s, by default all of them)."""
    environ = os.environ if environ is None else environ
    names = {f.name for f in dataclasses.fields(Settings)}
    parsed = vars((parser or build_parser()).parse_args(argv))
    args = {k: v for k, v in parsed.items() if k in names}
    config_path = args.get("config") or environ.get("OMNI_CONFIG")
    values: dict[str, Any] = {}
    if config_path:
        values.update(_from_toml(Path(config_path)))
    for f in dataclasses.fields(Settings):
        env = environ.get("OMNI_" + f.name.upper())
        if env is not None:
            values[f.name] = _coerce(f, env, source=f"OMNI_{f.name.upper()}")
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if v is not None})
    return _validated(Settings(**values))


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SystemExit(f"Cannot read config file {path}: {e}") from e
    names = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise SystemExit(f"Unknown settings in {path}: {', '.join(unknown)}")
    return {k: _coerce(names[k], v, source=str(path)) for k, v in data.items()}


def _kind(f: dataclasses.Field[Any]) -> type:
    text = str(f.type)
    for kind in (bool, int, float, tuple):
        if text.startswith(kind.__name__):
            return kind
    return str


def _coerce(f: dataclasses.Field[Any], value: Any, *, source: str) -> Any:
    kind = _kind(f)
    try:
        if kind is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return lowered in ("1", "true", "yes", "on")
        if kind is tuple:  # a TOML list, or space-separated in an environment variable
            items = value.split() if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
                raise TypeError(value)
            return tuple(items)
        return kind(value)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{source}: {f.name} must be a {kind.__name__}, got {value!r}") from e


def _ice_server_ok(url: str) -> bool:
    """A STUN/TURN URL, with credentials (if any) as USER:CREDENTIAL@ before the host (docs/webrtc.md)."""
    scheme, _, rest = url.partition(":")
    userinfo, at, host = rest.rpartition("@")
    credentials_ok = not at or (":" in userinfo and not userinfo.startswith(":"))
    return scheme in ICE_SCHEMES and bool(host) and credentials_ok


def _port_range_ok(text: str) -> bool:
    """Empty (any port), or LOW-HIGH within 1024..65535 (transport/udp_ports.py applies it)."""
    if not text:
        return True
    low, dash, high = text.partition("-")
    if not (dash and low.isdigit() and high.isdigit()):
        return False
    return 1024 <= int(low) <= int(high) <= 65535


def _validated(s: Settings) -> Settings:
    checks = [
        (s.engine in ("auto", "minicpmo", "tiny", "null"), "engine must be auto, minicpmo, tiny or null"),
        (s.device in ("auto", "cuda", "mps", "cpu"), "device must be auto, cuda, mps or cpu"),
        (0.0 <= s.engine_faults <= 1.0, "engine_faults must be between 0 and 1"),
        (s.event_loop in ("auto", "asyncio", "uvloop"), "event_loop must be auto, asyncio or uvloop"),
        (s.dtype in ("bf16", "fp16", "fp32"), "dtype must be bf16, fp16 or fp32"),
        (0 < s.port < 65536 or s.port == 0, "port must be 0..65535"),
        (s.max_sessions >= 1 and s.max_queue >= 0, "max_sessions must be >= 1 and max_queue >= 0"),
        (s.kv_budget_gb >= 0, "kv_budget_gb must be >= 0"),
        (0.0 < s.vad_threshold < 1.0, "vad_threshold must be between 0 and 1"),
        (s.vad_silence_ms >= 100, "vad_silence_ms must be at least 100"),
        (0.0 < s.turn_model_threshold <= 1.0, "turn_model_threshold must be in (0, 1]"),
        (0 < s.turn_pause_ms < s.vad_silence_ms, "turn_pause_ms must be above 0 and below vad_silence_ms"),
        (0 < s.speculate_pause_ms <= s.turn_pause_ms, "speculate_pause_ms must be above 0 and at most turn_pause_ms"),
        (s.resume_window_ms >= 0, "resume_window_ms must be >= 0"),
        (0 <= s.reply_lead_in_max_ms <= 2000, "reply_lead_in_max_ms must be 0..2000"),
        (1024 <= s.max_context_tokens, "max_context_tokens must be at least 1024"),
        (16 <= s.max_new_tokens < s.max_context_tokens // 2, "max_new_tokens must be 16..max_context_tokens/2"),
        (0 < s.max_prompt_tokens <= s.max_context_tokens // 2, "max_prompt_tokens must be 1..max_context_tokens/2"),
        ((s.cert is None) == (s.key is None), "--cert and --key go together"),
        (all(map(_ice_server_ok, s.ice_server)), "ice_server must be stun:HOST:PORT or turn:USER:CREDENTIAL@HOST:PORT"),
        (_port_range_ok(s.webrtc_ports), "webrtc_ports must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535"),
        (s.max_voice_bytes > 0, "max_voice_bytes must be positive"),
        (s.max_connections_per_ip >= 1, "max_connections_per_ip must be at least 1"),
        (s.send_timeout_s > 0 and s.shutdown_grace_s >= 0, "send_timeout_s must be > 0 and shutdown_grace_s >= 0"),
        (s.init_timeout_s > 0, "init_timeout_s must be > 0"),
        (
            s.max_input_burst_s == 0 or s.max_input_burst_s >= s.max_append_s,
            "max_input_burst_s must be 0 or >= max_append_s",
        ),
        (s.log_level in ("debug", "info", "warning", "error"), "log_level must be debug, info, warning or error"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"Invalid settings: {message}.")
    return s
