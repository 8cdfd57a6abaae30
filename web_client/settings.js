// The page's settings, remembered in localStorage so a reload keeps them: the Settings box's controls, the
// chosen voice and character, the microphone and camera. Never the access token (it lives in an HttpOnly
// cookie the page cannot read) nor anything said in a call.

const KEY = "omni.settings";
const CONTROLS = ["language", "sensitivity", "transport", "instructions", "video-detail"]; // element ids

const $ = (id) => document.getElementById(id);

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(KEY) || "{}");
    return saved && typeof saved === "object" ? saved : {};
  } catch {
    return {}; // unreadable (or storage blocked): start from the defaults
  }
}

const saved = load();

function save() {
  try {
    localStorage.setItem(KEY, JSON.stringify(saved));
  } catch {
    // storage full or blocked (private mode): the page works, it just forgets
  }
}

/** Put the remembered values back into the Settings controls, and remember every later change. */
export function restoreControls() {
  for (const id of CONTROLS) {
    const el = $(id);
    if (typeof saved[id] === "string" && (el.tagName !== "SELECT" || [...el.options].some((o) => o.value === saved[id]))) {
      el.value = saved[id];
    }
    el.addEventListener("change", () => remember(id, el.value));
  }
}

/** A remembered value that is not a control of its own (voice, character, devices). */
export function recall(name) {
  return typeof saved[name] === "string" ? saved[name] : "";
}

export function remember(name, value) {
  saved[name] = value;
  save();
}
