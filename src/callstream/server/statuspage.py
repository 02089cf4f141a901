"""The read-only live-calls page on the metrics endpoint: `/` (HTML) and `/live.js`, which reads
`/calls.json` (see `callstream.server.livecalls`) every `REFRESH_MS` and redraws the table.

Plain HTML and a little JavaScript, no framework and no build step. Call ids come from the
platform: the script only ever sets ``textContent``, never HTML, and the page is served with a
Content-Security-Policy that allows no script but its own.
"""

from __future__ import annotations

from typing import Final

REFRESH_MS: Final = 1000
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'"
)

PAGE: Final = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>callstream: live calls</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  #summary { margin-bottom: 1em; }
  .bad { color: #b00; font-weight: bold; }
  table { border-collapse: collapse; min-width: 40em; }
  th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .meter { display: inline-block; width: 8em; height: .7em; background: #eee; vertical-align: middle; }
  .meter span { display: block; height: 100%; background: #2a7; }
  #stale { color: #b00; }
</style>
</head>
<body>
<h1>callstream: live calls</h1>
<div id="summary">loading&hellip;</div>
<table>
  <thead><tr><th>front end</th><th>call</th><th>session</th><th>duration</th><th>agent (dBFS)</th>
  <th>caller (dBFS)</th><th>write lag (s)</th></tr></thead>
  <tbody id="calls"></tbody>
</table>
<p id="stale"></p>
<script src="live.js"></script>
</body>
</html>
"""

SCRIPT: Final = (
    b"""// Reads calls.json and redraws; text only (textContent), never HTML.
"use strict";
const REFRESH_MS = """
    + str(REFRESH_MS).encode()
    + b""";

function clock(seconds) {
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
  const mm = String(m).padStart(2, "0"), ss = String(s % 60).padStart(2, "0");
  return (h ? h + ":" + mm : m) + ":" + ss;
}

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function level(row, dbfs) {
  const td = cell(row, "", true);
  const meter = document.createElement("span");
  meter.className = "meter";
  const bar = document.createElement("span");
  bar.style.width = (dbfs === null ? 0 : Math.max(0, Math.min(100, (dbfs + 60) / 60 * 100))) + "%";
  meter.appendChild(bar);
  td.appendChild(meter);
  td.appendChild(document.createTextNode(" " + (dbfs === null ? "-" : dbfs.toFixed(0))));
}

function draw(data) {
  const summary = document.getElementById("summary");
  summary.textContent = data.live_calls + " live call" + (data.live_calls === 1 ? "" : "s");
  if (data.front_ends) {
    const parts = Object.keys(data.front_ends).sort().map((name) => name + " " + data.front_ends[name].live);
    summary.textContent += " (" + parts.join(", ") + ")";
  }
  for (const [flag, text] of [["draining", "draining"], ["disk_stalled", "disk stalled"]]) {
    if (data[flag]) {
      const mark = document.createElement("span");
      mark.className = "bad";
      mark.textContent = " \\u00b7 " + text;
      summary.appendChild(mark);
    }
  }
  if (data.shipping) {
    const ship = data.shipping, waiting = document.createElement("span");
    waiting.textContent = " \\u00b7 " + (ship.pending === 0 ? "no recordings waiting for upload" :
      ship.pending + " recording" + (ship.pending === 1 ? "" : "s") + " waiting for upload (" +
      (ship.bytes / 1e6).toFixed(1) + " MB" +
      (ship.oldest_seconds === null ? "" : ", oldest " + clock(ship.oldest_seconds)) + ")");
    if (ship.pending > 0) waiting.className = "bad";
    summary.appendChild(waiting);
  }
  const body = document.getElementById("calls");
  body.replaceChildren();
  if (data.calls === null) {
    cell(body.insertRow(), "per-call rows not known: counts only", false);
    return;
  }
  for (const call of data.calls) {
    const row = body.insertRow();
    cell(row, call.front_end, false);
    cell(row, call.call_id, false);
    cell(row, call.session_id, false);
    cell(row, clock(call.seconds), true);
    level(row, call.agent_dbfs);
    level(row, call.caller_dbfs);
    cell(row, call.lag.toFixed(1), true);
  }
}

async function refresh() {
  const stale = document.getElementById("stale");
  try {
    const response = await fetch("calls.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    stale.textContent = "";
  } catch (error) {
    stale.textContent = "not updated: " + error.message;
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();
"""
)
