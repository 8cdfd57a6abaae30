// The call's orb: a circle that swells with the assistant's voice, inside a ring that swells with the
// microphone, so something moves the moment either side makes a sound. Levels come from AnalyserNodes
// (the call owns them and their AudioContexts); the orb only draws, through two CSS variables, `--mic`
// and `--out`, each 0..1. `trace.orb` records the peaks and how often the drawing changed, for tests.

const FLOOR_DB = -60; // this quiet or quieter draws as 0
const CEILING_DB = -12; // this loud or louder draws as 1
const MOVE = 0.04; // a change smaller than this is not redrawn

export class LevelMeter {
  constructor(analyser) {
    this.analyser = analyser;
    this.buffer = new Float32Array(analyser.fftSize);
  }

  /** The RMS of the analyser's latest window, as 0..1 on a dB scale. */
  level() {
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (const x of this.buffer) sum += x * x;
    const rms = Math.sqrt(sum / this.buffer.length);
    const db = 20 * Math.log10(rms + 1e-9);
    return Math.min(1, Math.max(0, (db - FLOOR_DB) / (CEILING_DB - FLOOR_DB)));
  }
}

/** An analyser on `source` (an AudioNode) in its context. */
export function meterFor(source) {
  const analyser = source.context.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  return new LevelMeter(analyser);
}

export class Orb {
  constructor(element, trace) {
    this.element = element;
    this.trace = trace;
    this.trace.orb = { micPeak: 0, outPeak: 0, moves: 0 };
    this.mic = 0;
    this.out = 0;
    this.show(0, 0);
  }

  show(mic, out) {
    const t = this.trace.orb;
    t.micPeak = Math.max(t.micPeak, mic);
    t.outPeak = Math.max(t.outPeak, out);
    if (Math.abs(mic - this.mic) < MOVE && Math.abs(out - this.out) < MOVE) return;
    t.moves += 1;
    this.mic = mic;
    this.out = out;
    this.element.style.setProperty("--mic", mic.toFixed(2));
    this.element.style.setProperty("--out", out.toFixed(2));
  }
}
