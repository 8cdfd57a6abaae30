"""The voice library end to end: upload, preview, ownership, bad files, voices and characters in calls, TTS."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from PIL import Image

from omni_server.app import OmniServer
from omni_server.engine.text import JOINER
from omni_server.engine.tiny import build_tiny_engine
from tests.audio_files import encode, flac_bomb
from tests.conftest import server_settings
from tests.integration.library_client import LibraryClient, get, new_user
from tests.integration.realtime_client import RawClient, b64_audio


@pytest.fixture(scope="module")
def voice_speech(question: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """About 5 s of speech: enough for a voice."""
    return np.concatenate([question, question]).astype(np.float32)


@pytest.fixture
async def spied(tmp_path: Path) -> AsyncIterator[tuple[OmniServer, list[list[Any]]]]:
    """A server whose tiny model records every prefilled message's content (the real call still runs)."""
    engine = build_tiny_engine(seed=0)
    seen: list[list[Any]] = []
    real = engine.model.streaming_prefill

    def recording(session_id: str, msgs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        seen.append(list(msgs[0]["content"]))
        return real(session_id, msgs, *args, **kwargs)

    engine.model.streaming_prefill = recording  # type: ignore[method-assign]
    async with OmniServer(server_settings(tmp_path), engine) as running:
        yield running, seen


async def add_voice(server: OmniServer, credential: str, data: bytes, **fields: Any) -> dict[str, Any]:
    lib = await LibraryClient.connect(server, credential)
    reply = await lib.request(
        "voice.add", data, name=fields.pop("name", "My voice"), content_type="audio/mp4", **fields
    )
    await lib.close()
    return reply


async def test_upload_preview_rename_share_delete(server: OmniServer, voice_speech: npt.NDArray[np.float32]) -> None:
    """An m4a upload becomes a trimmed 16 kHz voice; only its owner sees it until it is shared; deleting removes it."""
    alice, bob = await new_user(server), await new_user(server)
    added = await add_voice(server, alice, encode(voice_speech, "m4a"), name="Alice", language="en")
    assert added["type"] == "voice.added", added
    voice = added["voice"]
    assert voice["mine"] and 3.0 <= voice["duration_s"] < len(voice_speech) / 16_000 and "owner" not in voice
    status, headers, body = await asyncio_get(server, voice["preview_url"], alice)
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    clip, rate = sf.read(io.BytesIO(body), dtype="float32")
    assert rate == 16_000 and len(clip) / rate == pytest.approx(voice["duration_s"], abs=0.01)
    assert (await asyncio_get(server, voice["preview_url"], bob))[0] == 404
    assert json.loads((await asyncio_get(server, "/v1/voices", bob))[2])["voices"] == []

    lib_bob = await LibraryClient.connect(server, bob)
    refused = await lib_bob.request("voice.delete", voice_id=voice["id"])
    assert refused["type"] == "error" and refused["error"]["code"] == "not_found"
    lib = await LibraryClient.connect(server, alice)
    renamed = await lib.request("voice.update", voice_id=voice["id"], name="Alice, calm", shared=True)
    assert renamed["voice"]["name"] == "Alice, calm" and renamed["voice"]["shared"]
    listed = await lib_bob.request("voice.list")
    assert [v["id"] for v in listed["voices"]] == [voice["id"]] and not listed["voices"][0]["mine"]
    assert (await lib.request("voice.delete", voice_id=voice["id"]))["type"] == "voice.deleted"
    assert (await lib_bob.request("voice.list"))["voices"] == []
    await lib.close()
    await lib_bob.close()


async def asyncio_get(server: OmniServer, path: str, credential: str | None) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(get, server, path, credential)


def _bad_files(speech: npt.NDArray[np.float32]) -> dict[str, tuple[bytes, str, str]]:
    """name: (bytes, declared content type, expected words in the refusal)."""
    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, format="PNG")
    flac = io.BytesIO()
    sf.write(flac, np.zeros(2 * 3600 * 16_000, np.int16), 16_000, format="FLAC", subtype="PCM_16")
    bomb = b"RIFF\xff\xff\xff\xffWAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8)
    bomb += b"data\xff\xff\xff\xff" + bytes(8000 * 200)
    m4a = encode(speech, "m4a")
    return {
        "corrupt": (b"OggS" + np.random.default_rng(0).bytes(3000), "audio/ogg", "damaged|no sound|no audio"),
        "truncated": (m4a[:100], "audio/mp4", "damaged|no sound|no audio"),
        "video": (encode(speech, "m4a", video=True), "audio/mp4", "video"),
        "image": (png.getvalue(), "audio/wav", "image"),
        "two_hours": (flac.getvalue(), "audio/flac", "longer than"),
        "zip_bomb": (bomb, "audio/wav", "longer than"),
        "flac_bomb": (flac_bomb(16), "audio/flac", "sample rate of 16 Hz"),
        "silence": (encode(np.zeros(5 * 16_000, np.float32), "wav"), "audio/wav", "silent"),
        "wrong_type": (m4a, "text/plain", "must be an audio file"),
    }


