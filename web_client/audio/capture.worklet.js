// Microphone capture: runs in an AudioContext at 16 kHz and posts ~100 ms Float32 chunks to the page,
// which base64-encodes them into `input.append`. Muting is the page's business (it sends silence).

const CHUNK_SAMPLES = 1600; // 100 ms at 16 kHz

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = new Float32Array(CHUNK_SAMPLES);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no input connected yet: keep running
    let offset = 0;
    while (offset < channel.length) {
      const n = Math.min(channel.length - offset, CHUNK_SAMPLES - this.filled);
      this.chunk.set(channel.subarray(offset, offset + n), this.filled);
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
