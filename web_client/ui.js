// The page's view of a call: title, state, timer, orb and self-view, subtitles, controls, latency, and the
// transcript kept after it ends. Knows the DOM, not the protocol.

import { say } from "./feedback.js";
import { clock, transcriptText } from "./transcript.js";

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

export class CallView {
  constructor() {
    this.timerId = null;
    this.startedAt = null; // performance.now() when the call was created
    this.userLine = null;
    this.speaker = "Assistant";
    $("transcript-copy").addEventListener("click", () => this.copyTranscript());
    $("transcript-download").addEventListener("click", () => this.downloadTranscript());
  }

  // ---- screens ----------------------------------------------------------------------------------

  /** A new call's screen: `title` heads it, `speaker` names the assistant in the subtitles. */
  callStarting(mode, { title, speaker }) {
    this.speaker = speaker;
    this.startedAt = null;
    this.userLine = null;
    $("setup").hidden = true;
    $("last-call").hidden = true;
    $("call").hidden = false;
    $("call-title").textContent = title;
    $("orb-initial").textContent = speaker === "Assistant" ? "" : speaker.slice(0, 1).toUpperCase();
    $("subtitles").replaceChildren();
    for (const id of ["call-note", "call-error", "call-feedback", "text-feedback", "controls-feedback", "devices-feedback"]) {
      say(id, "");
    }
    $("stage").classList.toggle("video", mode === "video");
    $("camera").hidden = mode !== "video";
    $("camera").setAttribute("aria-pressed", "true");
    $("camera").textContent = "Camera off";
    $("flip").hidden = true;
    $("share").hidden = true;
    $("mute").setAttribute("aria-pressed", "false");
    $("mute").textContent = "Mute";
    $("text-input").value = "";
    this.setInterruptible(false);
    $("timer").textContent = "0:00";
    for (const id of ["lat-client", "lat-server", "lat-engine"]) $(id).textContent = "–";
  }

  /**
   * The call is over. A call that was connected leaves its transcript on the page with "Call ended · m:ss"
   * and why it ended; one that never connected says why next to the call buttons.
   */
  callEnded(message, isError) {
    $("call").hidden = true;
    $("setup").hidden = false;
    $("preview").hidden = true;
    $("preview").srcObject = null;
    if (this.startedAt === null) {
      say("call-feedback", message, isError ? "error" : "info");
      return;
    }
    if (this.userLine) this.userTurnEnded(null);
    const heading = `Call ended · ${clock((performance.now() - this.startedAt) / 1000)}`;
    $("last-call-title").textContent = heading;
    say("last-call-reason", message, isError ? "error" : "info");
    $("transcript").replaceChildren(...$("subtitles").childNodes);
    if (!$("transcript").childElementCount) this.line("note", "", "Nothing was said.", $("transcript"));
    say("transcript-feedback", "");
    $("last-call").hidden = false;
    $("last-call").scrollIntoView({ block: "nearest" });
  }

  // ---- state ------------------------------------------------------------------------------------

  setState(state, detail) {
    const el = $("state");
    el.dataset.state = state;
    el.textContent = STATE_WORDS[state] || state;
    $("state-detail").textContent = detail || "";
    this.setInterruptible(state === "speaking" || state === "thinking");
  }

  setInterruptible(on) {
    $("interrupt").disabled = !on;
  }

  startTimer() {
    this.startedAt = performance.now();
    this.stopTimer();
    this.timerId = setInterval(() => {
      $("timer").textContent = clock((performance.now() - this.startedAt) / 1000);
    }, 500);
  }

  stopTimer() {
    if (this.timerId !== null) clearInterval(this.timerId);
    this.timerId = null;
  }

  // ---- subtitles --------------------------------------------------------------------------------

  line(kind, who, text, box = $("subtitles")) {
    const p = document.createElement("p");
    p.className = kind;
    if (who) {
      const name = document.createElement("span");
      name.className = "who";
      name.textContent = `${who}: `;
      p.append(name);
    }
    const said = document.createElement("span");
    said.className = "said";
    said.textContent = text;
    p.append(said);
    box.append(p);
    box.scrollTop = box.scrollHeight;
    return p;
  }

  userTurnStarted() {
    this.userLine = this.line("user", "You", "speaking…");
  }

