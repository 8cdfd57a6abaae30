// One call over WebRTC (the default media path): microphone and camera go to the server as tracks
// (Opus with the browser's echo cancellation and noise suppression, VP8 at one frame or two a second),
// the reply comes back as a track played by an <audio> element, and the events travel on a data channel.
// The realtime WebSocket only signals: `webrtc.config` → queue → `session.init` + `webrtc.offer` →
// `webrtc.answer`, and at the end `session.closed`. Everything else is `Call`'s (call.js).
//
// If negotiation fails before the call starts, `onFallback` is called so the page can retry over the
// WebSocket path, and the failure is remembered for this tab (sessionStorage) so that its next calls go
// there at once. The attempt is bounded by what ICE does: it fails as soon as ICE says "failed", and
// when no candidate pair has had a single answer ICE_NO_ANSWER_MS after the server's answer (no UDP path
// between browser and server), rather than after the whole NEGOTIATION_TIMEOUT_MS.
//
// What is measured (in `trace.rtc`, from `getStats()` every second): the reply track's inbound-rtp
// bytes, samples received, audio energy and level, jitter, concealed samples and concealment events
// (`trace.underruns`: each is a gap the jitter buffer filled with made-up audio), the media bytes sent,
// and the transport's bytes each way.
// An analyser on the reply track tells when the assistant is audible (`heardMs`) and proves barge-in
// silences it (`audibleAfterFlush`: analyser ticks with reply audio after a flush and its grace time).

import { Call } from "./call.js";
import { LevelMeter, meterFor } from "./levels.js";
import { SUBPROTOCOL, clientStats, realtimeUrl, webrtcOffer } from "./protocol.js";

const NEGOTIATION_TIMEOUT_MS = 15000;
const ICE_NO_ANSWER_MS = 4000; // after the answer: no candidate pair answered by then means no path
const ICE_POLL_MS = 250;
const FALLBACK_KEY = "omni.webrtcFallback"; // sessionStorage: why WebRTC failed in this tab
const GATHER_TIMEOUT_MS = 3000;
const LEVEL_EVERY_MS = 50;
const RTC_STATS_EVERY_MS = 1000;
const AUDIBLE_RMS = 0.003;
const QUIET_MS = 400; // reply audio quiet this long after the reply is done: playback has drained
const FALLBACK_CODES = new Set(["webrtc_failed", "invalid_sdp", "timeout"]);
// One camera frame a second reaches the model: send no more than that costs.
const CAMERA_ENCODING = { maxFramerate: 2, maxBitrate: 60000, scaleResolutionDownBy: 2 };
// A shared screen at full resolution, so its text stays legible; still at most 2 frames a second.
const SCREEN_ENCODING = { maxFramerate: 2, maxBitrate: 1200000, scaleResolutionDownBy: 1 };

export function webrtcSupported() {
  return typeof RTCPeerConnection === "function";
}

/** Why WebRTC could not connect earlier in this tab, or "" (then it is worth trying). */
export function rememberedFallback() {
  try {
    return sessionStorage.getItem(FALLBACK_KEY) || "";
  } catch {
    return "";
  }
}

export function forgetFallback() {
  try {
    sessionStorage.removeItem(FALLBACK_KEY);
  } catch {
    // storage blocked: nothing was remembered either
  }
}

function rememberFallback(reason) {
  try {
    sessionStorage.setItem(FALLBACK_KEY, reason);
  } catch {
    // storage blocked: the next call tries WebRTC again
  }
}

export class RtcCall extends Call {
  constructor(options) {
    super(options);
    this.onFallback = options.onFallback;
    this.pc = null;
    this.channel = null;
    this.cameraSender = null;
    this.micSender = null;
    this.iceServers = [];
    this.remoteAudio = null;
    this.analyser = null;
    this.flushedAt = null;
    this.statsBase = null;
    this.trace.transport = "webrtc";
    this.trace.rtc = { heardMs: 0, audibleAfterFlushMs: 0 };
  }

  // ---- starting ---------------------------------------------------------------------------------

  async startAudio() {
    this.playbackCtx = new AudioContext(); // only to analyse the tracks; the <audio> element plays the reply
    this.connectMic();
    await this.playbackCtx.resume();
  }

  /** The microphone's level meter (the track itself goes to the server as it is). */
  connectMic() {
    if (this.micSource) this.micSource.disconnect();
    this.micSource = this.playbackCtx.createMediaStreamSource(new MediaStream(this.stream.getAudioTracks()));
    this.micMeter = meterFor(this.micSource);
  }

  connect() {
    const ws = new WebSocket(`${realtimeUrl(location, this.mode)}&transport=webrtc`, [SUBPROTOCOL]);
    this.ws = ws;
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = () => this.onSocketClosed();
  }

  onWebrtcConfig(e) {
    this.iceServers = e.ice_servers || [];
  }

