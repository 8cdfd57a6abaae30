// The call's devices: which microphone and camera to open, what to say when they cannot be opened, the
// cameras a person can flip between, and the shared screen. Knows getUserMedia and getDisplayMedia, not
// the call or its transport.

export const AUDIO = { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const CAMERA_SIZE = { width: { ideal: 640 }, height: { ideal: 480 } };
// A shared screen keeps its text legible: full HD at most, few frames (the model sees one a second).
const SCREEN = { width: { max: 1920 }, height: { max: 1080 }, frameRate: { ideal: 2, max: 5 } };

/** The camera was refused or is missing, but the microphone works: a voice call can be offered. */
export class CameraUnavailable extends Error {
  constructor(cause) {
    super(cameraText(cause));
    this.name = "CameraUnavailable";
    this.cause = cause;
  }
}

export function micConstraints(deviceId, exact = false) {
  return deviceId ? { ...AUDIO, deviceId: exact ? { exact: deviceId } : { ideal: deviceId } } : AUDIO;
}

/** A camera by device id, or by facing ("user": the selfie camera, "environment": the one on the back). */
export function cameraConstraints({ deviceId = "", facing = "" } = {}, exact = false) {
  if (deviceId) return { ...CAMERA_SIZE, deviceId: exact ? { exact: deviceId } : { ideal: deviceId } };
  if (facing) return { ...CAMERA_SIZE, facingMode: exact ? { exact: facing } : { ideal: facing } };
  return CAMERA_SIZE;
}

/**
 * The microphone (and in a video call the camera) for a call, preferring the remembered devices. When a
 * video call's camera cannot be opened but the microphone can, throws `CameraUnavailable`.
 */
export async function openCallMedia(video, prefs) {
  const audio = micConstraints(prefs.micId);
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video: video ? cameraConstraints(prefs) : false });
  } catch (err) {
    if (!video) throw err;
    let mic;
    try {
      mic = await navigator.mediaDevices.getUserMedia({ audio });
    } catch {
      throw err; // the microphone fails too: the original error says it
    }
    for (const track of mic.getTracks()) track.stop();
    throw new CameraUnavailable(err);
  }
}

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

function cameraText(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "The camera is blocked for this site, but the microphone is allowed. Allow the camera (the icon next to the address) for a video call, or talk without it.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera was found, but the microphone works.";
    default:
      return "The camera could not be opened (another app may be using it), but the microphone works.";
  }
}

/** The microphones and cameras (labelled once permission is granted). */
export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  return {
    mics: devices.filter((d) => d.kind === "audioinput" && d.deviceId),
    cameras: devices.filter((d) => d.kind === "videoinput" && d.deviceId),
  };
}

/** Which way a camera track faces: "environment" (the back of a phone) or "user" (everything else). */
export function facingOf(track, requested = "") {
  const reported = track.getSettings ? track.getSettings().facingMode : "";
  if (reported) return reported;
  if (/\b(back|rear|environment)\b/i.test(track.label || "")) return "environment";
  return requested || "user";
}

/** Whether this camera can be flipped: another camera exists, or this one offers both facings. */
export function canFlip(track, cameras) {
  const modes = (track && track.getCapabilities && track.getCapabilities().facingMode) || [];
  return cameras.length > 1 || modes.length > 1;
}

/**
 * The other camera: by facing on a phone (selfie ↔ back), otherwise the next camera in the list.
 * Returns a new video track; the caller stops the old one first (phones open one camera at a time).
 */
export async function openOtherCamera(current, cameras) {
  const settings = current.getSettings ? current.getSettings() : {};
  const facing = facingOf(current);
  const next = facing === "environment" ? "user" : "environment";
  if (settings.facingMode) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: cameraConstraints({ facing: next }, true) });
      return { track: stream.getVideoTracks()[0], facing: next };
    } catch {
      // this device reports a facing but has no camera facing the other way: fall through to the list
    }
  }
  const ids = cameras.map((c) => c.deviceId);
  const nextId = ids[(ids.indexOf(settings.deviceId) + 1) % ids.length];
  const stream = await navigator.mediaDevices.getUserMedia({ video: cameraConstraints({ deviceId: nextId }, true) });
  const track = stream.getVideoTracks()[0];
  return { track, facing: facingOf(track, "") };
}

export function canShareScreen() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
}

/** The screen (or a window or tab) the person picks; its video track is marked as text for the encoder. */
export async function openScreen() {
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: SCREEN, audio: false });
  const [track] = stream.getVideoTracks();
  if ("contentHint" in track) track.contentHint = "text"; // keep edges sharp rather than motion smooth
  return track;
}

export function screenErrorText(err) {
  if (err && err.name === "NotAllowedError") return "Screen sharing was cancelled or is blocked for this site.";
  return `The screen could not be shared (${(err && err.message) || err}).`;
}
