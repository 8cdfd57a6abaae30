"""Prometheus metrics for one server, in its own `CollectorRegistry` (many servers can share a process).

Session-level metrics are read off the event stream: `ServerMetrics.observe(send)` wraps a call's
`send(event)` and counts what goes by (`response.done` carries the turn's timings,
`error` its code, `session.closed` its reason), so the session code does not know metrics exist.
Engine timings come from the worker thread (`engine_timing`), wire bytes from the connection
(`transport/guard.py`), and live/queued calls are read from `Admission` at scrape time.

Must not import: torch, websockets, the engine's models.
"""

from __future__ import annotations

import re
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from omni_server.protocol import Error, ResponseDone, Send, ServerEvent, SessionClosed

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Label values come from our own codes; anything else (a bug, a future code) is folded into "other"
# so a label can never grow without bound.
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,39}")
_LATENCY_BUCKETS_S = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_ENGINE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0)
_RTF_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 1.0, 1.25, 1.5, 2.0, 4.0)


class CallCounts(Protocol):
    """What the gauges read at scrape time (`session.manager.Admission` satisfies it)."""

    @property
    def active(self) -> int: ...

    @property
    def queued(self) -> int: ...


class ServerMetrics:
    """Every metric one `OmniServer` exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ready = Gauge("omni_ready", "1 once the model is loaded and warmed up, else 0.", registry=r)
        self.calls_active = Gauge("omni_calls_active", "Calls holding a model slot.", registry=r)
        self.calls_queued = Gauge("omni_calls_queued", "Callers waiting for a slot.", registry=r)
        self.turns = Counter("omni_turns", "Replies finished, by status.", ["status"], registry=r)
        self.first_audio = Histogram(
            "omni_end_of_speech_to_first_audio_seconds",
            "From the end of the user's turn to the reply's first audio chunk leaving the server.",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.prefill = Histogram(
            "omni_engine_prefill_seconds",
            "Model time of one streaming_prefill (a 1-s unit or a system prompt).",
            buckets=_ENGINE_BUCKETS_S,
            registry=r,
        )
        self.chunk = Histogram(
            "omni_engine_chunk_seconds",
            "Model time to generate one output chunk.",
            buckets=_ENGINE_BUCKETS_S,
            registry=r,
        )
        self.rtf = Histogram(
            "omni_audio_real_time_factor",
            "Per reply: model seconds spent per second of audio produced (below 1 keeps up with playback).",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.speculations = Counter(
            "omni_speculations",
            "Replies started on spare model time before the turn was confirmed, by outcome: started, used (the "
            "turn was confirmed), discarded (the user went on; the model state was rolled back).",
            ["outcome"],
            registry=r,
        )
        self.audio_out = Counter("omni_audio_output_seconds", "Seconds of reply audio sent.", registry=r)
        self.underruns = Counter(
            "omni_client_playback_underruns", "Playback underruns the clients reported.", registry=r
        )
        self.errors = Counter("omni_errors", "Error events sent to clients, by code.", ["code"], registry=r)
        self.closed = Counter("omni_sessions_closed", "Calls ended, by reason.", ["reason"], registry=r)
        self.refused = Counter(
            "omni_connections_refused", "Connections refused before the handshake, by reason.", ["reason"], registry=r
        )
        self.bytes_in = Counter("omni_received_bytes", "WebSocket message bytes received.", registry=r)
        self.bytes_out = Counter("omni_sent_bytes", "WebSocket message bytes sent.", registry=r)

    def track_calls(self, counts: CallCounts) -> None:
        """Read live and queued calls from `counts` at each scrape."""
        self.calls_active.set_function(lambda: counts.active)
        self.calls_queued.set_function(lambda: counts.queued)

    def engine_timing(self, kind: str, elapsed_s: float) -> None:
        """Called on the engine thread after each model call (prometheus-client is thread-safe)."""
        if kind == "prefill":
            self.prefill.observe(elapsed_s)
        elif kind == "chunk":
            self.chunk.observe(elapsed_s)

    def speculation(self, outcome: str) -> None:
        """Called on the engine thread or the loop: a speculative reply `started`, was `used` or `discarded`."""
        self.speculations.labels(_label(outcome)).inc()

    def client_underruns(self, before: int, now: int) -> None:
        """Clients report a running total; count what is new since their last report."""
        if now > before:
            self.underruns.inc(now - before)

    def refuse(self, reason: str) -> None:
        self.refused.labels(_label(reason)).inc()

    def observe(self, send: Send) -> Send:
        """Wrap a call's `send` so every event it sends is counted on the way out."""

        async def observed(event: ServerEvent) -> None:
            self.count_event(event)
            await send(event)

        return observed

    def count_event(self, event: ServerEvent) -> None:
        if isinstance(event, ResponseDone):
            self._count_turn(event)
        elif isinstance(event, Error):
            self.errors.labels(_label(event.code)).inc()
        elif isinstance(event, SessionClosed):
            self.closed.labels(_label(event.reason)).inc()

    def _count_turn(self, event: ResponseDone) -> None:
        response, timings = event.response, event.timings
        self.turns.labels(_label(str(response.get("status", "")))).inc()
        first_ms = timings.get("end_of_turn_to_first_audio_ms")
        if first_ms is not None:
            self.first_audio.observe(first_ms / 1000)
        audio_s = timings.get("audio_s") or 0.0
        self.audio_out.inc(audio_s)
        engine_ms = timings.get("engine_ms")
        if audio_s > 0 and engine_ms is not None:
            self.rtf.observe(engine_ms / 1000 / audio_s)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def _label(value: str) -> str:
    return value if _LABEL.fullmatch(value) else "other"