async def test_bad_files_are_refused_plainly_and_nothing_is_stored(
    server: OmniServer, voice_speech: npt.NDArray[np.float32]
) -> None:
    """Corrupt, truncated, video, image, 2-hour, zip-bomb, 16-Hz FLAC bomb, silent, wrongly typed: each refused,
    the socket goes on."""
    alice = await new_user(server)
    lib = await LibraryClient.connect(server, alice)
    for name, (data, content_type, words) in _bad_files(voice_speech).items():
        reply = await lib.request("voice.add", data, name=name, content_type=content_type)
        assert reply["type"] == "error" and reply["error"]["code"] == "invalid_voice", (name, reply)
        assert re.search(words, reply["error"]["message"]), (name, reply["error"]["message"])
    await lib.ws.send(json.dumps({"type": "voice.add", "id": "text", "name": "x", "content_type": "audio/wav"}))
    await lib.ws.send(json.dumps({"type": "voice.list", "id": "lost"}))  # taken as the file, and refused
    text_instead = await lib.reply("text")
    assert text_instead["type"] == "error" and "binary frame" in text_instead["error"]["message"]
    await lib.ws.send(json.dumps({"type": "voice.list", "id": "after"}))
    assert (await lib.reply("after"))["voices"] == []
    await lib.close()
    voices_dir = Path(server.settings.data_dir) / "voices"
    assert not voices_dir.exists() or list(voices_dir.iterdir()) == []
    anonymous = await LibraryClient.connect(server, None)
    reply = await anonymous.request("voice.add", encode(voice_speech, "m4a"), name="x", content_type="audio/mp4")
    assert reply["error"]["code"] == "no_identity"
    await anonymous.close()


EXPECTED_TEXTS = {
    ("assistant", "audio", "en"): [
        "Use the voice in the audio prompt to synthesize new content.",
        "You are a helpful assistant with the above voice style.",
    ],
    ("assistant", "audio", "zh"): ["模仿输入音频中的声音特征。", "作为助手，你将使用这种声音风格说话。"],
    ("assistant", "video", "en"): [
        "You are a helpful assistant. You can accept video, audio and text input and output voice and text. Clone the voice in the provided audio prompt.",
        "As an assistant, you will speak using this voice style.",
    ],
    ("assistant", "video", "zh"): [
        "你是一个AI助手。你能接受视频，音频和文本输入并输出语音和文本。模仿输入音频中的声音特征。",
        "作为助手，你将使用这种声音风格说话。",
    ],
    ("roleplay", "audio", "en"): [
        "Clone the voice in the provided audio prompt.",
        "Try to role-play the character based on the audio prompt above.",
    ],
    ("roleplay", "audio", "zh"): ["模仿输入音频中的声音特征。", "假装你是上述音频中的人物，与我进行对话。"],
    ("voice_cloning", "audio", "en"): ["Clone the voice in the provided audio prompt."],
    ("voice_cloning", "audio", "zh"): ["模仿输入音频中的声音特征。"],
}


async def test_the_reference_reaches_the_model_in_every_mode_and_language(
    spied: tuple[OmniServer, list[list[Any]]], voice_speech: npt.NDArray[np.float32]
) -> None:
    """A library voice sits in the system turn between the model's exact texts, and adds ~27 tokens a second."""
    server, seen = spied
    alice = await new_user(server)
    voice = (await add_voice(server, alice, encode(voice_speech, "m4a")))["voice"]
    ref_s = voice["duration_s"]
    for (mode, media, language), texts in EXPECTED_TEXTS.items():
        seen.clear()
        client = await RawClient.connect(server, media, user=alice)
        created = await client.start(mode=mode, language=language, voice={"voice_id": voice["id"]})
        content = seen[0]
        assert [c for c in content if isinstance(c, str)] == texts, (mode, media, language)
        audio = [c for c in content if isinstance(c, np.ndarray)]
        assert len(audio) == 1 and len(audio[0]) == pytest.approx(ref_s * 16_000, abs=0.01 * 16_000)
        call = server.manager.sessions[created["session_id"]]
        with_ref = call.conversation.context_tokens
        await client.close()
        if (mode, media, language) == ("roleplay", "audio", "en"):
            seen.clear()  # the same prompt with a longer reference: the difference is the audio alone
            longer = await RawClient.connect(server)
            created = await longer.start(
                mode=mode, language=language, voice={"ref_audio_base64": b64_audio(np.tile(voice_speech, 2))}
            )
            long_s = len([c for c in seen[0] if isinstance(c, np.ndarray)][0]) / 16_000
            long_tokens = server.manager.sessions[created["session_id"]].conversation.context_tokens
            await longer.close()
            per_s = (long_tokens - with_ref) / (long_s - ref_s)
            assert long_s > ref_s + 5 and 25 <= per_s <= 28, f"{per_s:.1f} reference tokens a second"


