// The voice library in the page: pick a voice and a character for the next call, record or upload a voice,
// manage your voices and characters, and hear text read in a voice. Talks to `/v1/library` (docs/voices.md);
// the server checks and limits everything, the page only guides, each answer next to the control that
// asked (feedback.js). `window.omniVoices` is a trace for tests.

import { clear, say } from "./feedback.js";
import { base64ToF32 } from "./protocol.js";
import { ReadingPlayer } from "./reading.js";
import { recall, remember } from "./settings.js";

const LIBRARY_PATH = "/v1/library";
const LIBRARY_SUBPROTOCOL = "omni.library";
const RECORD_MIN_S = 5;
const RECORD_MAX_S = 15;

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
    this.trace = { recordedS: 0, saved: [], errors: [] };
    this.reader = new ReadingPlayer(this.trace);
    this.ttsUrl = null;
    this.restored = false; // the remembered voice and character are put back once the lists first arrive
    window.omniVoices = this.trace;
  }

  start() {
    $("record-start").addEventListener("click", () => this.startRecording());
    $("record-stop").addEventListener("click", () => this.stopRecording());
    $("voice-file").addEventListener("change", (e) => this.upload(e.target.files[0]));
    $("character-save").addEventListener("click", () => this.saveCharacter());
    $("tts-read").addEventListener("click", () => this.readAloud());
    $("voice-select").addEventListener("change", (e) => remember("voiceId", e.target.value));
    $("character-select").addEventListener("change", (e) => remember("characterId", e.target.value));
    this.refresh();
  }

  /** What the next call uses: `{voiceId, characterId}` (empty strings: the built-in voice, no character). */
  choice() {
    return { voiceId: $("voice-select").value, characterId: $("character-select").value };
  }

  /** The character chosen by id (for the call's title), or null. */
  character(characterId) {
    return this.characters.find((c) => c.id === characterId) || null;
  }

  /** Say `text` in the feedback line `id` (next to the control that asked); errors are traced. */
  status(id, text, isError = false) {
    say(id, text, isError ? "error" : "ok");
    if (isError) this.trace.errors.push(text);
  }

  async refresh() {
    try {
      this.voices = (await this.socket.request("voice.list")).voices;
      this.characters = (await this.socket.request("character.list")).characters;
    } catch (err) {
      this.status("library-feedback", err.message, true);
      return;
    }
    this.renderVoices();
    this.renderCharacters();
    if (!this.restored) {
      this.restored = true;
      this.select("voice-select", recall("voiceId"));
      this.select("character-select", recall("characterId"));
    }
    clear("library-feedback");
  }

  select(id, value) {
    const el = $(id);
    if (value && [...el.options].some((o) => o.value === value)) el.value = value;
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

  async addVoice(blob, contentType, feedback) {
    const name = $("voice-name").value.trim() || "My voice";
    say(feedback, "Checking the recording…");
    try {
      const reply = await this.socket.request(
        "voice.add",
        { name, language: this.language(), content_type: contentType, shared: $("voice-shared").checked },
        await blob.arrayBuffer(),
      );
      this.trace.saved.push(reply.voice.id);
      this.status(feedback, `Saved “${reply.voice.name}” (${reply.voice.duration_s.toFixed(1)} s of your voice). It is selected.`);
      await this.refresh();
      $("voice-select").value = reply.voice.id;
      remember("voiceId", reply.voice.id);
    } catch (err) {
      this.status(feedback, err.message, true);
    }
  }

  upload(file) {
    if (file) this.addVoice(file, file.type || "", "upload-feedback");
  }

  async renameVoice(v) {
    const name = prompt("New name for this voice", v.name);
    if (name) await this.updateVoice(v.id, { name });
  }

  async updateVoice(voiceId, fields) {
    try {
      await this.socket.request("voice.update", { voice_id: voiceId, ...fields });
      await this.refresh();
      clear("voice-list-feedback");
    } catch (err) {
      this.status("voice-list-feedback", err.message, true);
    }
  }

  async deleteVoice(v) {
    if (!confirm(`Delete the voice “${v.name}”?`)) return;
    try {
      await this.socket.request("voice.delete", { voice_id: v.id });
      await this.refresh();
      this.status("voice-list-feedback", `Deleted “${v.name}”.`);
    } catch (err) {
      this.status("voice-list-feedback", err.message, true);
    }
  }

  // ---- recording ----------------------------------------------------------------------------------

  async startRecording() {
    if (this.recording) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    } catch (err) {
      this.status("record-feedback", `The microphone could not be opened (${err.name}).`, true);
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
    say("record-feedback", `Recording: read the sentence aloud. Stop after ${RECORD_MIN_S} s or more (${RECORD_MAX_S} s at most).`);
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
    await this.addVoice(new Blob(rec.chunks, { type }), type, "record-feedback");
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
      remember("characterId", reply.character.id);
      this.status("character-feedback", `Saved the character “${reply.character.name}”. It is selected for the next call.`);
    } catch (err) {
      this.status("character-feedback", err.message, true);
    }
  }

  async deleteCharacter(c) {
    if (!confirm(`Delete the character “${c.name}”?`)) return;
    try {
      await this.socket.request("character.delete", { character_id: c.id });
      await this.refresh();
      this.status("character-list-feedback", `Deleted “${c.name}”.`);
    } catch (err) {
      this.status("character-list-feedback", err.message, true);
    }
  }

  // ---- reading aloud ------------------------------------------------------------------------------

  /** Read the text in the chosen voice (the built-in one if none): it plays from the first chunk. */
  async readAloud() {
    this.reader.begin(); // first, inside the click: the browser lets this context play
    $("tts-read").disabled = true;
    $("tts-download").hidden = true;
    say("tts-feedback", "Reading…");
    try {
      const done = await this.socket.request("tts.read", {
        voice_id: $("voice-select").value,
        text: $("tts-text").value,
        language: this.language(),
      });
      const wav = await this.reader.end();
      if (this.ttsUrl) URL.revokeObjectURL(this.ttsUrl);
      this.ttsUrl = URL.createObjectURL(wav);
      $("tts-audio").src = this.ttsUrl; // to hear it again
      $("tts-audio").hidden = false;
      $("tts-download").href = this.ttsUrl;
      $("tts-download").hidden = false;
      this.status("tts-feedback", `Read ${done.audio_s.toFixed(1)} s of speech.`);
    } catch (err) {
      this.reader.stop();
      this.status("tts-feedback", err.message, true);
    } finally {
      $("tts-read").disabled = false;
    }
  }

  onTtsProgress(event) {
    if (event.type === "tts.queued") say("tts-feedback", `Waiting for the model: number ${event.position} in line.`);
    else this.reader.push(base64ToF32(event.audio));
  }
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}
