// The page's view of a call: state, timer, subtitles, latency, messages. Knows the DOM, not the protocol.

const STATE_WORDS = {
  connecting: "Connecting…",
  starting: "Starting…",
  queued: "Waiting in line",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  ended: "Call ended",
};

const $ = (id) => document.getElementById(id);
const LATENCY_FIELDS = ["lat-client", "lat-decision", "lat-prefill", "lat-model", "lat-hold", "lat-playout", "lat-gaps", "lat-server", "lat-engine"];

export class CallView {
  constructor() {
    this.timerId = null;
    this.userLine = null;
    this.assistantLine = null;
  }

  // ---- screens ----------------------------------------------------------------------------------

  callStarting(mode) {
    this.clearError();
    $("setup").hidden = true;
    $("call").hidden = false;
    $("subtitles").replaceChildren();
    $("camera").hidden = mode !== "video";
    $("camera").setAttribute("aria-pressed", "true");
    $("camera").textContent = "Camera off";
    $("mute").setAttribute("aria-pressed", "false");
    $("mute").textContent = "Mute";
    $("timer").textContent = "0:00";
    for (const id of LATENCY_FIELDS) $(id).textContent = "–";
    for (const span of $("lat-bar").children) span.style.width = "0";
  }

  callEnded(message, isError) {
    $("setup").hidden = false;
    $("call").hidden = true;
    $("preview").hidden = true;
    $("preview").srcObject = null;
    if (isError) this.showError(message);
    else this.note(message);
  }

  // ---- state ------------------------------------------------------------------------------------

  setState(state, detail) {
    const el = $("state");
    el.dataset.state = state;
    el.textContent = STATE_WORDS[state] || state;
    $("state-detail").textContent = detail || "";
  }

  startTimer() {
    const started = performance.now();
    this.stopTimer();
    this.timerId = setInterval(() => {
      const s = Math.floor((performance.now() - started) / 1000);
      $("timer").textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    }, 500);
  }

  stopTimer() {
    if (this.timerId !== null) clearInterval(this.timerId);
    this.timerId = null;
  }

  // ---- subtitles --------------------------------------------------------------------------------

  line(kind, text) {
    const p = document.createElement("p");
    p.className = kind;
    p.textContent = text;
    const box = $("subtitles");
    box.append(p);
    box.scrollTop = box.scrollHeight;
    return p;
  }

  userTurnStarted() {
    this.userLine = this.line("user", "You are speaking…");
  }

  userTurnEnded(spokenS) {
    if (!this.userLine) this.userLine = this.line("user", "");
    this.userLine.textContent = `You spoke (${spokenS.toFixed(1)} s)`;
    this.userLine = null;
  }

  assistantTurnStarted() {
    this.assistantLine = this.line("assistant", "");
  }

  appendAssistantText(text) {
    if (!this.assistantLine) this.assistantTurnStarted();
    this.assistantLine.textContent += text;
    const box = $("subtitles");
    box.scrollTop = box.scrollHeight;
  }

  markInterrupted() {
    if (this.assistantLine) this.assistantLine.classList.add("interrupted");
    this.assistantLine = null;
  }

  // ---- latency ----------------------------------------------------------------------------------

  /** One turn as the page heard it (latency.js): the total, its parts (also as a bar), and the gaps. */
  showTurnLatency(t) {
    const ms = (v) => (typeof v === "number" ? `${Math.round(v)} ms` : "–");
    $("lat-client").textContent = ms(t.totalMs);
    const p = t.parts;
    const rule = t.timings && t.timings.turn_rule ? ` (${t.timings.turn_rule})` : "";
    $("lat-decision").textContent = p ? `${ms(p.decision)}${rule}` : "–";
    for (const part of ["prefill", "model", "hold", "playout"]) $(`lat-${part}`).textContent = p ? ms(p[part]) : "–";
    for (const span of $("lat-bar").children) {
      const v = p && t.totalMs > 0 ? Math.max(0, p[span.className]) / t.totalMs : 0;
      span.style.width = `${(100 * Math.min(1, v)).toFixed(1)}%`;
    }
    if (!t.timings) return;
    // Gaps: audio the server sent after the listener would have run dry, and the player's own underruns
    // (a reply's natural pauses are not gaps, so the meter's silences are left to benchmarks).
    const late = t.timings.playback_underruns || 0;
    const gaps = [];
    if (late) gaps.push(`${late} late (${Math.round(t.timings.underrun_ms || 0)} ms)`);
    if (t.underruns) gaps.push(`${t.underruns} in the player`);
    $("lat-gaps").textContent = gaps.length ? gaps.join(", ") : "none";
  }

  showTimings(t, status) {
    const ms = (v) => (typeof v === "number" ? `${Math.round(v)} ms` : "–");
    $("lat-server").textContent = ms(t.end_of_turn_to_first_audio_ms);
    $("lat-engine").textContent = status === "interrupted" ? `${ms(t.engine_ms)} (interrupted)` : ms(t.engine_ms);
  }

  // ---- media and messages -----------------------------------------------------------------------

  showPreview(stream) {
    const v = $("preview");
    v.srcObject = stream;
    v.hidden = false;
  }

  previewElement() {
    return $("preview");
  }

  showEngine(engine) {
    const el = $("notice");
    if (engine.notice) {
      el.textContent = engine.replies_are_noise ? `${engine.notice} (A test setup, not the real model.)` : engine.notice;
      el.hidden = false;
    } else {
      el.hidden = true;
    }
  }

  showError(text) {
    const el = $("error");
    el.textContent = text;
    el.hidden = false;
  }

  clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  note(text) {
    $("state-detail").textContent = text;
    const el = $("notice");
    if (el.hidden) {
      el.textContent = text;
      el.hidden = false;
    }
  }
}
