// Wires the page: settings and buttons in, one `Call` at a time. `window.omni` is the current call's trace.

import { Call, newTrace } from "./call.js";
import { RtcCall, webrtcSupported } from "./rtc.js";
import { CallView } from "./ui.js";
import { VoicesPanel } from "./voices.js";

const $ = (id) => document.getElementById(id);
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
    ...voices.choice(),
  };
}

async function startCall(mode) {
  if (call && !call.ended) return;
  const trace = newTrace();
  window.omni = trace;
  view.callStarting(mode);
  const s = settings();
  if (s.transport === "webrtc" && webrtcSupported()) {
    const onFallback = (reason) => startWebSocketCall(mode, s, trace, reason);
    call = new RtcCall({ mode, settings: s, view, trace, onFallback });
  } else {
    trace.transport = "websocket";
    call = new Call({ mode, settings: s, view, trace });
  }
  await call.start();
}

/** WebRTC did not connect: the same call over the WebSocket path. */
async function startWebSocketCall(mode, s, trace, reason) {
  trace.transport = "websocket";
  view.note(`WebRTC could not connect (${reason}); using the WebSocket instead.`);
  call = new Call({ mode, settings: s, view, trace });
  await call.start();
}

$("voice-call").addEventListener("click", () => startCall("audio"));
$("video-call").addEventListener("click", () => startCall("video"));
$("hangup").addEventListener("click", () => call && call.hangUp());
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
window.addEventListener("pagehide", () => call && !call.ended && call.hangUp());
