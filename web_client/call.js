// One call over the realtime WebSocket: microphone and camera in, the assistant's speech and words out.
// The call owns its media (streams, two AudioContexts, timers) and frees all of it in `teardown`.
// What it sees is reported to a `view` (ui.js) and recorded in `trace`, which the page exposes on
// `window.omni` so that tests (and curious people) can follow a call.
//
// A reply's words are shown as they are heard, not as they arrive (transcript.js says how text maps to
// audio): a reply cut by barge-in or by the Interrupt button keeps only the words that were played.

import { Orb, meterFor } from "./levels.js";
import { CallDevices } from "./devices.js";
import { CameraUnavailable, mediaErrorText, openCallMedia } from "./media.js";
import {
  OUTPUT_SAMPLE_RATE_HZ,
  SUBPROTOCOL,
  base64ToF32,
  binaryAudio,
  clientStats,
  closeReasonText,
  decodeServerEvent,
  dispatchServerEvent,
  errorText,
  f32ToBase64,
  forceListen,
  inputAppend,
  inputText,
  realtimeUrl,
  sessionClose,
  sessionInit,
} from "./protocol.js";
import { TurnLatency } from "./latency.js";
import { Reply, SpeechRate } from "./transcript.js";

const FRAME_EVERY_MS = 1000;
const FRAME_MAX_WIDTH = 640;
const FRAME_QUALITY = 0.7;
const SCREEN_MAX_WIDTH = 1920; // a shared screen's text stays legible
const SCREEN_QUALITY = 0.85;
const STATS_EVERY_MS = 3000;
const LEVEL_EVERY_MS = 50;
const SLOW_CONNECT_MS = 2000; // still connecting after this: say what the call is waiting for
const HANGUP_WAIT_MS = 2000;
const MAX_TYPED_CHARS = 2000; // as the server's `input.text` limit

/** Turn-taking sensitivity in words → the server's `turn_detection` knobs. */
// `end_of_turn_threshold`: how sure the end-of-turn model must be to end a turn before `silence_ms`.
export const SENSITIVITY = {
  patient: { threshold: 0.6, silence_ms: 1200, end_of_turn_threshold: 0.8 },
  normal: { threshold: 0.5, silence_ms: 800, end_of_turn_threshold: 0.5 },
  quick: { threshold: 0.4, silence_ms: 500, end_of_turn_threshold: 0.35 },
};

const WAITING_FOR = {
  permission: "Waiting for you to allow the microphone in the browser's prompt…",
  server: "Still connecting: waiting for the server to answer…",
  media: "Still connecting: setting up the audio connection (WebRTC)…",
};

export function newTrace() {
  return {
    states: [], // every state the call went through, in order
    events: {}, // count of each server event type
    sentAppends: 0,
    sentFrames: 0,
    lastFrameSize: null, // [width, height] of the last frame sent (WebSocket path)
    playedSamples: 0,
    playedEnergy: 0,
    droppedSamples: 0,
    flushes: 0,
    underruns: 0,
    subtitleChars: 0,
    replies: [], // {id, text, shown, playedS, interrupted, withdrawn}: what was received and what was shown as heard
    typed: 0,
    buttonInterrupts: 0,
    userTurns: [], // seconds of speech in each of the user's turns, as the server's VAD cut them
    visionTokens: 0,
    lastTimings: null,
    clientLatencyMs: null,
    closedReason: null,
    errors: [],
    timeline: [], // [ms since the call started, what happened], the last 200 things
  };
}

