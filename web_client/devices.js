// A call's devices while it runs: the camera it flips or switches, the microphone it switches, the screen it
// shares in place of the camera, and the buttons and pickers that show what is possible. The call supplies
// the transport's side of each change: `sendMic(track)`, `sendCamera(track)`, `sendScreen(track | null)`.

import { canFlip, canShareScreen, facingOf, listDevices, micConstraints, openOtherCamera, openScreen } from "./media.js";

export class CallDevices {
  constructor(call) {
    this.call = call;
    this.facing = ""; // the camera's: "user" (shown mirrored) or "environment"
    this.screenTrack = null; // the shared screen, while it is shared
    this.cameras = [];
    this.onChange = () => this.refresh();
  }

  get stream() {
    return this.call.stream;
  }

  /** The call's media is open: show the self-view, list the devices, follow plugging and unplugging. */
  start() {
    const [camera] = this.stream.getVideoTracks();
    if (camera) {
      this.facing = facingOf(camera, this.call.settings.facing);
      this.showSelf();
    }
    navigator.mediaDevices.addEventListener("devicechange", this.onChange);
    this.refresh();
  }

  stop() {
    navigator.mediaDevices.removeEventListener("devicechange", this.onChange);
    if (this.screenTrack) this.screenTrack.stop();
  }

  /** Flip to the other camera (selfie ↔ back on a phone, the next camera elsewhere). */
  async flip() {
    const [current] = this.stream.getVideoTracks();
    current.stop(); // phones open one camera at a time
    let opened;
    try {
      opened = await openOtherCamera(current, this.cameras);
    } catch (err) {
      await this.reopen(current);
      throw err;
    }
    this.facing = opened.facing;
    this.call.settings.facing = opened.facing;
    await this.useCamera(opened.track);
  }

  /** Switch to a chosen microphone (`kind` "mic") or camera (the device pickers). */
  async use(kind, deviceId) {
    if (kind === "mic") {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: micConstraints(deviceId, true) });
      const [track] = stream.getAudioTracks();
      for (const old of this.stream.getAudioTracks()) {
        old.stop();
        this.stream.removeTrack(old);
      }
      this.stream.addTrack(track);
      await this.call.sendMic(track);
      this.refresh();
      return;
    }
    const [current] = this.stream.getVideoTracks();
    current.stop();
    let track;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: deviceId } } });
      [track] = stream.getVideoTracks();
    } catch (err) {
      await this.reopen(current);
      throw err;
    }
    this.facing = facingOf(track, "");
    await this.useCamera(track);
  }

  /** After a failed switch: the camera that was in use, if it opens again. */
  async reopen(old) {
    const id = old.getSettings().deviceId;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: id ? { deviceId: { ideal: id } } : true });
      await this.useCamera(stream.getVideoTracks()[0]);
    } catch {
      this.refresh(); // no camera now; the call goes on with sound
    }
  }

  /** Put a new camera track in the call's stream, the self-view and (unless a screen is shared) the wire. */
  async useCamera(track) {
    for (const old of this.stream.getVideoTracks()) {
      old.stop();
      this.stream.removeTrack(old);
    }
    track.enabled = this.call.cameraOn;
    this.stream.addTrack(track);
    if (!this.screenTrack) {
      this.showSelf();
      await this.call.sendCamera(track);
    }
    this.refresh();
  }

  /** Share a screen instead of the camera, or stop sharing. */
  async toggleScreen() {
    if (this.screenTrack) return this.stopScreen();
    const track = await openScreen();
    if (this.call.ended) return track.stop();
    this.screenTrack = track;
    track.addEventListener("ended", () => this.stopScreen()); // the browser's own "Stop sharing"
    this.call.trace.sharing = true;
    this.call.mark("screen-share");
    await this.call.sendScreen(track);
    this.call.view.showPreview(new MediaStream([track]), false);
    this.showControls();
  }

  async stopScreen() {
    const track = this.screenTrack;
    if (!track) return;
    this.screenTrack = null;
    track.stop();
    this.call.trace.sharing = false;
    if (this.call.ended) return;
    await this.call.sendScreen(null);
    this.showSelf();
    this.showControls();
  }

  showSelf() {
    this.call.view.showPreview(this.stream, this.facing !== "environment"); // a selfie view is a mirror
  }

  /** The pickers list every device, the ones in use selected (and remembered for the next call). */
  async refresh() {
    if (!this.stream || this.call.ended) return;
    try {
      const devices = await listDevices();
      this.cameras = devices.cameras;
      const [mic] = this.stream.getAudioTracks();
      const [camera] = this.stream.getVideoTracks();
      const micId = (mic && mic.getSettings().deviceId) || "";
      const cameraId = (camera && camera.getSettings().deviceId) || "";
      this.call.view.showDevices(devices, { micId, cameraId });
      this.call.devicesInUse({ micId, cameraId: camera ? cameraId : this.call.settings.cameraId, facing: this.facing });
      this.showControls();
    } catch (err) {
      this.call.trace.errors.push(`devices: ${err.message}`);
    }
  }

  showControls() {
    if (this.call.mode !== "video" || this.call.ended) return;
    const [camera] = this.stream.getVideoTracks();
    this.call.view.setVideoControls({
      flip: canFlip(camera, this.cameras),
      share: canShareScreen(),
      sharing: Boolean(this.screenTrack),
    });
  }
}
