"""Real-browser fixtures: Debian's Chromium driven by Playwright, with fake cameras, a fake screen and a fake mic file."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests import speech

CHROMIUM = "/usr/bin/chromium"
FAKE_MEDIA_ARGS = [
    "--use-fake-device-for-media-stream=device-count=2",  # two cameras (and mics), so a camera can be flipped
    "--auto-select-desktop-capture-source=Entire screen",  # getDisplayMedia picks the (fake) screen, 1920x1080
    "--allow-loopback-in-peer-connection",
    "--no-sandbox",
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

LaunchBrowser = Callable[..., AbstractAsyncContextManager[Browser]]


@pytest.fixture(scope="session")
def call_wav(speech_dir: Path) -> Path:
    """The fake mic (48 kHz s16 mono): two utterances, each followed by a short pause, looped by Chromium.

    Each pause (1.7 s, 1.5 s) is long enough for the server to end the turn (800 ms of silence, or sooner
    when the end-of-turn model is sure), start its reply (about 2 s of audio) and play it for longer than
    the resume window (speech that soon would continue the turn), and short enough that the next
    utterance starts while that reply still plays: every reply is barged into, wherever the loop starts.
    """
    first = speech.make_speech_wav(speech.SENTENCES[0], speech_dir / "b1.wav", rate_hz=48000, pad_s=0.3)
    second = speech.make_speech_wav(speech.SENTENCES[1], speech_dir / "b2.wav", rate_hz=48000, pad_s=0.0)
    pause1, pause2 = speech_dir / "pause1.wav", speech_dir / "pause2.wav"
    silence = ["-r", "48000", "-c", "1", "-b", "16", "-n"]
    subprocess.run(["sox", *silence, str(pause1), "trim", "0", "1.4"], check=True)
    subprocess.run(["sox", *silence, str(pause2), "trim", "0", "1.5"], check=True)
    out = speech_dir / "call48k.wav"
    subprocess.run(["sox", str(first), str(pause1), str(second), str(pause2), str(out)], check=True)
    return out


@pytest.fixture
def launch_browser(call_wav: Path) -> LaunchBrowser:
    """`async with launch_browser(fake_ui=True) as browser:` a headless Chromium with fake devices."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is required at /usr/bin/chromium (make test installs it)")

    @asynccontextmanager
    async def launch(*, fake_ui: bool = True) -> AsyncIterator[Browser]:
        args = [*FAKE_MEDIA_ARGS, f"--use-file-for-fake-audio-capture={call_wav}"]
        if fake_ui:
            args.append("--use-fake-ui-for-media-stream")
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                yield browser
            finally:
                await browser.close()

    return launch
