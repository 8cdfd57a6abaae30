// One call over the realtime WebSocket: microphone and camera in, the assistant's speech and words out.
// The call owns its media (streams, two AudioContexts, timers) and frees all of it in `teardown`.
// What it sees is reported to a `view` (ui.js) and recorded in `trace`, which the page exposes on
// `window.omni` so that tests (and curious people) can follow a call.

import {
  OUTPUT_SAMPLE_RATE_HZ,
  INPUT_SAMPLE_RATE_HZ,
  SUBPROTOCOL,
  base64ToF32,
  binaryAudio,
  clientStats,
  closeReasonText,
  decodeServerEvent,
  dispatchServerEvent,
  errorText,
  f32ToBase64,
  inputAppend,
  realtimeUrl,
  sessionClose,
  sessionInit,
} from "./protocol.js";

const FRAME_EVERY_MS = 1000;
const FRAME_MAX_WIDTH = 640;
const FRAME_QUALITY = 0.7;
const STATS_EVERY_MS = 3000;
const CHUNK_S = 0.1; // the capture worklet's chunk length
const HANGUP_WAIT_MS = 2000;

/** Turn-taking sensitivity in words → the server's `turn_detection` knobs. */
export const SENSITIVITY = {
  patient: { threshold: 0.6, silence_ms: 900 },
  normal: { threshold: 0.5, silence_ms: 500 },
  quick: { threshold: 0.4, silence_ms: 300 },
};

export function mediaErrorText(err, video) {
  const what = video ? "camera and microphone" : "microphone";
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return `Access to the ${what} was blocked. Allow it for this site in the browser's settings (the icon next to the address), then start the call again.`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `No ${what} was found. Plug one in (or check that no other app is using it), then try again.`;
    case "NotReadableError":
      return `The ${what} could not be opened: another app may be using it.`;
    default:
      return `The ${what} could not be started (${(err && err.message) || err}).`;
  }
}

