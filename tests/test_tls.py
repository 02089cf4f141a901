"""wss:// served directly (--tls-cert/--tls-key), verified by a client that trusts only a test CA."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trio
import trustme
from trio_websocket import open_websocket_url

from callstream.engagevoice.messages import Perspective
from conftest import (
    call_messages,
    expected_stereo,
    metadata,
    random_frames,
    read_audio,
    recordings,
    start_server,
    wait_for_calls,
)

TIMEOUT = 30


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    return ca, cert, key


async def test_wss_call_is_recorded_and_verified(nursery, settings, certificates) -> None:
    ca, cert, key = certificates
    running = await start_server(nursery, replace(settings, tls_cert=cert, tls_key=key))
    url = running.url.replace("ws://", "wss://")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    frames = random_frames(np.random.default_rng(12), 30)
    media = [(p, seq, f) for seq, f in enumerate(frames, 1) for p in Perspective]
    with trio.fail_after(TIMEOUT):
        async with open_websocket_url(url + "/", client_context) as ws:
            for message in call_messages(metadata("tls"), media):
                await ws.send_message(message)
        await wait_for_calls(running, 1)
    [(path, _)] = recordings(running.settings.output_dir)
    np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))


async def test_client_that_does_not_trust_the_certificate_is_refused(nursery, settings, certificates) -> None:
    _, cert, key = certificates
    running = await start_server(nursery, replace(settings, tls_cert=cert, tls_key=key))
    port = int(running.url.rsplit(":", 1)[1])
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname="127.0.0.1")
        with pytest.raises(trio.BrokenResourceError):
            await tls.do_handshake()
        await stream.aclose()