  /** The user's turn ended after `spokenS` seconds of speech (null: the call ended while they spoke). */
  userTurnEnded(spokenS) {
    if (!this.userLine) this.userLine = this.line("user", "You", "");
    const said = spokenS === null ? "(speaking as the call ended)" : `(spoke ${spokenS.toFixed(1)} s)`;
    this.userLine.querySelector(".said").textContent = said;
    this.userLine = null;
  }

  userTyped(text) {
    this.line("user typed", "You", text);
  }

  /** A line for a new reply; the call keeps it and fills in the words as they are heard. */
  assistantTurnStarted() {
    return this.line("assistant", this.speaker, "");
  }

  setAssistantText(line, text) {
    const said = line.querySelector(".said");
    if (said.textContent === text) return;
    said.textContent = text;
    const box = line.parentElement;
    if (box) box.scrollTop = box.scrollHeight;
  }

  /** A withdrawn reply (`response.cancelled`): its words were never meant, so its line goes. */
  removeLine(line) {
    if (line) line.remove();
  }

  markInterrupted(line) {
    if (line.classList.contains("interrupted")) return;
    line.classList.add("interrupted");
    const cut = document.createElement("span");
    cut.className = "cut";
    cut.textContent = " (interrupted)";
    line.append(cut);
  }

  // ---- the transcript after the call ------------------------------------------------------------

  transcript() {
    return transcriptText(`${$("call-title").textContent} — ${$("last-call-title").textContent}`, $("transcript"));
  }

  async copyTranscript() {
    try {
      await navigator.clipboard.writeText(this.transcript());
      say("transcript-feedback", "Copied to the clipboard.", "ok");
    } catch {
      say("transcript-feedback", "This browser did not allow copying; use Download instead.", "error");
    }
  }

  downloadTranscript() {
    const url = URL.createObjectURL(new Blob([this.transcript()], { type: "text/plain;charset=utf-8" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `call-${new Date().toISOString().slice(0, 16).replace(/[:T]/g, "-")}.txt`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say("transcript-feedback", `Saved as ${link.download}.`, "ok");
  }

  // ---- latency ----------------------------------------------------------------------------------

  showClientLatency(ms) {
    $("lat-client").textContent = `${ms} ms`;
  }

  showTimings(t, status) {
    const ms = (v) => (typeof v === "number" ? `${Math.round(v)} ms` : "–");
    $("lat-server").textContent = ms(t.end_of_turn_to_first_audio_ms);
    $("lat-engine").textContent = status === "interrupted" ? `${ms(t.engine_ms)} (interrupted)` : ms(t.engine_ms);
  }

  // ---- media, controls and messages -------------------------------------------------------------

  /** The self-view (mirrored, as a mirror, for a camera that faces the user) or the shared screen. */
  showPreview(stream, mirrored) {
    const v = $("preview");
    if (v.srcObject !== stream) v.srcObject = stream;
    v.classList.toggle("mirrored", mirrored);
    v.hidden = false;
  }

  previewElement() {
    return $("preview");
  }

  orbElement() {
    return $("orb");
  }

  /** Which video controls a video call offers now. */
  setVideoControls({ flip, share, sharing }) {
    $("flip").hidden = !flip;
    $("flip").disabled = sharing;
    $("camera").disabled = sharing;
    $("share").hidden = !share;
    $("share").setAttribute("aria-pressed", String(sharing));
    $("share").textContent = sharing ? "Stop sharing" : "Share screen";
  }

  /** The device pickers: every microphone and camera, the ones in use selected. */
  showDevices({ mics, cameras }, { micId, cameraId }) {
    fill($("mic-select"), mics, micId, "Microphone");
    fill($("camera-select"), cameras, cameraId, "Camera");
    $("camera-select").closest("label").hidden = !cameras.length || $("camera").hidden;
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

  /** A problem during the call (it goes on). */
  showError(text) {
    say("call-error", text, "error");
  }

  /** Something worth knowing about this call, kept on screen for the whole call (state changes do not clear it). */
  note(text) {
    const el = $("call-note");
    el.textContent = el.hidden || !el.textContent ? text : `${el.textContent} ${text}`;
    el.hidden = false;
  }
}

function fill(select, devices, chosen, fallback) {
  select.replaceChildren(...devices.map((d, i) => new Option(d.label || `${fallback} ${i + 1}`, d.deviceId)));
  if (devices.some((d) => d.deviceId === chosen)) select.value = chosen;
}