  async onSessionQueueDone() {
    super.onSessionQueueDone(); // session.init, as on the WebSocket path
    this.waitFor("media");
    this.timers.push(setTimeout(() => this.negotiationFailed("timed out"), NEGOTIATION_TIMEOUT_MS));
    try {
      await this.offer();
    } catch (err) {
      this.negotiationFailed(err.message || String(err));
    }
  }

  async offer() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    const [mic] = this.stream.getAudioTracks();
    this.micSender = pc.addTransceiver(mic, { direction: "sendrecv", streams: [this.stream] }).sender;
    const [camera] = this.stream.getVideoTracks();
    if (camera) {
      const transceiver = pc.addTransceiver(camera, { direction: "sendonly", sendEncodings: [CAMERA_ENCODING] });
      this.cameraSender = transceiver.sender;
    }
    this.channel = pc.createDataChannel("events", { ordered: true });
    this.channel.onmessage = (e) => this.onMessage(e.data);
    pc.ontrack = (e) => this.playReply(e.streams[0] || new MediaStream([e.track]));
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") {
        if (this.created) this.finish("The media connection to the server was lost.", true);
        else this.negotiationFailed("no network path to the server: the connection failed");
      }
    };
    pc.oniceconnectionstatechange = () => {
      this.mark(`ice.${pc.iceConnectionState}`);
      if (pc.iceConnectionState === "failed" && !this.created) {
        this.negotiationFailed("no network path to the server: ICE failed");
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await this.gathered(pc);
    this.ws.send(webrtcOffer(pc.localDescription.sdp));
  }

  /** The server takes one offer with every candidate (no trickle): wait, bounded, for gathering. */
  gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState !== "complete") return;
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async onWebrtcAnswer(e) {
    try {
      await this.pc.setRemoteDescription({ type: "answer", sdp: e.sdp });
    } catch (err) {
      this.negotiationFailed(`the answer was refused (${err.message})`);
      return;
    }
    this.watchIce(this.pc);
  }

  /** Give up early when ICE makes no progress: no candidate pair has had an answer within ICE_NO_ANSWER_MS. */
  watchIce(pc) {
    const since = performance.now();
    const check = async () => {
      if (this.created || this.ended || this.pc !== pc) return;
      const state = pc.iceConnectionState;
      if (state === "connected" || state === "completed") return; // DTLS and the channel: the overall bound
      let answered = false;
      for (const s of (await pc.getStats()).values()) {
        if (s.type === "candidate-pair" && (s.responsesReceived > 0 || s.state === "succeeded")) answered = true;
      }
      if (!answered && performance.now() - since > ICE_NO_ANSWER_MS) {
        const seconds = ICE_NO_ANSWER_MS / 1000;
        this.negotiationFailed(`no network path to the server: no ICE candidate pair answered within ${seconds} s`);
        return;
      }
      this.timers.push(setTimeout(check, ICE_POLL_MS));
    };
    check();
  }

  negotiationFailed(reason) {
    if (this.created || this.ended) return;
    this.trace.fallback = reason;
    this.mark("fallback");
    rememberFallback(reason);
    this.ended = true;
    this.teardown();
    if (this.onFallback) this.onFallback(reason);
    else this.view.callEnded(`WebRTC could not connect (${reason}).`, true);
  }

  onError(e) {
    if (!this.created && e.error && FALLBACK_CODES.has(e.error.code)) return this.negotiationFailed(e.error.message);
    super.onError(e);
  }

  onSessionCreated(e) {
    this.captureOriginMs = performance.now(); // the server counts audio from here (one-way delay apart)
    super.onSessionCreated(e);
    this.timers.push(setInterval(() => this.listen(), LEVEL_EVERY_MS));
    this.timers.push(setInterval(() => this.readStats(), RTC_STATS_EVERY_MS));
  }

  // ---- the reply track --------------------------------------------------------------------------

  playReply(stream) {
    if (this.remoteAudio) return;
    // Chrome decodes a remote track only while a media element plays it; the analyser taps the same stream.
    this.remoteAudio = new Audio();
    this.remoteAudio.srcObject = stream;
    this.remoteAudio.play().catch((err) => this.trace.errors.push(`autoplay: ${err.message}`));
    this.analyser = this.playbackCtx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.playbackCtx.createMediaStreamSource(stream).connect(this.analyser);
    this.outMeter = new LevelMeter(this.analyser);
  }

  /** Every 50 ms: is the assistant audible? Drives speaking/listening and the client-side latency. */
  listen() {
    if (!this.analyser) return;
    const buf = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    const now = performance.now();
    const r = this.response;
    const audible = rms > AUDIBLE_RMS;
    this.trace.playedEnergy = Math.max(this.trace.playedEnergy, rms);
    if (audible && this.flushedAt !== null) {
      const rtc = this.trace.rtc;
      rtc.audibleAfterFlushMs = Math.max(rtc.audibleAfterFlushMs, Math.round(now - this.flushedAt));
    }
    if (!r || r.interrupted) return;
    if (audible) {
      this.trace.rtc.heardMs += LEVEL_EVERY_MS;
      r.lastAudibleAt = now;
      if (r.firstAudibleAt === undefined) r.firstAudibleAt = now;
      if (!r.gotAudio) {
        r.gotAudio = true;
        if (this.speechEndAt !== null) {
          this.trace.clientLatencyMs = Math.round(now - this.speechEndAt);
          this.view.showClientLatency(this.trace.clientLatencyMs);
        }
      }
      if (this.state !== "speaking") this.setState("speaking");
    } else if (r.doneAt && now - Math.max(r.lastAudibleAt || 0, r.doneAt) > QUIET_MS && this.state !== "listening") {
      this.replyPlayed();
      this.setState("listening");
    }
  }

  /** Seconds of reply `r` heard: the track plays in real time from its first audible moment. */
  playedS(r) {
    if (r.firstAudibleAt === undefined) return 0;
    const s = (performance.now() - r.firstAudibleAt) / 1000;
    return r.done ? Math.min(s, r.audioS) : s;
  }

  replyAudioS(r, timings) {
    return timings.audio_s || 0;
  }

  onResponseCreated(e) {
    super.onResponseCreated(e);
    this.flushedAt = null;
    if (this.remoteAudio) this.remoteAudio.muted = false;
  }

  onResponseDone(e) {
    if (this.response) this.response.doneAt = performance.now();
    const wasThinking = this.state === "thinking";
    super.onResponseDone(e);
    if (wasThinking) this.setState("thinking"); // audio still on its way; `listen` decides when it is over
  }

  /** Barge-in: the server flushes the reply track; mute what is already in the jitter buffer. */
  interrupt() {
    const r = this.response;
    if (r && !r.interrupted) {
      const playedS = this.playedS(r);
      r.interrupted = true;
      this.replyCut(r, playedS);
    }
    if (this.remoteAudio) {
      this.remoteAudio.muted = true;
      this.trace.rtc.mutedOnFlush = (this.trace.rtc.mutedOnFlush || 0) + 1;
    }
    this.flushedAt = performance.now();
    this.trace.flushes += 1;
  }

  async readStats() {
    if (!this.pc) return;
    const report = await this.pc.getStats();
    const rtc = this.trace.rtc;
    rtc.bytesSent = 0;
    for (const s of report.values()) {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        Object.assign(rtc, {
          bytesReceived: s.bytesReceived,
          totalSamplesReceived: s.totalSamplesReceived,
          concealedSamples: s.concealedSamples,
          concealmentEvents: s.concealmentEvents,
          jitter: s.jitter,
          totalAudioEnergy: s.totalAudioEnergy,
          audioLevel: s.audioLevel,
        });
        if (this.statsBase === null) this.statsBase = s.concealmentEvents || 0;
        this.trace.underruns = (s.concealmentEvents || 0) - this.statsBase;
      } else if (s.type === "outbound-rtp") {
        rtc.bytesSent += s.bytesSent || 0;
      } else if (s.type === "transport") {
        rtc.transportBytesSent = s.bytesSent; // everything each way (SRTP, RTCP, SCTP), without UDP/IP headers
        rtc.transportBytesReceived = s.bytesReceived;
      }
    }
  }

  // ---- controls and media out -------------------------------------------------------------------

  setMuted(muted) {
    this.muted = muted;
    for (const t of this.stream ? this.stream.getAudioTracks() : []) t.enabled = !muted; // sends silence
  }

  setCameraOn(on) {
    super.setCameraOn(on);
    const [camera] = this.stream ? this.stream.getVideoTracks() : [];
    if (this.cameraSender) this.cameraSender.replaceTrack(on ? camera : null); // off: no frames, not black ones
  }

  sendEvent(message) {
    if (this.channel && this.channel.readyState === "open") this.channel.send(message);
  }

  async sendMic(track) {
    track.enabled = !this.muted; // this path mutes the track itself
    if (this.micSender) await this.micSender.replaceTrack(track);
    this.connectMic();
  }

  async sendCamera(track) {
    if (this.cameraSender) await this.cameraSender.replaceTrack(this.cameraOn ? track : null);
  }

  /** The shared screen replaces the camera on its track (no renegotiation), sharp rather than small. */
  async sendScreen(track) {
    if (!this.cameraSender) return;
    const [camera] = this.stream.getVideoTracks();
    await this.cameraSender.replaceTrack(track || (this.cameraOn ? camera : null));
    const params = this.cameraSender.getParameters();
    if (params.encodings && params.encodings.length) {
      Object.assign(params.encodings[0], track ? SCREEN_ENCODING : CAMERA_ENCODING);
      await this.cameraSender.setParameters(params);
    }
  }

  startCamera() {} // the camera travels on its track

  sendStats() {
    if (this.channel && this.channel.readyState === "open" && this.created) {
      this.channel.send(clientStats(this.trace.underruns, this.trace.rtc.heardMs / 1000));
    }
  }

  teardown() {
    super.teardown(); // sends the last client.stats while the channel is still open
    if (this.pc) this.pc.close();
    if (this.remoteAudio) this.remoteAudio.srcObject = null;
  }
}