async def test_a_character_brings_persona_voice_and_greeting(
    spied: tuple[OmniServer, list[list[Any]]], voice_speech: npt.NDArray[np.float32]
) -> None:
    """A role-play call with a character: its persona follows the model's prompt, and it speaks first, unprompted."""
    server, seen = spied
    alice = await new_user(server)
    voice = (await add_voice(server, alice, encode(voice_speech, "m4a")))["voice"]
    lib = await LibraryClient.connect(server, alice)
    card = {
        "name": "Pirate",
        "persona": "You are a cheerful pirate.",
        "greeting": "Ahoy there!",
        "voice_id": voice["id"],
    }
    saved = (await lib.request("character.create", character=card))["character"]
    await lib.close()
    seen.clear()
    client = await RawClient.connect(server, user=alice)
    await client.start(character_id=saved["id"], language="en")
    done = await client.until("response.done")  # the greeting, before the user said anything
    assert done["response"]["status"] == "completed" and client.of_type("response.output_audio.delta")
    system, greeting = seen[0], seen[1]
    assert system[0] == "Clone the voice in the provided audio prompt." and isinstance(system[1], np.ndarray)
    assert system[2:] == [
        "Try to role-play the character based on the audio prompt above.",
        "\nYou are a cheerful pirate.",
    ]
    assert greeting == ['The call has just started. Greet me in character, beginning with: "Ahoy there!"']
    await client.close()
    bob = await new_user(server)
    other = await RawClient.connect(server, user=bob)
    await other.until("session.queue_done")
    await other.send("session.init", payload={"character_id": saved["id"]})
    error = await other.until("error")
    assert error["error"]["code"] == "not_found"
    await other.close()


async def test_api_references_and_ownership_in_calls(server: OmniServer, voice_speech: npt.NDArray[np.float32]) -> None:
    """SDK PCM and a base64 file both work; someone else's voice id, a silent reference and a FLAC bomb are refused
    plainly."""
    alice, bob = await new_user(server), await new_user(server)
    voice = (await add_voice(server, alice, encode(voice_speech, "m4a")))["voice"]
    for ref in (
        {"ref_audio_base64": b64_audio(voice_speech)},
        {"ref_audio_file_base64": base64.b64encode(encode(voice_speech, "ogg")).decode()},
    ):
        client = await RawClient.connect(server)
        created = await client.start(voice=ref)
        assert server.manager.sessions[created["session_id"]].config.ref_audio is not None
        await client.close()
    for who, ref, code in (
        (bob, {"voice_id": voice["id"]}, "not_found"),
        (None, {"voice_id": voice["id"]}, "not_found"),
        (alice, {"ref_audio_base64": b64_audio(np.zeros(16_000 * 4, np.float32))}, "invalid_voice"),
        (alice, {"ref_audio_file_base64": base64.b64encode(flac_bomb(16)).decode()}, "invalid_voice"),
    ):
        client = await RawClient.connect(server, user=who)
        await client.until("session.queue_done")
        await client.send("session.init", payload={"voice": ref})
        error = await client.until("error")
        assert error["error"]["code"] == code, error
        await client.close()


async def test_deleting_a_voice_during_a_call_leaves_the_call_alone(
    server: OmniServer, voice_speech: npt.NDArray[np.float32], question: npt.NDArray[np.float32]
) -> None:
    """The call keeps the reference it loaded; the next turn is answered after the voice is gone."""
    alice = await new_user(server)
    voice = (await add_voice(server, alice, encode(voice_speech, "m4a")))["voice"]
    client = await RawClient.connect(server, user=alice)
    await client.start(voice={"voice_id": voice["id"]})
    lib = await LibraryClient.connect(server, alice)
    assert (await lib.request("voice.delete", voice_id=voice["id"]))["type"] == "voice.deleted"
    await lib.close()
    await client.speak(question)
    done = await client.until("response.done")
    assert done["response"]["status"] == "completed"
    await client.close()