export class Call {
  constructor({ mode, settings, view, trace, offerVoiceCall = null, onDevices = null }) {
    this.mode = mode; // "audio" | "video"
    this.settings = settings; // {language, instructions, sensitivity, voiceId, characterId, visionHd, micId, cameraId, facing}
    this.view = view;
    this.trace = trace;
    this.offerVoiceCall = offerVoiceCall; // (message) => void: the camera failed but the microphone works
    this.onDevices = onDevices; // ({micId, cameraId, facing}) => void: remember them
    this.state = null;
    this.ws = null;
    this.stream = null;
    this.captureCtx = null;
    this.playbackCtx = null;
    this.playbackNode = null;
    this.micSource = null;
    this.captureNode = null;
    this.micMeter = null;
    this.outMeter = null;
    this.orb = new Orb(view.orbElement(), trace);
    this.timers = [];
    this.muted = false;
    this.cameraOn = mode === "video";
    this.devices = new CallDevices(this);
    this.created = false;
    this.ended = false;
    this.hangingUp = false;
    this.waitingFor = "permission";
    this.slow = false;
    this.pendingFrame = null;
    this.sentSamples = 0;
    this.response = null; // the reply being heard: see onResponseCreated
    this.flushing = []; // replies interrupted whose `flushed` (how much was played) is still to come
    this.statsAt = null; // performance.now() of the playback worklet's last stats
    this.speechRate = new SpeechRate(settings.language);
    this.userStartMs = null;
    this.closedWaiters = [];
    this.startedAt = performance.now();
    this.latency = new TurnLatency(view, trace); // each turn's latency as heard here (latency.js)
  }

  // ---- starting ---------------------------------------------------------------------------------

  async start() {
    this.setState("connecting");
    this.timers.push(setTimeout(() => this.slowConnect(), SLOW_CONNECT_MS));
    const video = this.mode === "video";
    try {
      this.stream = await openCallMedia(video, this.settings);
    } catch (err) {
      if (err instanceof CameraUnavailable && this.offerVoiceCall) {
        this.fail(err.message);
        this.offerVoiceCall(err.message);
      } else {
        this.fail(mediaErrorText(err, video));
      }
      return;
    }
    if (this.ended) return this.teardown(); // hung up while the permission prompt was open
    try {
      await this.startAudio();
    } catch (err) {
      this.fail(`Audio could not be started in this browser (${err.message}).`);
      return;
    }
    this.timers.push(setInterval(() => this.tick(), LEVEL_EVERY_MS));
    this.waitFor("server");
    this.devices.start();
    this.connect();
  }

  /** Capture at the browser's own rate (the worklet resamples to 16 kHz), play at 24 kHz. */
  async startAudio() {
    this.captureCtx = new AudioContext({ latencyHint: "interactive" });
    this.playbackCtx = new AudioContext({ sampleRate: OUTPUT_SAMPLE_RATE_HZ });
    await Promise.all([
      this.captureCtx.audioWorklet.addModule("audio/capture.worklet.js"),
      this.playbackCtx.audioWorklet.addModule("audio/playback.worklet.js"),
    ]);
    this.captureNode = new AudioWorkletNode(this.captureCtx, "capture", { numberOfInputs: 1, numberOfOutputs: 1 });
    const sink = this.captureCtx.createGain();
    sink.gain.value = 0; // the worklet must reach the destination to be run, but nobody wants to hear themselves
    this.captureNode.connect(sink).connect(this.captureCtx.destination);
    this.captureNode.port.onmessage = (e) => this.onCaptured(e.data);
    this.connectMic();

    this.playbackNode = new AudioWorkletNode(this.playbackCtx, "playback", { outputChannelCount: [1] });
    this.playbackNode.connect(this.playbackCtx.destination);
    this.playbackNode.port.onmessage = (e) => this.onPlayback(e.data);
    this.outMeter = meterFor(this.playbackNode);
    await Promise.all([this.captureCtx.resume(), this.playbackCtx.resume()]);
    await this.micTapped;
    await this.latency.tapOutput(this.playbackCtx, this.playbackNode);
  }

