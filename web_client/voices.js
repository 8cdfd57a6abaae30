// The voice library in the page: pick a voice and a character for the next call, record or upload a voice,
// manage your voices and characters, and hear text read in a voice. Talks to `/v1/library` (docs/voices.md);
// the server checks and limits everything, the page only guides. `window.omniVoices` is a trace for tests.

import { base64ToF32 } from "./protocol.js";

const LIBRARY_PATH = "/v1/library";
const LIBRARY_SUBPROTOCOL = "omni.library";
const RECORD_MIN_S = 5;
const RECORD_MAX_S = 15;
const TTS_RATE_HZ = 24000;

const $ = (id) => document.getElementById(id);

/** A request/response socket: `request(type, fields, file)` resolves with the reply carrying the same id. */
class LibrarySocket {
  constructor(onEvent) {
    this.onEvent = onEvent; // progress events of a request still running (tts.queued, tts.delta)
    this.nextId = 1;
    this.waiting = new Map();
    this.ready = this.open();
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.ws = new WebSocket(`${scheme}://${location.host}${LIBRARY_PATH}`, [LIBRARY_SUBPROTOCOL]);
    this.ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    this.ws.onclose = () => {
      for (const { reject } of this.waiting.values()) reject(new Error("The connection to the server closed."));
      this.waiting.clear();
      this.ready = null;
    };
    return new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error("Cannot reach the voice library."));
    });
  }

  async request(type, fields = {}, file = null) {
    if (!this.ready) this.ready = this.open();
    await this.ready;
    const id = String(this.nextId++);
    const reply = new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.ws.send(JSON.stringify({ type, id, ...fields }));
    if (file) this.ws.send(file);
    const event = await reply;
    if (event.type === "error") throw new Error(event.error.message);
    return event;
  }

  receive(event) {
    if (event.type === "tts.delta" || event.type === "tts.queued") return this.onEvent(event);
    const waiter = this.waiting.get(event.id);
    if (!waiter) return;
    this.waiting.delete(event.id);
    waiter.resolve(event);
  }
}

export class VoicesPanel {
  constructor(language) {
    this.language = language; // () => the session language
    this.socket = new LibrarySocket((e) => this.onTtsProgress(e));
    this.voices = [];
    this.characters = [];
    this.editing = null; // the character id the form edits, or null for a new one
    this.recording = null;
    this.ttsChunks = [];
    this.trace = { recordedS: 0, saved: [], errors: [] };
    window.omniVoices = this.trace;
  }

  start() {
    $("record-start").addEventListener("click", () => this.startRecording());
    $("record-stop").addEventListener("click", () => this.stopRecording());
    $("voice-file").addEventListener("change", (e) => this.upload(e.target.files[0]));
    $("character-save").addEventListener("click", () => this.saveCharacter());
    $("tts-read").addEventListener("click", () => this.readAloud());
    this.refresh();
  }

  /** What the next call uses: `{voiceId, characterId}` (empty strings: the built-in voice, no character). */
  choice() {
    return { voiceId: $("voice-select").value, characterId: $("character-select").value };
  }

  status(text, isError = false) {
    const el = $("voice-status");
    el.textContent = text;
    el.classList.toggle("error-text", isError);
    if (isError) this.trace.errors.push(text);
  }

  async refresh() {
    try {
      this.voices = (await this.socket.request("voice.list")).voices;
      this.characters = (await this.socket.request("character.list")).characters;
    } catch (err) {
      this.status(err.message, true);
      return;
    }
    this.renderVoices();
    this.renderCharacters();
  }

  // ---- voices -------------------------------------------------------------------------------------

  renderVoices() {
    for (const id of ["voice-select", "character-voice"]) {
      const select = $(id);
      const chosen = select.value;
      select.replaceChildren(new Option("Built-in voice", ""));
      for (const v of this.voices) select.append(new Option(`${v.name} (${v.duration_s.toFixed(1)} s)`, v.id));
      select.value = this.voices.some((v) => v.id === chosen) ? chosen : "";
    }
    const list = $("voice-list");
    list.replaceChildren();
    for (const v of this.voices) {
      const li = document.createElement("li");
      const title = document.createElement("span");
      title.textContent = `${v.name} · ${v.language} · ${v.duration_s.toFixed(1)} s${v.shared ? " · shared" : ""}`;
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.src = v.preview_url;
      li.append(title, audio);
      if (v.mine) {
        li.append(
          button("Rename", () => this.renameVoice(v)),
          button(v.shared ? "Unshare" : "Share", () => this.updateVoice(v.id, { shared: !v.shared })),
          button("Delete", () => this.deleteVoice(v)),
        );
      }
      list.append(li);
    }
  }

  async addVoice(blob, contentType) {
    const name = $("voice-name").value.trim() || "My voice";
    this.status("Checking the recording…");
    try {
      const reply = await this.socket.request(
        "voice.add",
        { name, language: this.language(), content_type: contentType, shared: $("voice-shared").checked },
        await blob.arrayBuffer(),
      );
      this.trace.saved.push(reply.voice.id);
      this.status(`Saved “${reply.voice.name}” (${reply.voice.duration_s.toFixed(1)} s of your voice). It is selected.`);
      await this.refresh();
      $("voice-select").value = reply.voice.id;
    } catch (err) {
      this.status(err.message, true);
    }
  }

  upload(file) {
    if (file) this.addVoice(file, file.type || "");
  }

  async renameVoice(v) {
    const name = prompt("New name for this voice", v.name);
    if (name) await this.updateVoice(v.id, { name });
  }

  async updateVoice(voiceId, fields) {
    try {
      await this.socket.request("voice.update", { voice_id: voiceId, ...fields });
      await this.refresh();
    } catch (err) {
      this.status(err.message, true);
    }
  }

