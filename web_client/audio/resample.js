// Streaming resampler for the microphone: any context rate (44.1 or 48 kHz, say) to the model's 16 kHz.
// Firefox cannot connect a 48 kHz microphone to a 16 kHz AudioContext (Mozilla bugs 1674892, 1725336), so
// the capture context runs at the browser's own rate and the capture worklet resamples with this.
//
// Each output sample is a windowed-sinc interpolation of the input around its exact position: the sinc's
// cut-off (0.45 × the output rate, 7.2 kHz) is the anti-aliasing low-pass, the Blackman window keeps its
// stop band below about -70 dB, and it reaches HALF_WIDTH output periods either side. State between
// calls is the input tail the next outputs still need and the fractional position, so chunk boundaries
// leave no trace. Pure: no Web Audio here, so the page can test it too.

const HALF_WIDTH = 8; // output periods either side of each output sample
const CUTOFF = 0.45; // of the output rate

const TABLE_STEPS = 256; // kernel values tabulated per input sample, interpolated between

export class Resampler {
  constructor(inputRateHz, outputRateHz) {
    this.step = inputRateHz / outputRateHz; // input samples per output sample
    this.passThrough = inputRateHz === outputRateHz;
    this.halfWidth = Math.ceil(HALF_WIDTH * Math.max(1, this.step)); // in input samples
    this.table = kernelTable(this.halfWidth, Math.min(1, 1 / this.step) * 2 * CUTOFF);
    this.buffer = new Float32Array(4096);
    // Start half a kernel in, as if preceded by silence: the first outputs wait for no lookahead beyond it.
    this.length = this.halfWidth; // samples held in `buffer`
    this.position = this.halfWidth; // where the next output sample lies, in `buffer` coordinates
  }

  /** Resample the next piece of input; returns the output samples it completes (possibly none). */
  process(input) {
    if (this.passThrough) return input.slice();
    this.append(input);
    const h = this.halfWidth;
    const out = new Float32Array(Math.max(0, Math.ceil((this.length - h - this.position) / this.step)));
    let n = 0;
    while (this.position + h < this.length && n < out.length) {
      out[n++] = this.sampleAt(this.position);
      this.position += this.step;
    }
    const drop = Math.floor(this.position) - h; // samples no future output reaches
    if (drop > 0) {
      this.buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.position -= drop;
    }
    return n === out.length ? out : out.subarray(0, n);
  }

  append(input) {
    if (this.length + input.length > this.buffer.length) {
      const bigger = new Float32Array(2 * (this.length + input.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
  }

  sampleAt(t) {
    const h = this.halfWidth;
    const table = this.table;
    let sum = 0;
    for (let i = Math.ceil(t - h); i <= Math.floor(t + h); i++) {
      const at = Math.abs(i - t) * TABLE_STEPS;
      const k = Math.floor(at);
      const w = table[k] + (at - k) * (table[k + 1] - table[k]);
      sum += this.buffer[i] * w;
    }
    return sum;
  }
}

/** The low-pass interpolation kernel (cut-off `scale` / 2 of the input rate) tabulated over 0..halfWidth input samples. */
function kernelTable(halfWidth, scale) {
  const table = new Float32Array(halfWidth * TABLE_STEPS + 2);
  for (let k = 0; k < table.length; k++) {
    const x = k / TABLE_STEPS;
    table[k] = sinc(x * scale) * scale * blackman(x / halfWidth);
  }
  return table;
}

function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

/** Blackman window over -1..1. */
function blackman(u) {
  if (u <= -1 || u >= 1) return 0;
  const a = Math.PI * (u + 1);
  return 0.42 - 0.5 * Math.cos(a) + 0.08 * Math.cos(2 * a);
}
