// Microphone capture: runs in an AudioContext at the browser's own rate, resamples to 16 kHz (resample.js:
// Firefox cannot connect a 48 kHz microphone to a 16 kHz context) and posts ~100 ms Float32 chunks to the
// page, which sends them as `input.append`. Muting is the page's business (it sends silence).

import { Resampler } from "./resample.js";

const OUTPUT_RATE_HZ = 16000;
const CHUNK_SAMPLES = 1600; // 100 ms at 16 kHz

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, OUTPUT_RATE_HZ); // `sampleRate`: the context's, a worklet global
    this.chunk = new Float32Array(CHUNK_SAMPLES);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no input connected yet: keep running
    const samples = this.resampler.process(channel);
    let offset = 0;
    while (offset < samples.length) {
      const n = Math.min(samples.length - offset, CHUNK_SAMPLES - this.filled);
      this.chunk.set(samples.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === CHUNK_SAMPLES) {
        this.port.postMessage(this.chunk, [this.chunk.buffer]);
        this.chunk = new Float32Array(CHUNK_SAMPLES);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
