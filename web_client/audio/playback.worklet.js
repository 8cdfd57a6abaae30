// Reply playback: 24 kHz float32 chunks in, a small jitter buffer, speaker out.
// Messages in:  {type:"push", samples}  {type:"end"} (the reply is complete)  {type:"flush"} (barge-in)
// Messages out: {type:"started"}  {type:"drained"}  {type:"flushed", dropped}  {type:"stats", ...}
// An underrun is the buffer running dry while a reply is still streaming; playback then waits for
// the jitter buffer to refill before it resumes, so gaps are few and whole rather than many and tiny.

const START_SAMPLES = 2400; // 100 ms at 24 kHz buffered before playback starts (or resumes)
const STATS_EVERY_SAMPLES = 6000; // a stats message every 250 ms of output time

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = [];
    this.readIndex = 0; // into chunks[0]
    this.queued = 0;
    this.playing = false;
    this.ended = true;
    this.underruns = 0;
    this.played = 0;
    this.dropped = 0;
    this.energy = 0;
    this.sinceStats = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "push":
        this.chunks.push(msg.samples);
        this.queued += msg.samples.length;
        this.ended = false;
        break;
      case "end":
        this.ended = true;
        if (!this.playing && this.queued === 0) this.port.postMessage({ type: "drained" });
        break;
      case "flush": {
        const dropped = this.queued;
        this.dropped += dropped;
        this.chunks = [];
        this.readIndex = 0;
        this.queued = 0;
        this.playing = false;
        this.ended = true;
        this.port.postMessage({ type: "flushed", dropped });
        break;
      }
      default:
        throw new Error(`playback worklet: unknown message ${msg.type}`);
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    if (!this.playing && this.queued > 0 && (this.queued >= START_SAMPLES || this.ended)) {
      this.playing = true;
      this.port.postMessage({ type: "started" });
    }
    if (this.playing) {
      let written = 0;
      while (written < out.length && this.chunks.length) {
        const head = this.chunks[0];
        const n = Math.min(out.length - written, head.length - this.readIndex);
        for (let i = 0; i < n; i++) {
          const s = head[this.readIndex + i];
          out[written + i] = s;
          this.energy += s * s;
        }
        written += n;
        this.readIndex += n;
        if (this.readIndex === head.length) {
          this.chunks.shift();
          this.readIndex = 0;
        }
      }
      this.queued -= written;
      this.played += written;
      if (this.queued === 0) {
        this.playing = false;
        if (this.ended) this.port.postMessage({ type: "drained" });
        else this.underruns += 1;
      }
    }
    this.sinceStats += out.length;
    if (this.sinceStats >= STATS_EVERY_SAMPLES) {
      this.sinceStats = 0;
      this.port.postMessage({
        type: "stats",
        played: this.played,
        underruns: this.underruns,
        dropped: this.dropped,
        queued: this.queued,
        energy: this.energy,
      });
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}

registerProcessor("playback", PlaybackProcessor);
