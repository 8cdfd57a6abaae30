// Feedback where the action happened: every control group has its own message line (`<p class="feedback">`
// right after it), so a tap is answered next to the finger, not in a status line far above it. Each line
// shows the latest outcome of its own control: a success replaces an earlier error, `clear` empties it.
// `window.omniFeedback` lists every error shown, for tests.

const $ = (id) => document.getElementById(id);
const shown = [];
window.omniFeedback = shown;

/** Show `text` in the feedback line `id`: kind "info" (progress), "ok" (done) or "error". */
export function say(id, text, kind = "info") {
  const el = $(id);
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = !text;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  if (kind === "error") shown.push({ id, text });
}

export function clear(id) {
  say(id, "");
}

/** A feedback line with an action in it (e.g. "Start a voice call instead"); returns the button. */
export function offer(id, text, actionText, onAction) {
  say(id, `${text} `, "error");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "inline-action";
  button.textContent = actionText;
  button.addEventListener("click", onAction, { once: true });
  $(id).append(button);
  return button;
}