  /** (Re)connect the stream's microphone track to the capture worklet and the level meter. */
  connectMic() {
    if (this.micSource) this.micSource.disconnect();
    this.micSource = this.captureCtx.createMediaStreamSource(this.stream);
    this.micSource.connect(this.captureNode);
    this.micMeter = meterFor(this.micSource);
    this.micTapped = this.latency.tapMic(this.captureCtx, this.micSource).catch((err) => this.trace.errors.push(`meter: ${err.message}`));
  }

  connect() {
    const ws = new WebSocket(realtimeUrl(location, this.mode), [SUBPROTOCOL]);
    this.ws = ws;
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = () => this.onSocketClosed();
  }

  /** What the call waits for while connecting ("permission", "server", "media"); said after 2 s. */
  waitFor(what) {
    this.waitingFor = what;
    if (this.slow && this.state === "connecting") this.setState("connecting", WAITING_FOR[what]);
  }

  slowConnect() {
    if (this.created || this.ended) return; // connected (or over) in time: nothing to say
    this.slow = true;
    this.mark("slow-connect");
    if (this.state === "connecting") this.setState("connecting", WAITING_FOR[this.waitingFor]);
  }

  // ---- controls ---------------------------------------------------------------------------------

  setMuted(muted) {
    this.muted = muted; // silence is still sent, so the server sees the turn end and the call stays alive
  }

  setCameraOn(on) {
    this.cameraOn = on;
    if (this.stream) for (const t of this.stream.getVideoTracks()) t.enabled = on;
    if (!on) this.pendingFrame = null;
  }

  /** The Interrupt button: stop the reply now, here and on the server (`force_listen`). */
  interruptNow() {
    if (!this.created || this.ended || !this.response) return;
    this.sendEvent(forceListen());
    this.trace.buttonInterrupts += 1;
    this.trace.buttonInterrupted = this.response.id;
    this.mark("interrupt-button");
    this.interrupt();
    this.setState("listening");
  }

  /** A typed message, answered like a spoken turn; returns an error sentence, or "" when it was sent. */
  sendText(text) {
    const message = text.trim();
    if (!message) return "Type a message first.";
    if (message.length > MAX_TYPED_CHARS) return `That is ${message.length} characters; ${MAX_TYPED_CHARS} at most.`;
    if (!this.created || this.ended) return "The call is not connected yet.";
    if (this.response && !this.response.interrupted) this.interrupt(); // the new turn replaces what is playing
    this.sendEvent(inputText(message));
    this.trace.typed += 1;
    this.view.userTyped(message);
    this.setState("thinking");
    return "";
  }

  /** A client event during the call (WebSocket path: the socket; WebRTC overrides: the data channel). */
  sendEvent(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(message);
  }

  /** The transport's side of a device change (WebSocket path: the capture worklet; frames come from the preview). */
  async sendMic() {
    this.connectMic();
  }

  async sendCamera() {}

  async sendScreen() {}

  /** The devices in use: kept in the settings, and remembered for the next call. */
  devicesInUse(inUse) {
    Object.assign(this.settings, inUse);
    if (this.onDevices) this.onDevices(inUse);
  }

