"""Log safety: values from the network cannot forge log lines, and refusals cannot flood the log."""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import trio
from hypothesis import given
from hypothesis import strategies as st

from callstream.engagevoice.query import build_query
from callstream.server.logs import escape_controls
from callstream.server.server import Server, serve
from conftest import RunningServer, call_messages, expect_rejection, metadata, send_all, wait_for_calls
from serverprocess import ServerProcess
from test_auth import SECRET, media

TIMEOUT = 30
FORGED = "2026-01-01 00:00:00,000 ERROR callstream.server: FORGED"
HOSTILE_ID = f"id\r\n{FORGED}\x00\x1b[31m\u2028end"


@given(st.text())
def test_escaped_text_has_no_control_characters_and_plain_text_is_unchanged(text: str) -> None:
    escaped = escape_controls(text)
    assert not any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in escaped)
    if not any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in text):
        assert escaped == text


def test_escapes_are_readable() -> None:
    assert escape_controls("a\r\nb\x00\tc\u2028") == "a\\x0d\\x0ab\\x00\\x09c\\u2028"


def test_hostile_call_ids_cannot_forge_log_lines(tmp_path: Path) -> None:
    """A real server process: a call id with CR/LF, NUL and an ANSI escape, refused (401) and
    recorded; its log keeps one line per record, escaped."""
    server = ServerProcess(tmp_path / "out", "--secret", SECRET)
    try:
        async def calls() -> None:
            with trio.fail_after(TIMEOUT):
                target = "/" + build_query({**metadata(HOSTILE_ID), "secret": "wrong"})
                assert (await expect_rejection(server.url, target)).status == 401
                await send_all(server.url, call_messages(metadata(HOSTILE_ID), media(2)),
                               query={**metadata(HOSTILE_ID), "secret": SECRET})

        trio.run(calls)
        server.wait_for(r"refused id\\x0d\\x0a2026.*FORGED\\x00\\x1b\[31m\\u2028end from .*HTTP 401")
        server.wait_for(r"call id\\x0d\\x0a2026.*FORGED.* ended: status=complete")
    finally:
        assert server.stop() == 0
    log = "".join(server.log)
    assert not [line for line in server.log if line.startswith(FORGED)]
    assert not re.search("[\x00\x1b\r\u2028]", log)


async def test_refusals_are_logged_once_per_interval_with_a_count(nursery, settings, caplog) -> None:
    settings = replace(settings, secret=SECRET)
    server = Server(settings, refusal_log_interval=1.0)
    info = await nursery.start(serve, settings, server)
    running = RunningServer(url=f"ws://127.0.0.1:{info.port}", server=server, settings=settings)
    caplog.set_level(logging.INFO, logger="callstream")

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

    with trio.fail_after(TIMEOUT):
        for i in range(12):
            target = "/" + build_query({**metadata(f"c{i}"), "secret": "wrong"})
            assert (await expect_rejection(running.url, target)).status == 401
        while len(refusals()) < 2:
            await trio.sleep(0.05)
        await send_all(running.url, call_messages(metadata("ok"), media(2)), query={"secret": SECRET})
        await wait_for_calls(running, 1)
    assert server.statistics().calls_rejected == 12
    lines = refusals()
    assert "refused c0 " in lines[0] and len(lines) < 12
    counted = 0  # each refusal is logged, or counted in a line that says how many were held back
    for line in lines:
        if match := re.fullmatch(r"(\d+) more refused \(unauthorized\), not logged one by one", line):
            counted += int(match.group(1))
        else:
            assert re.match(r"refused c\d+ ", line)
            held = re.search(r"\(and (\d+) more refused \(unauthorized\) before it, not logged\)", line)
            counted += 1 + (int(held.group(1)) if held else 0)
    assert counted == 12
    assert lines[-1].endswith("not logged one by one")