export function newTrace() {
  return {
    states: [], // every state the call went through, in order
    events: {}, // count of each server event type
    sentAppends: 0,
    sentFrames: 0,
    playedSamples: 0,
    playedEnergy: 0,
    droppedSamples: 0,
    flushes: 0,
    underruns: 0,
    subtitleChars: 0,
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
  constructor({ mode, settings, view, trace }) {
    this.mode = mode; // "audio" | "video"
    this.settings = settings; // {language, instructions, sensitivity, voiceId, characterId}
    this.view = view;
    this.trace = trace;
    this.state = null;
    this.ws = null;
    this.stream = null;
    this.captureCtx = null;
    this.playbackCtx = null;
    this.playbackNode = null;
    this.timers = [];
    this.muted = false;
    this.cameraOn = mode === "video";
    this.created = false;
    this.ended = false;
    this.hangingUp = false;
    this.pendingFrame = null;
    this.captureOriginMs = null; // performance.now() of the first sample the server got
    this.sentSamples = 0;
    this.response = null; // {id, interrupted, firstAudioAt, gotAudio}
    this.speechEndAt = null;
    this.userStartMs = null;
    this.closedWaiters = [];
    this.startedAt = performance.now();
  }

  // ---- starting ---------------------------------------------------------------------------------

  async start() {
    this.setState("connecting");
    const video = this.mode === "video";
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: video ? { width: { ideal: 640 }, height: { ideal: 480 } } : false,
      });
    } catch (err) {
      this.fail(mediaErrorText(err, video));
      return;
    }
    if (this.ended) return this.teardown(); // hung up while the permission prompt was open
    if (video) this.view.showPreview(this.stream);
    try {
      await this.startAudio();
    } catch (err) {
      this.fail(`Audio could not be started in this browser (${err.message}).`);
      return;
    }
    this.connect();
  }

  async startAudio() {
    this.captureCtx = new AudioContext({ sampleRate: INPUT_SAMPLE_RATE_HZ });
    this.playbackCtx = new AudioContext({ sampleRate: OUTPUT_SAMPLE_RATE_HZ });
    await Promise.all([
      this.captureCtx.audioWorklet.addModule("audio/capture.worklet.js"),
      this.playbackCtx.audioWorklet.addModule("audio/playback.worklet.js"),
    ]);
    const source = this.captureCtx.createMediaStreamSource(this.stream);
    const capture = new AudioWorkletNode(this.captureCtx, "capture", { numberOfInputs: 1, numberOfOutputs: 1 });
    const sink = this.captureCtx.createGain();
    sink.gain.value = 0; // the worklet must reach the destination to be run, but nobody wants to hear themselves
    source.connect(capture).connect(sink).connect(this.captureCtx.destination);
    capture.port.onmessage = (e) => this.onCaptured(e.data);

    this.playbackNode = new AudioWorkletNode(this.playbackCtx, "playback", { outputChannelCount: [1] });
    this.playbackNode.connect(this.playbackCtx.destination);
    this.playbackNode.port.onmessage = (e) => this.onPlayback(e.data);
    await Promise.all([this.captureCtx.resume(), this.playbackCtx.resume()]);
  }

  connect() {
    const ws = new WebSocket(realtimeUrl(location, this.mode), [SUBPROTOCOL]);
    this.ws = ws;
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = () => this.onSocketClosed();
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
    if (this.captureOriginMs === null) this.captureOriginMs = performance.now() - CHUNK_S * 1000;
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
      if (!this.cameraOn || !video.videoWidth || this.ended) return;
      const scale = Math.min(1, FRAME_MAX_WIDTH / video.videoWidth);
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      canvas.toBlob(
        async (blob) => {
          if (!blob || !this.cameraOn) return;
          const bytes = new Uint8Array(await blob.arrayBuffer());
          let binary = "";
          for (let i = 0; i < bytes.length; i += 0x8000) {
            binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
          }
          this.pendingFrame = btoa(binary); // sent with the next audio append; only the latest matters
        },
        "image/jpeg",
        FRAME_QUALITY,
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

  // ---- playback ---------------------------------------------------------------------------------

  onPlayback(msg) {
    const t = this.trace;
    if (msg.type !== "stats") this.mark(`playback.${msg.type}`);
    switch (msg.type) {
      case "started":
        if (this.response && !this.response.interrupted) this.setState("speaking");
        break;
      case "drained":
        if (this.state === "speaking") this.setState("listening");
        break;
      case "flushed":
        t.flushes += 1;
        t.droppedSamples += msg.dropped;
        break;
      case "stats":
        t.playedSamples = msg.played;
        t.playedEnergy = msg.energy;
        t.underruns = msg.underruns;
        break;
      default:
        throw new Error(`unknown playback message ${msg.type}`);
    }
  }

  /** Barge-in: stop speaking at once and drop whatever is queued. */
  interrupt() {
    if (this.response) this.response.interrupted = true;
    if (this.playbackNode) this.playbackNode.port.postMessage({ type: "flush" });
    this.view.markInterrupted();
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
    if (this.captureOriginMs !== null) this.speechEndAt = this.captureOriginMs + e.audio_end_ms;
    const spokenS = (e.audio_end_ms - (this.userStartMs ?? e.audio_end_ms)) / 1000;
    this.trace.userTurns.push(spokenS);
    this.view.userTurnEnded(spokenS);
    this.setState("thinking");
  }

  onResponseCreated(e) {
    this.response = { id: e.response_id, interrupted: false, gotAudio: false };
    this.view.assistantTurnStarted();
    if (this.state !== "speaking") this.setState("thinking");
  }

  onTextDelta(e) {
    if (!this.response || this.response.interrupted || e.response_id !== this.response.id) return;
    this.trace.subtitleChars += e.text.length;
    this.view.appendAssistantText(e.text);
  }

  onAudioDelta(e) {
    const r = this.response;
    if (!r || r.interrupted || e.response_id !== r.id) return; // audio of an abandoned reply
    if (!r.gotAudio) {
      r.gotAudio = true;
      if (this.speechEndAt !== null) {
        this.trace.clientLatencyMs = Math.round(performance.now() - this.speechEndAt);
        this.view.showClientLatency(this.trace.clientLatencyMs);
      }
    }
    const samples = base64ToF32(e.audio);
    this.playbackNode.port.postMessage({ type: "push", samples }, [samples.buffer]);
  }

  onResponseListen() {
    this.interrupt();
    this.setState("listening");
  }

  onResponseDone(e) {
    const response = e.response || {};
    const details = (response.usage && response.usage.input_tokens_details) || {};
    this.trace.visionTokens = details.vision_tokens || 0;
    this.trace.lastTimings = e.timings || null;
    this.view.showTimings(e.timings || {}, response.status);
    if (this.playbackNode) this.playbackNode.port.postMessage({ type: "end" });
    if (this.state === "thinking") this.setState("listening"); // a reply without audio
  }

  onConversationTruncated() {
    this.view.note("The conversation got long, so the assistant now remembers only its last replies.");
  }

  onError(e) {
    const text = errorText(e.error);
    this.trace.errors.push((e.error && e.error.code) || "error");
    this.view.showError(text);
  }

  onSessionClosed(e) {
    this.trace.closedReason = e.reason;
    for (const resolve of this.closedWaiters) resolve();
    if (this.hangingUp) return; // hangUp() finishes
    this.finish(closeReasonText(e.reason), e.reason !== "stopped");
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
