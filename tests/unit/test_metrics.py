"""Metrics read off the event stream: what each server event adds, and labels that cannot grow."""

from __future__ import annotations

import numpy as np

from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import EngineWorker
from omni_server.metrics import ServerMetrics
from omni_server.protocol import Error, ResponseDone, ServerEvent, SessionClosed


async def test_events_are_counted_on_the_way_out() -> None:
    """response.done, error and session.closed update their metrics; the event still reaches the client."""
    metrics = ServerMetrics()
    sent: list[ServerEvent] = []

    async def send(event: ServerEvent) -> None:
        sent.append(event)

    observed = metrics.observe(send)
    timings = {"end_of_turn_to_first_audio_ms": 420.0, "engine_ms": 600.0, "audio_s": 2.0}
    await observed(ResponseDone(response={"status": "completed"}, timings=timings))
    await observed(Error("invalid_audio", "..."))
    await observed(SessionClosed(reason="Robert'); DROP TABLE"))  # not one of ours: folded into "other"
    value = metrics.registry.get_sample_value
    assert len(sent) == 3
    assert value("omni_turns_total", {"status": "completed"}) == 1
    assert value("omni_end_of_speech_to_first_audio_seconds_sum") == 0.42
    assert value("omni_audio_real_time_factor_sum") == 0.3
    assert value("omni_audio_output_seconds_total") == 2.0
    assert value("omni_errors_total", {"code": "invalid_audio"}) == 1
    assert value("omni_sessions_closed_total", {"reason": "other"}) == 1


def test_underruns_count_only_what_is_new() -> None:
    """Clients report running totals; a repeat or a reset adds nothing."""
    metrics = ServerMetrics()
    metrics.client_underruns(0, 4)
    metrics.client_underruns(4, 4)
    metrics.client_underruns(4, 1)
    assert metrics.registry.get_sample_value("omni_client_playback_underruns_total") == 4


def test_engine_timings_go_to_their_histograms() -> None:
    """Prefill and chunk timings from the worker thread land in separate histograms."""
    metrics = ServerMetrics()
    metrics.engine_timing("prefill", 0.05)
    metrics.engine_timing("chunk", 0.2)
    metrics.engine_timing("call", 1.0)  # other model calls (system prompt building) are not timed here
    value = metrics.registry.get_sample_value
    assert value("omni_engine_prefill_seconds_count") == 1 and value("omni_engine_chunk_seconds_count") == 1
    assert b"omni_engine_chunk_seconds_bucket" in metrics.exposition()


async def test_a_worker_counts_its_speculations_for_metrics() -> None:
    """A speculative reply started, then confirmed, then another dropped: started 2, used 1, discarded 1."""
    metrics = ServerMetrics()
    worker = EngineWorker(build_tiny_engine(seed=1), on_speculation=metrics.speculation)
    try:
        conv = worker.open("call")
        await worker.prefill(conv, [{"role": "user", "content": [np.zeros(16_000, np.float32)]}])
        used = await worker.reply(conv, speculative=True, max_new_tokens=12)
        used.confirm(worker.now())
        await used.close()
        dropped = await worker.reply(conv, speculative=True, max_new_tokens=12)
        await dropped.close()
    finally:
        worker.close()
    value = metrics.registry.get_sample_value
    assert value("omni_speculations_total", {"outcome": "started"}) == 2
    assert value("omni_speculations_total", {"outcome": "used"}) == 1
    assert value("omni_speculations_total", {"outcome": "discarded"}) == 1
