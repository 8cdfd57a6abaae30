// "Read aloud": the reading plays as it arrives, from its first chunk, through the same playback worklet as
// a call's replies; when it is complete it becomes a WAV to replay and download. The AudioContext is made
// in the click that asks for the reading, so browsers let it play without a second click.

import { OUTPUT_SAMPLE_RATE_HZ } from "./protocol.js";

export class ReadingPlayer {
  constructor(trace) {
    this.trace = trace; // `trace.reading`: when the first chunk was queued, playback began, the text was done
    this.ctx = null;
    this.node = null;
    this.ready = null;
    this.chunks = [];
  }

  /** Call synchronously in the click handler (a user gesture): the context may start playing at once. */
  begin() {
    if (!this.ctx) {
      this.ctx = new AudioContext({ sampleRate: OUTPUT_SAMPLE_RATE_HZ });
      this.ready = this.ctx.audioWorklet.addModule("audio/playback.worklet.js").then(() => {
        this.node = new AudioWorkletNode(this.ctx, "playback", { outputChannelCount: [1] });
        this.node.connect(this.ctx.destination);
        this.node.port.onmessage = (e) => this.onPlayback(e.data);
      });
    }
    this.ctx.resume();
    if (this.node) this.node.port.postMessage({ type: "flush" }); // a new reading replaces an unfinished one
    this.chunks = [];
    this.trace.reading = { firstChunkAt: null, startedAt: null, doneAt: null, playedSamples: 0 };
  }

  async push(samples) {
    this.chunks.push(samples.slice());
    await this.ready;
    const t = this.trace.reading;
    if (t.firstChunkAt === null) t.firstChunkAt = performance.now();
    this.node.port.postMessage({ type: "push", samples }, [samples.buffer]);
  }

  /** The reading is complete: let the player drain, and return it as a WAV file. */
  async end() {
    await this.ready;
    this.node.port.postMessage({ type: "end" });
    this.trace.reading.doneAt = performance.now();
    return wavBlob(this.chunks, OUTPUT_SAMPLE_RATE_HZ);
  }

  stop() {
    if (this.node) this.node.port.postMessage({ type: "flush" });
  }

  onPlayback(msg) {
    const t = this.trace.reading;
    if (!t) return;
    if (msg.type === "started" && t.startedAt === null) t.startedAt = performance.now();
    if (msg.type === "stats") t.playedSamples = msg.played;
  }
}

/** 16-bit mono WAV of float chunks, for replaying and downloading a reading. */
export function wavBlob(chunks, rate) {
  const n = chunks.reduce((sum, c) => sum + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * n, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, 2 * n, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (const x of chunk) {
      view.setInt16(offset, Math.max(-1, Math.min(1, x)) * 32767, true);
      offset += 2;
    }
  }
  return new Blob([view.buffer], { type: "audio/wav" });
}
