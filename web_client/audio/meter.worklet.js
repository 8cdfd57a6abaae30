// Level edges of one signal, sample-accurate, for latency: when it becomes audible and when it goes quiet.
// Options: {threshold (linear, default 0.003 ≈ -50 dBFS), quietMs (default 20)}.
// Messages out (times in the AudioContext's seconds):
//   {type: "loud", at}   the first audible sample after a quiet run
//   {type: "quiet", at}  the first sample of a quiet run, once the run has lasted quietMs
// The processor passes nothing on; connect it to a muted gain so the context runs it.

class MeterProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.threshold = o.threshold ?? 0.003;
    this.quietSamples = Math.max(1, Math.round(((o.quietMs ?? 20) / 1000) * sampleRate));
    this.loud = false;
    this.quietRun = 0;
    this.quietStart = 0;
  }

  process(inputs) {
    const channels = inputs[0] || [];
    if (!channels.length) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let level = 0;
      for (const ch of channels) level = Math.max(level, Math.abs(ch[i]));
      const at = currentTime + i / sampleRate;
      if (level >= this.threshold) {
        if (!this.loud) this.port.postMessage({ type: "loud", at });
        this.loud = true;
        this.quietRun = 0;
      } else {
        if (this.quietRun === 0) this.quietStart = at;
        this.quietRun += 1;
        if (this.loud && this.quietRun === this.quietSamples) {
          this.loud = false;
          this.port.postMessage({ type: "quiet", at: this.quietStart });
        }
      }
    }
    return true;
  }
}

registerProcessor("meter", MeterProcessor);