  /** Asks the server to end the call and waits (bounded) for `session.closed`. */
  async hangUp() {
    if (this.ended) return;
    this.hangingUp = true;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(sessionClose("user_stop"));
      await new Promise((resolve) => {
        this.closedWaiters.push(resolve);
        this.timers.push(setTimeout(resolve, HANGUP_WAIT_MS));
      });
    }
    this.finish("You hung up.");
  }

  // ---- media out --------------------------------------------------------------------------------

  onCaptured(chunk) {
    if (!this.created || this.ended || this.ws.readyState !== WebSocket.OPEN) return;
    if (this.muted) chunk.fill(0);
    const frames = this.pendingFrame ? [this.pendingFrame] : [];
    this.pendingFrame = null;
    // Audio alone goes as a binary message; a camera frame travels in JSON with the audio it belongs to.
    this.ws.send(frames.length ? inputAppend(f32ToBase64(chunk), frames) : binaryAudio(chunk));
    this.sentSamples += chunk.length;
    this.trace.sentAppends += 1;
    this.trace.sentFrames += frames.length;
  }

  startCamera() {
    const video = this.view.previewElement();
    const canvas = document.createElement("canvas");
    const grab = () => {
      const sharing = Boolean(this.devices.screenTrack);
      if ((!this.cameraOn && !sharing) || !video.videoWidth || this.ended) return;
      const scale = Math.min(1, (sharing ? SCREEN_MAX_WIDTH : FRAME_MAX_WIDTH) / video.videoWidth);
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height); // unmirrored: as the camera sees
      canvas.toBlob(
        async (blob) => {
          if (!blob || (!this.cameraOn && !this.devices.screenTrack)) return;
          const bytes = new Uint8Array(await blob.arrayBuffer());
          let binary = "";
          for (let i = 0; i < bytes.length; i += 0x8000) {
            binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
          }
          this.pendingFrame = btoa(binary); // sent with the next audio append; only the latest matters
          this.trace.lastFrameSize = [canvas.width, canvas.height];
        },
        "image/jpeg",
        sharing ? SCREEN_QUALITY : FRAME_QUALITY,
      );
    };
    grab();
    this.timers.push(setInterval(grab, FRAME_EVERY_MS));
  }

  sendStats() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.created) {
      this.ws.send(clientStats(this.trace.underruns, this.trace.playedSamples / OUTPUT_SAMPLE_RATE_HZ));
    }
  }

  // ---- levels and the words heard ---------------------------------------------------------------

  /** Every 50 ms: the orb follows both voices, and the subtitles follow the reply's audio. */
  tick() {
    const mic = this.muted || !this.micMeter ? 0 : this.micMeter.level();
    this.orb.show(mic, this.outMeter ? this.outMeter.level() : 0);
    const r = this.response;
    if (r && !r.interrupted && !r.played) this.showHeard(r, this.playedS(r));
  }

  /** Seconds of reply `r` played so far (WebSocket path: the playback worklet's count since it began). */
  playedS(r) {
    if (r.playedBase === null) return 0;
    const counted = this.trace.playedSamples - r.playedBase;
    const since = this.statsAt ? ((performance.now() - this.statsAt) / 1000) * OUTPUT_SAMPLE_RATE_HZ : 0;
    const playing = this.state === "speaking" ? since : 0;
    return Math.min(r.pushedSamples, counted + playing) / OUTPUT_SAMPLE_RATE_HZ;
  }

  showHeard(r, playedS) {
    this.view.setAssistantText(r.line, r.heard(playedS, this.speechRate.charsPerS()));
  }

  /** The reply finished playing in full: all its words were heard, and they measure the speech rate. */
  replyPlayed() {
    const r = this.response;
    if (!r || r.interrupted || r.played || !r.done) return;
    r.played = true;
    r.shownChars = r.text.length;
    this.view.setAssistantText(r.line, r.text);
    this.speechRate.add(r.text.length, r.audioS);
    this.recordReply(r.summary(r.audioS, this.speechRate.charsPerS()));
  }

  /** A reply cut short: keep the words heard after `playedS` seconds, mark it interrupted. */
  replyCut(r, playedS) {
    if (r.cut) return;
    r.cut = true;
    this.view.setAssistantText(r.line, r.cutAt(playedS, this.speechRate.charsPerS()));
    this.view.markInterrupted(r.line);
    this.recordReply(r.summary(playedS, this.speechRate.charsPerS()));
  }

  recordReply(summary) {
    this.trace.replies.push(summary);
    if (this.trace.replies.length > 20) this.trace.replies.shift();
  }

  // ---- playback ---------------------------------------------------------------------------------

  onPlayback(msg) {
    const t = this.trace;
    if (msg.type !== "stats") this.mark(`playback.${msg.type}`);
    switch (msg.type) {
      case "started":
        if (this.response && !this.response.interrupted) this.setState("speaking");
        break;
      case "drained":
        this.replyPlayed();
        if (this.state === "speaking") this.setState("listening");
        break;
      case "flushed": {
        t.flushes += 1;
        t.droppedSamples += msg.dropped;
        const r = this.flushing.shift();
        if (r) this.replyCut(r, Math.max(0, r.pushedSamples - msg.dropped) / OUTPUT_SAMPLE_RATE_HZ);
        break;
      }
      case "stats":
        t.playedSamples = msg.played;
        t.playedEnergy = msg.energy;
        t.underruns = msg.underruns;
        this.statsAt = performance.now();
        break;
      default:
        throw new Error(`unknown playback message ${msg.type}`);
    }
  }

  /** Barge-in: stop speaking at once and drop whatever is queued; the words heard are kept. */
  interrupt() {
    const r = this.response;
    if (r && !r.interrupted) {
      r.interrupted = true;
      this.flushing.push(r); // the worklet's `flushed` says exactly how much of it was played
    }
    this.latency.interrupted();
    if (this.playbackNode) this.playbackNode.port.postMessage({ type: "flush" });
  }

  // ---- server events ----------------------------------------------------------------------------

  onMessage(raw) {
    let event;
    try {
      event = decodeServerEvent(raw);
      this.trace.events[event.type] = (this.trace.events[event.type] || 0) + 1;
      if (event.type !== "response.output_text.delta") this.mark(event.type);
      dispatchServerEvent(event, this);
    } catch (err) {
      console.error("bad server event", err);
      this.trace.errors.push(String(err.message || err));
    }
  }

  onSessionQueued(e) {
    if (e.reason === "starting") {
      this.setState("starting", "The server is loading its model; the call starts when it is ready.");
      return;
    }
    this.setState("queued", `You are number ${e.position} in line (about ${Math.ceil(e.estimated_wait_s)} s).`);
  }

  onSessionQueueDone() {
    const s = this.settings;
    this.ws.send(
      sessionInit({
        language: s.language,
        instructions: s.instructions,
        turnDetection: SENSITIVITY[s.sensitivity],
        voiceId: s.voiceId,
        characterId: s.characterId,
        visionHd: this.mode === "video" && s.visionHd,
      }),
    );
  }

  onSessionCreated(e) {
    this.created = true;
    this.view.showEngine(e.engine || {});
    this.view.startTimer();
    this.setState("listening");
    if (this.mode === "video") this.startCamera();
    this.timers.push(setInterval(() => this.sendStats(), STATS_EVERY_MS));
  }

  onSpeechStarted(e) {
    this.userStartMs = e.audio_start_ms;
    if (this.state === "speaking" || this.state === "thinking") this.interrupt();
    this.setState("listening");
    this.view.userTurnStarted();
  }

  onSpeechStopped(e) {
    const spokenS = (e.audio_end_ms - (this.userStartMs ?? e.audio_end_ms)) / 1000;
    this.trace.userTurns.push(spokenS);
    this.view.userTurnEnded(spokenS);
    this.latency.speechStopped();
    this.setState("thinking");
  }

  onResponseCreated(e) {
    if (this.response && !this.response.interrupted && !this.response.played) this.interrupt(); // one reply at a time
    this.response = new Reply(e.response_id, this.view.assistantTurnStarted());
    if (this.state !== "speaking") this.setState("thinking");
  }

  onTextDelta(e) {
    const r = this.response;
    if (!r || r.interrupted || e.response_id !== r.id) return;
    this.trace.subtitleChars += e.text.length;
    r.text += e.text;
  }

  onAudioDelta(e) {
    const r = this.response;
    if (!r || r.interrupted || e.response_id !== r.id) return; // audio of an abandoned reply
    if (!r.gotAudio) {
      r.gotAudio = true;
      r.playedBase = this.trace.playedSamples;
    }
    this.latency.audioArrived();
    const samples = base64ToF32(e.audio);
    r.pushedSamples += samples.length;
    this.playbackNode.port.postMessage({ type: "push", samples }, [samples.buffer]);
  }

  onResponseListen() {
    this.interrupt();
    this.setState("listening");
  }

  /** The user had only paused: the reply is withdrawn, its words removed, and the turn goes on. */
  onResponseCancelled(e) {
    if (!this.response || e.response_id !== this.response.id) return;
    this.response.withdrawn = true;
    this.interrupt();
    this.view.removeLine(this.response.line);
  }

  onResponseDone(e) {
    const response = e.response || {};
    const details = (response.usage && response.usage.input_tokens_details) || {};
    this.trace.visionTokens = details.vision_tokens || 0;
    this.trace.lastTimings = e.timings || null;
    this.view.showTimings(e.timings || {}, response.status);
    const r = this.response;
    if (r && r.id === response.id) {
      r.done = true;
      r.audioS = this.replyAudioS(r, e.timings || {});
      if (r.audioS === 0 && !r.interrupted) this.replyPlayed(); // a reply without audio: all its words are "heard"
    }
    this.latency.responseDone(e.timings, response.status);
    if (this.playbackNode) this.playbackNode.port.postMessage({ type: "end" });
    if (this.state === "thinking") this.setState("listening"); // a reply without audio
  }

  /** A finished reply's audio length (WebSocket path: what arrived; WebRTC: the server's count). */
  replyAudioS(r) {
    return r.pushedSamples / OUTPUT_SAMPLE_RATE_HZ;
  }

  onConversationTruncated() {
    this.view.note("The conversation got long, so the assistant now remembers only its last replies.");
  }

  onError(e) {
    const text = errorText(e.error);
    this.trace.errors.push((e.error && e.error.code) || "error");
    if (this.created) this.view.showError(text);
    else this.failMessage = text; // said when the call ends, next to the call buttons
  }

  onSessionClosed(e) {
    this.trace.closedReason = e.reason;
    for (const resolve of this.closedWaiters) resolve();
    if (this.hangingUp) return; // hangUp() finishes
    const message = e.reason === "error" && this.failMessage ? this.failMessage : closeReasonText(e.reason);
    this.finish(message, e.reason !== "stopped");
  }

  onSocketClosed() {
    if (this.ended) return;
    if (!this.created) this.finish("Could not reach the server, or it refused the call. Check that it is running and reload this page.", true);
    else if (!this.hangingUp) this.finish("The connection to the server was lost.", true);
  }

  // ---- ending -----------------------------------------------------------------------------------

  fail(message) {
    this.finish(message, true);
  }

  finish(message, isError = false) {
    if (this.ended) return;
    const r = this.response;
    if (r && !r.played && !r.cut) {
      if (!r.interrupted) r.interrupted = true;
      this.replyCut(r, this.playedS(r)); // hung up mid-reply: the words heard so far stay
    }
    this.ended = true;
    this.setState("ended");
    this.view.callEnded(message, isError);
    this.teardown();
  }

  teardown() {
    this.sendStats();
    for (const t of this.timers) {
      clearInterval(t);
      clearTimeout(t);
    }
    this.timers = [];
    this.devices.stop();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "hang up");
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    for (const ctx of [this.captureCtx, this.playbackCtx]) if (ctx && ctx.state !== "closed") ctx.close();
    this.view.stopTimer();
  }

  mark(what) {
    const line = this.trace.timeline;
    line.push([Math.round(performance.now() - this.startedAt), what]);
    if (line.length > 200) line.shift();
  }

  setState(state, detail = "") {
    if (state === this.state && !detail) return;
    if (state !== this.state) this.trace.states.push(state);
    this.state = state;
    this.view.setState(state, detail);
  }
}
