// Which words of a reply were heard, and the call's transcript as text.
//
// The model's text runs ahead of its speech (its TTS speaks text the LLM wrote a moment before, and the
// server sends audio faster than real time), so the page shows a reply's words as they are played, not
// as they arrive. The protocol carries no word timings, so the mapping is by proportion (docs/protocol.md,
// "Which words were heard"):
//   - once the reply's total audio is known (the reply was fully generated), the words heard after
//     `playedS` seconds are the same fraction of its text as `playedS` is of its audio;
//   - before that, the text is spoken at this call's measured rate (characters per second of audio over
//     its replies so far), or a language's typical rate until one reply has been measured;
// never more than the text received, and cut back to a whole word in languages written with spaces.
// A reply cut by barge-in keeps exactly the words its played audio spoke when playback stopped: words
// shown a moment ahead (the page's estimate of the player's position between its reports) go again.

export const TYPICAL_CHARS_PER_S = { en: 14, zh: 4.5 };
const MIN_MEASURED_S = 2; // audio needed before the call's own rate replaces the typical one

/** How many characters of `text` the first `playedS` seconds of its audio spoke. */
export function heardLength(text, playedS, { totalAudioS = null, charsPerS }) {
  if (playedS <= 0 || !text) return 0;
  const n = totalAudioS ? Math.floor((text.length * playedS) / totalAudioS) : Math.floor(playedS * charsPerS);
  if (n >= text.length) return text.length;
  if (!/\s/.test(text)) return n; // Chinese, Japanese: every character is a unit
  if (/\s/.test(text[n])) return n;
  const space = text.lastIndexOf(" ", n);
  return space > 0 ? space : 0;
}

/** One reply as the page hears it: its text as received, and how much of it has been heard. */
export class Reply {
  constructor(id, line) {
    this.id = id;
    this.line = line; // its subtitle line (ui.js)
    this.text = ""; // everything received
    this.shownChars = 0; // how much of it is shown as heard (never shrinks)
    this.interrupted = false;
    this.withdrawn = false; // response.cancelled: the user had only paused, its words were never meant
    this.cut = false; // its heard words are final: interrupted, or the call ended
    this.gotAudio = false;
    this.done = false; // response.done arrived: the text and `audioS` are complete
    this.played = false; // and then it played to the end
    this.audioS = 0;
    this.pushedSamples = 0; // WebSocket path: audio given to the player
    this.playedBase = null; // WebSocket path: the player's played count when this reply's audio began
  }

  /** The words heard after `playedS` seconds of its audio (never fewer than already shown while it plays). */
  heard(playedS, charsPerS) {
    this.shownChars = Math.max(this.shownChars, this.spokenBy(playedS, charsPerS));
    return this.shown();
  }

  /** Cut short after `playedS` seconds of its audio: exactly the words heard, even if more were shown. */
  cutAt(playedS, charsPerS) {
    this.shownChars = this.spokenBy(playedS, charsPerS);
    return this.shown();
  }

  spokenBy(playedS, charsPerS) {
    return heardLength(this.text, playedS, { totalAudioS: this.done ? this.audioS : null, charsPerS });
  }

  shown() {
    return this.text.slice(0, this.shownChars);
  }

  /** What the call's trace keeps of it (`charsPerS`: the speech rate its words were revealed at). */
  summary(playedS, charsPerS) {
    const { id, text, audioS, interrupted, withdrawn } = this;
    const round = (x, places) => Math.round(x * 10 ** places) / 10 ** places;
    const shown = this.shown();
    return { id, text, shown, playedS: round(playedS, 3), audioS, interrupted, withdrawn, charsPerS: round(charsPerS, 2) };
  }
}

/** Characters per second of speech, measured over a call's replies. */
export class SpeechRate {
  constructor(language) {
    this.typical = TYPICAL_CHARS_PER_S[language] || TYPICAL_CHARS_PER_S.en;
    this.chars = 0;
    this.seconds = 0;
  }

  add(chars, audioS) {
    if (audioS > 0 && chars > 0) {
      this.chars += chars;
      this.seconds += audioS;
    }
  }

  charsPerS() {
    return this.seconds >= MIN_MEASURED_S ? this.chars / this.seconds : this.typical;
  }
}

/** The transcript box's lines as plain text, with a heading line. */
export function transcriptText(heading, box) {
  const lines = [...box.querySelectorAll("p")].map((p) => p.textContent.trim()).filter(Boolean);
  return `${heading}\n\n${lines.join("\n")}\n`;
}

/** `m:ss` for a duration in seconds. */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