  async deleteVoice(v) {
    if (!confirm(`Delete the voice “${v.name}”?`)) return;
    try {
      await this.socket.request("voice.delete", { voice_id: v.id });
      await this.refresh();
    } catch (err) {
      this.status(err.message, true);
    }
  }

  // ---- recording ----------------------------------------------------------------------------------

  async startRecording() {
    if (this.recording) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    } catch (err) {
      this.status(`The microphone could not be opened (${err.name}).`, true);
      return;
    }
    const recorder = new MediaRecorder(stream);
    const ctx = new AudioContext();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    ctx.createMediaStreamSource(stream).connect(analyser);
    const chunks = [];
    const started = performance.now();
    const levels = new Float32Array(analyser.fftSize);
    recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
    const rec = { stream, recorder, ctx, chunks, timer: null };
    rec.timer = setInterval(() => {
      analyser.getFloatTimeDomainData(levels);
      let peak = 0;
      for (const x of levels) peak = Math.max(peak, Math.abs(x));
      $("record-level").value = peak;
      const seconds = (performance.now() - started) / 1000;
      this.trace.recordedS = seconds;
      $("record-time").textContent = `${seconds.toFixed(1)} s`;
      $("record-stop").disabled = seconds < RECORD_MIN_S;
      if (seconds >= RECORD_MAX_S) this.stopRecording();
    }, 100);
    rec.done = new Promise((resolve) => (recorder.onstop = resolve));
    recorder.start(250);
    this.recording = rec;
    $("record-start").disabled = true;
    this.status(`Recording: read the sentence aloud. Stop after ${RECORD_MIN_S} s or more (${RECORD_MAX_S} s at most).`);
  }

  async stopRecording() {
    const rec = this.recording;
    if (!rec) return;
    this.recording = null;
    clearInterval(rec.timer);
    rec.recorder.stop();
    await rec.done;
    for (const t of rec.stream.getTracks()) t.stop();
    rec.ctx.close();
    $("record-start").disabled = false;
    $("record-stop").disabled = true;
    $("record-level").value = 0;
    const type = rec.recorder.mimeType || "audio/webm";
    await this.addVoice(new Blob(rec.chunks, { type }), type);
  }

  // ---- characters ---------------------------------------------------------------------------------

  renderCharacters() {
    const select = $("character-select");
    const chosen = select.value;
    select.replaceChildren(new Option("None: the assistant", ""));
    for (const c of this.characters) select.append(new Option(c.example ? `${c.name} (example)` : c.name, c.id));
    select.value = this.characters.some((c) => c.id === chosen) ? chosen : "";
    const list = $("character-list");
    list.replaceChildren();
    for (const c of this.characters) {
      const li = document.createElement("li");
      const title = document.createElement("span");
      title.textContent = `${c.name}${c.example ? " · example" : ""}${c.shared ? " · shared" : ""}`;
      li.append(title);
      if (c.mine) li.append(button("Edit", () => this.editCharacter(c)), button("Delete", () => this.deleteCharacter(c)));
      list.append(li);
    }
  }

  editCharacter(c) {
    this.editing = c.id;
    $("character-form-title").textContent = `Edit “${c.name}”`;
    $("character-name").value = c.name;
    $("character-persona").value = c.persona;
    $("character-greeting").value = c.greeting;
    $("character-voice").value = c.voice_id || "";
  }

  async saveCharacter() {
    const character = {
      name: $("character-name").value,
      persona: $("character-persona").value,
      greeting: $("character-greeting").value,
      voice_id: $("character-voice").value || null,
      language: this.language(),
    };
    try {
      const fields = this.editing ? { character_id: this.editing, character } : { character };
      const reply = await this.socket.request(this.editing ? "character.update" : "character.create", fields);
      this.editing = null;
      $("character-form-title").textContent = "New character";
      for (const id of ["character-name", "character-persona", "character-greeting"]) $(id).value = "";
      await this.refresh();
      $("character-select").value = reply.character.id;
      this.status(`Saved the character “${reply.character.name}”. It is selected for the next call.`);
    } catch (err) {
      this.status(err.message, true);
    }
  }

  async deleteCharacter(c) {
    if (!confirm(`Delete the character “${c.name}”?`)) return;
    try {
      await this.socket.request("character.delete", { character_id: c.id });
      await this.refresh();
    } catch (err) {
      this.status(err.message, true);
    }
  }

  // ---- reading aloud ------------------------------------------------------------------------------

  async readAloud() {
    const voiceId = $("voice-select").value;
    if (!voiceId) {
      this.status("Choose one of your voices above first: reading aloud clones a voice.", true);
      return;
    }
    this.ttsChunks = [];
    $("tts-read").disabled = true;
    this.status("Reading…");
    try {
      const done = await this.socket.request("tts.read", {
        voice_id: voiceId,
        text: $("tts-text").value,
        language: this.language(),
      });
      const url = URL.createObjectURL(wavBlob(this.ttsChunks, TTS_RATE_HZ));
      $("tts-audio").src = url;
      $("tts-audio").hidden = false;
      $("tts-download").href = url;
      $("tts-download").hidden = false;
      this.status(`Read ${done.audio_s.toFixed(1)} s of speech.`);
    } catch (err) {
      this.status(err.message, true);
    } finally {
      $("tts-read").disabled = false;
    }
  }

  onTtsProgress(event) {
    if (event.type === "tts.queued") this.status(`Waiting for the model: number ${event.position} in line.`);
    else this.ttsChunks.push(base64ToF32(event.audio));
  }
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

/** 16-bit mono WAV of float chunks, for playing and downloading a reading. */
function wavBlob(chunks, rate) {
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
