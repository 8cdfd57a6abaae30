// Wires the page: settings and buttons in, one `Call` at a time. `window.omni` is the current call's trace.

import { Call, newTrace } from "./call.js";
import { clear, offer, say } from "./feedback.js";
import { screenErrorText } from "./media.js";
import { RtcCall, forgetFallback, rememberedFallback, webrtcSupported } from "./rtc.js";
import { recall, remember, restoreControls } from "./settings.js";
import { CallView } from "./ui.js";
import { VoicesPanel } from "./voices.js";

const $ = (id) => document.getElementById(id);
restoreControls();
const view = new CallView();
let call = null;
const voices = new VoicesPanel(() => $("language").value);
voices.start();

function settings() {
  return {
    language: $("language").value,
    instructions: $("instructions").value.trim(),
    sensitivity: $("sensitivity").value,
    transport: $("transport").value,
    visionHd: $("video-detail").value === "high",
    micId: recall("micId"),
    cameraId: recall("cameraId"),
    facing: recall("facing"),
    ...voices.choice(),
  };
}

function rememberDevices({ micId, cameraId, facing }) {
  if (micId) remember("micId", micId);
  if (cameraId) remember("cameraId", cameraId);
  if (facing) remember("facing", facing);
}

async function startCall(mode) {
  if (call && !call.ended) return;
  clear("call-feedback");
  const trace = newTrace();
  window.omni = trace;
  const s = settings();
  const character = voices.character(s.characterId);
  const title = character ? character.name : mode === "video" ? "Video call" : "Voice call";
  view.callStarting(mode, { title, speaker: character ? character.name : "Assistant" });
  const offerVoiceCall = (message) => offer("call-feedback", message, "Start a voice call instead", () => startCall("audio"));
  const options = { mode, settings: s, view, trace, offerVoiceCall, onDevices: rememberDevices };
  const failedBefore = rememberedFallback();
  if (s.transport === "webrtc" && webrtcSupported() && !failedBefore) {
    const onFallback = (reason) => startWebSocketCall(options, reason);
    call = new RtcCall({ ...options, onFallback });
  } else {
    trace.transport = "websocket";
    if (s.transport === "webrtc" && failedBefore) {
      trace.fallbackRemembered = failedBefore;
      view.note(`Using the WebSocket: WebRTC could not connect earlier in this tab (${failedBefore}).`);
    }
    call = new Call(options);
  }
  await call.start();
}

/** WebRTC did not connect: the same call over the WebSocket path (and the next calls in this tab too). */
async function startWebSocketCall(options, reason) {
  options.trace.transport = "websocket";
  view.note(`WebRTC could not connect (${reason}), so this call uses the WebSocket instead.`);
  call = new Call(options);
  await call.start();
}

/** Run a control's action; a failure is said next to the control, a success clears the line. */
async function act(feedbackId, action, errorText = (err) => err.message || String(err)) {
  try {
    await action();
    clear(feedbackId);
  } catch (err) {
    say(feedbackId, errorText(err), "error");
  }
}

const live = () => call && !call.ended;

$("voice-call").addEventListener("click", () => startCall("audio"));
$("video-call").addEventListener("click", () => startCall("video"));
$("hangup").addEventListener("click", () => call && call.hangUp());
$("interrupt").addEventListener("click", () => live() && call.interruptNow());
$("mute").addEventListener("click", (e) => {
  if (!call) return;
  const muted = e.currentTarget.getAttribute("aria-pressed") !== "true";
  call.setMuted(muted);
  e.currentTarget.setAttribute("aria-pressed", String(muted));
  e.currentTarget.textContent = muted ? "Unmute" : "Mute";
});
$("camera").addEventListener("click", (e) => {
  if (!call) return;
  const on = e.currentTarget.getAttribute("aria-pressed") !== "true";
  call.setCameraOn(on);
  e.currentTarget.setAttribute("aria-pressed", String(on));
  e.currentTarget.textContent = on ? "Camera off" : "Camera on";
});
$("flip").addEventListener("click", () => live() && act("controls-feedback", () => call.devices.flip()));
$("share").addEventListener("click", () => {
  if (live()) act("controls-feedback", () => call.devices.toggleScreen(), screenErrorText);
});
$("mic-select").addEventListener("change", (e) => {
  if (live()) act("devices-feedback", () => call.devices.use("mic", e.target.value));
});
$("camera-select").addEventListener("change", (e) => {
  if (live()) act("devices-feedback", () => call.devices.use("camera", e.target.value));
});
$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const problem = live() ? call.sendText($("text-input").value) : "The call is not connected.";
  if (problem) {
    say("text-feedback", problem, "error");
  } else {
    $("text-input").value = "";
    clear("text-feedback");
  }
});
$("transport").addEventListener("change", forgetFallback); // choosing a path again means trying it again
window.addEventListener("pagehide", () => live() && call.hangUp());
