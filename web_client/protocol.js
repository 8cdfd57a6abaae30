// The realtime wire protocol as the page speaks it (mirrors docs/protocol.md and omni_server/protocol.py).
// Client events are built by the encoders below; server events go through `decodeServerEvent` and then
// the one dispatcher, `dispatchServerEvent`, which rejects types it does not know.

export const SUBPROTOCOL = "map.realtime";
export const REALTIME_PATH = "/v1/realtime";
export const INPUT_SAMPLE_RATE_HZ = 16000;
export const OUTPUT_SAMPLE_RATE_HZ = 24000;

export function realtimeUrl(location, mode) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${REALTIME_PATH}?mode=${encodeURIComponent(mode)}`;
}

// ---- media encoding -------------------------------------------------------------------------------

/** base64 of little-endian float32 samples (the wire format of `input.audio`). */
export function f32ToBase64(samples) {
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  let binary = "";
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
  }
  return btoa(binary);
}

/** Float32Array from base64 of little-endian float32 samples (`response.output_audio.delta.audio`). */
export function base64ToF32(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length - (binary.length % 4));
  for (let i = 0; i < bytes.length; i++) bytes[i] = binary.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

// ---- client events --------------------------------------------------------------------------------

export function sessionInit({
  language = "en",
  instructions = "",
  turnDetection = null,
  mode = "assistant",
  voiceId = "",
  characterId = "",
  visionHd = false,
} = {}) {
  const payload = { mode, language };
  if (instructions) payload.instructions = instructions;
  if (visionHd) payload.config = { vision_hd: true };
  if (voiceId) payload.voice = { voice_id: voiceId };
  if (characterId) payload.character_id = characterId;
  if (turnDetection) payload.turn_detection = { type: "server_vad", barge_in: true, ...turnDetection };
  return JSON.stringify({ type: "session.init", payload });
}

export function inputAppend(audioBase64, videoFrames = []) {
  const input = { audio: audioBase64 };
  if (videoFrames.length) input.video_frames = videoFrames;
  return JSON.stringify({ type: "input.append", input });
}

/** Interrupt the reply now (the SDK's `interrupt()`): an append with no audio, only `force_listen`. */
export function forceListen() {
  return JSON.stringify({ type: "input.append", input: { audio: "", force_listen: true } });
}

/** Ours: a typed message, answered like a spoken turn. */
export function inputText(text) {
  return JSON.stringify({ type: "input.text", text });
}

/** Ours: a WebRTC call's offer, on its signalling socket (docs/webrtc.md). */
export function webrtcOffer(sdp) {
  return JSON.stringify({ type: "webrtc.offer", sdp });
}

export function inputCommit() {
  return JSON.stringify({ type: "input.commit" });
}

export function sessionClose(reason = "user_stop") {
  return JSON.stringify({ type: "session.close", reason });
}

export function clientStats(underruns, playedS) {
  return JSON.stringify({ type: "client.stats", underruns, played_s: Math.round(playedS * 1000) / 1000 });
}

// ---- server events --------------------------------------------------------------------------------

export class ProtocolError extends Error {}

export function decodeServerEvent(raw) {
  if (typeof raw !== "string") throw new ProtocolError("binary frames are not part of this protocol");
  let event;
  try {
    event = JSON.parse(raw);
  } catch (e) {
    throw new ProtocolError(`not JSON: ${e.message}`);
  }
  if (event === null || typeof event !== "object" || typeof event.type !== "string") {
    throw new ProtocolError("an event must be an object with a type");
  }
  return event;
}

/**
 * Calls the handler named after the event (`onSessionCreated`, `onResponseOutputAudioDelta`, ...).
 * Unknown types throw, so a protocol change is noticed instead of silently ignored.
 */
export function dispatchServerEvent(event, h) {
  switch (event.type) {
    case "session.queued":
      return h.onSessionQueued(event);
    case "session.queue_done":
      return h.onSessionQueueDone(event);
    case "session.created":
      return h.onSessionCreated(event);
    case "session.closed":
      return h.onSessionClosed(event);
    case "input.speech_started":
      return h.onSpeechStarted(event);
    case "input.speech_stopped":
      return h.onSpeechStopped(event);
    case "response.created":
      return h.onResponseCreated(event);
    case "response.output_text.delta":
      return h.onTextDelta(event);
    case "response.output_audio.delta":
      return h.onAudioDelta(event);
    case "response.listen":
      return h.onResponseListen(event);
    case "response.cancelled":
      return h.onResponseCancelled(event);
    case "response.done":
      return h.onResponseDone(event);
    case "conversation.truncated":
      return h.onConversationTruncated(event);
    case "error":
      return h.onError(event);
    case "webrtc.config":
      return h.onWebrtcConfig(event);
    case "webrtc.answer":
      return h.onWebrtcAnswer(event);
    default:
      throw new ProtocolError(`unknown server event type ${JSON.stringify(event.type)}`);
  }
}

// ---- words for people -----------------------------------------------------------------------------

const CLOSE_REASONS = {
  stopped: "You hung up.",
  user_stop: "You hung up.",
  disconnected: "The connection to the server was lost.",
  idle_timeout: "The call ended because no sound reached the server for a while.",
  max_duration: "The call reached its maximum length.",
  server_shutdown: "The server is shutting down.",
  error: "The call ended because of an error on the server.",
  queue_full: "The server is full right now. Please try again in a few minutes.",
};

export function closeReasonText(reason) {
  return CLOSE_REASONS[reason] || `The call ended (${reason}).`;
}

export function errorText(error) {
  const code = error && error.code;
  if (code === "queue_full") return "The server is full right now. Please try again in a few minutes.";
  if (code === "server_shutdown") return "The server is shutting down. Please try again later.";
  if (code === "engine_error") return "The server could not load its model. Its operator can see why in its log.";
  return (error && error.message) || "Something went wrong on the server.";
}