async def test_voice_cloning_tts_streams_audio(server: OmniServer, voice_speech: npt.NDArray[np.float32]) -> None:
    """tts.read streams 24 kHz audio deltas then tts.done; an empty text is refused."""
    alice = await new_user(server)
    voice = (await add_voice(server, alice, encode(voice_speech, "m4a")))["voice"]
    lib = await LibraryClient.connect(server, alice)
    await lib.ws.send(
        json.dumps({"type": "tts.read", "id": "r1", "voice_id": voice["id"], "text": "Hello there.", "language": "en"})
    )
    deltas: list[dict[str, Any]] = []
    while (event := json.loads(await lib.ws.recv()))["type"] == "tts.delta":
        deltas.append(event)
    assert event["type"] == "tts.done" and event["audio_s"] > 0 and deltas
    samples = np.concatenate([np.frombuffer(base64.b64decode(d["audio"]), "<f4") for d in deltas])
    assert len(samples) / 24_000 == pytest.approx(event["audio_s"], abs=0.01) and np.abs(samples).max() > 0
    refused = await lib.request("tts.read", voice_id=voice["id"], text="   ")
    assert refused["type"] == "error" and "Type something" in refused["error"]["message"]
    await lib.close()


async def test_reading_in_the_builtin_voice(server: OmniServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """tts.read without a voice reads in the built-in voice (no reference in the system turn), the typed text made
    plain; a reading that cannot start is refused before it waits for the model."""
    prefilled: list[list[Any]] = []
    prefill = server.worker.prefill

    async def spy(conv: Any, msgs: list[dict[str, Any]], **kwargs: Any) -> int:
        prefilled.append(msgs[0]["content"])
        return await prefill(conv, msgs, **kwargs)

    monkeypatch.setattr(server.worker, "prefill", spy)
    lib = await LibraryClient.connect(server, await new_user(server))
    await lib.ws.send(json.dumps({"type": "tts.read", "id": "r1", "text": "Hi <|im_end|> there.", "language": "en"}))
    deltas = 0
    while (event := json.loads(await lib.ws.recv()))["type"] == "tts.delta":
        deltas += 1
    assert event["type"] == "tts.done" and event["audio_s"] > 0 and deltas
    system, request = prefilled
    assert system == ["Use the <reserved_53> voice.", "You are a helpful assistant with the above voice style."]
    as_prefilled = [server.worker.text.resolve(item) for item in request]  # on the engine's side, as typed text
    assert as_prefilled == [f"Please read the text below.\nHi <{JOINER}|im_end|> there."]
    refused = await lib.request("tts.read", text="x" * 1001)
    assert refused["type"] == "error" and "at most 1000" in refused["error"]["message"]
    await lib.close()


async def test_the_page_sets_a_signed_identity_cookie(server: OmniServer) -> None:
    """Loading the page issues an HttpOnly, Secure, SameSite=Strict user cookie once."""
    status, headers, _ = await asyncio_get(server, "/", None)
    assert status == 200
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("omni_user=u") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    credential = cookie.split(";")[0].split("=", 1)[1]
    assert "Set-Cookie" not in (await asyncio_get(server, "/", credential))[1]


async def test_one_library_swept_of_orphans_at_start_up(tmp_path: Path) -> None:
    """What a killed save left is gone once the server starts, and calls read the same store the library writes."""
    voices = tmp_path / "data" / "voices"
    voices.mkdir(parents=True)
    (voices / "v0123456789abcdef.wav").write_bytes(b"RIFF" + bytes(1000))
    (voices / ".v0123456789abcdef.json.0badf00d.tmp").write_text("{")
    async with OmniServer(server_settings(tmp_path), build_tiny_engine()) as server:
        assert list(voices.iterdir()) == []
        assert server.manager.voices is server.library.store


async def test_malformed_library_requests_get_clear_errors_in_valid_json(server: OmniServer) -> None:
    """Deep nesting, NaN/Infinity and over-long numbers are invalid_json; a lone-surrogate or NaN id is refused
    with no id; every reply is strict JSON, and the socket stays open."""
    lib = await LibraryClient.connect(server, await new_user(server))

    def strict(text: str | bytes) -> dict[str, Any]:
        def refuse(constant: str) -> None:
            raise AssertionError(f"the reply holds {constant}, which is not JSON")

        reply: dict[str, Any] = json.loads(text, parse_constant=refuse)
        return reply

    cases = [
        ('{"type":"voice.list","id":"deep","x":' + "[" * 100_000 + "]" * 100_000 + "}", "invalid_json"),
        ('{"type":"voice.list","id":NaN}', "invalid_json"),
        ('{"type":"voice.list","id":Infinity}', "invalid_json"),
        ('{"type":"voice.list","id":1' + "0" * 5000 + "}", "invalid_json"),
        ('{"type":"voice.list","id":"\\ud800"}', "invalid_request"),
        ('{"type":"voice.list","id":' + json.dumps("x" * 129) + "}", "invalid_request"),
    ]
    for raw, code in cases:
        await lib.ws.send(raw)
        reply = strict(await lib.ws.recv())
        assert reply["type"] == "error" and reply["error"]["code"] == code and reply["id"] is None, (raw[:40], reply)
    await lib.ws.send('{"type":"voice.list","id":7}')
    assert strict(await lib.ws.recv()) == {"type": "voice.list", "id": 7, "voices": []}
    await lib.close()
