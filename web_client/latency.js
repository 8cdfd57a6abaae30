// Each turn's latency as the page hears it, on either media path: from the end of the user's speech (the
// microphone going quiet) to the reply becoming audible (the played audio going loud), split into the
// server's own timings, and the gaps inside the reply.
//
// Two meters (audio/meter.worklet.js) report sample-accurate level edges: one on the microphone, one on
// what is played (the playback worklet's output, or the WebRTC reply track). Their AudioContext times are
// mapped to performance.now() through getOutputTimestamp(); the microphone's also lose the output latency,
// so that "audible" includes the speaker's delay and "speech ended" is when the page had the sample.
//
// A turn opens when the server says the user stopped (`input.speech_stopped`) and is kept in
// `trace.turns` (the last MAX_TURNS), updated as the reply plays, for the latency panel and benchmarks:
//   {transport, speechEndMs, decidedMs, firstArrivalMs, audibleMs, gapsMs, underruns, status, timings, parts}
// where `parts` (ms) add up to `totalMs`: decision (the page's view: speech end → the server's decision
// arriving), prefill, model, hold, playout (network and the player: the rest).

const MAX_TURNS = 100;
const METER = "audio/meter.worklet.js";
const loaded = new WeakSet(); // contexts that have the meter module

export class TurnLatency {
  constructor(view, trace) {
    this.view = view;
    this.trace = trace;
    trace.turns = [];
    this.turn = null;
    this.micQuietAt = null; // when the microphone last went quiet (null while it is loud)
  }

  /** Meter the microphone (`source` is its node in `ctx`). */
  tapMic(ctx, source) {
    return this.meter(ctx, source, (edge) => {
      this.micQuietAt = edge.type === "quiet" ? this.pageTime(ctx, edge.at, true) : null;
    });
  }

  /** Meter what the user hears (`source`: the playback node, or the reply track's source node). */
  tapOutput(ctx, source) {
    return this.meter(ctx, source, (edge) => this.onOutputEdge(this.pageTime(ctx, edge.at, false), edge.type));
  }

  async meter(ctx, source, onEdge) {
    if (!loaded.has(ctx)) {
      await ctx.audioWorklet.addModule(METER);
      loaded.add(ctx);
    }
    const node = new AudioWorkletNode(ctx, "meter", { numberOfOutputs: 1, outputChannelCount: [1] });
    const mute = ctx.createGain();
    mute.gain.value = 0; // the meter must reach the destination to be run; nobody should hear it
    source.connect(node).connect(mute).connect(ctx.destination);
    node.port.onmessage = (e) => onEdge(e.data);
  }

  /** performance.now() of a context time: when it is heard (output), or when the page had it (input). */
  pageTime(ctx, at, input) {
    const ts = ctx.getOutputTimestamp();
    const ms = ts.performanceTime + (at - ts.contextTime) * 1000;
    return input ? ms - (ctx.outputLatency || 0) * 1000 : ms;
  }

  // ---- call events ------------------------------------------------------------------------------

  speechStopped() {
    this.turn = {
      transport: this.trace.transport,
      speechEndMs: this.micQuietAt,
      decidedMs: performance.now(),
      firstArrivalMs: null,
      audibleMs: null,
      quietSinceMs: null,
      gapsMs: [],
      underrunsBefore: this.trace.underruns,
      underruns: 0,
      status: null,
      timings: null,
      totalMs: null,
      parts: null,
    };
    this.trace.turns.push(this.turn);
    if (this.trace.turns.length > MAX_TURNS) this.trace.turns.shift();
  }

  /** The first reply audio reached the page (WebSocket path; WebRTC's is inside the track). */
  audioArrived() {
    if (this.turn && this.turn.firstArrivalMs === null) this.turn.firstArrivalMs = performance.now();
  }

  responseDone(timings, status) {
    const t = this.turn;
    if (!t || t.timings !== null) return;
    t.timings = timings || {};
    t.status = t.status || status;
    this.update();
  }

  /** Barge-in: this reply is over; what is still heard of it is not measured. */
  interrupted() {
    if (this.turn) this.turn.status = "interrupted";
  }

  onOutputEdge(ms, type) {
    const t = this.turn;
    if (!t || t.status === "interrupted") return;
    if (type === "loud") {
      if (t.audibleMs === null) {
        t.audibleMs = ms;
      } else if (t.quietSinceMs !== null) {
        t.gapsMs.push(Math.round(ms - t.quietSinceMs));
      }
      t.quietSinceMs = null;
    } else if (t.audibleMs !== null) {
      t.quietSinceMs = ms; // a gap, if the reply goes on; its end, if not
    }
    this.update();
  }

  update() {
    const t = this.turn;
    if (!t) return;
    t.underruns = Math.max(0, (this.trace.underruns || 0) - (t.underrunsBefore || 0));
    if (t.audibleMs !== null && t.speechEndMs !== null) {
      t.totalMs = Math.round(t.audibleMs - t.speechEndMs);
      this.trace.clientLatencyMs = t.totalMs;
    }
    const s = t.timings;
    if (t.totalMs !== null && s && typeof s.end_of_turn_to_first_audio_ms === "number") {
      const decision = t.decidedMs - t.speechEndMs;
      const prefill = s.prefill_tail_ms || 0;
      const hold = s.lead_in_ms || 0;
      const server = s.end_of_turn_to_first_audio_ms;
      t.parts = {
        decision: Math.round(decision),
        prefill: Math.round(prefill),
        model: Math.round(server - prefill - hold),
        hold: Math.round(hold),
        playout: Math.round(t.totalMs - decision - server),
      };
    }
    this.view.showTurnLatency(t);
  }
}
