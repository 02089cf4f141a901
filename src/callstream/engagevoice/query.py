"""The upgrade request's target: what its query string says about the call, sans-IO.

The platform may put the call's identifiers in the WebSocket URL it is given (``?callId=...``);
`parse_query` reads them with the field-name rules of the Start metadata (`protocol`), so that
the two agree; `build_query` writes such a query, for the simulator and the tests.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from callstream.engagevoice.messages import QueryMetadata
from callstream.engagevoice.protocol import CANONICAL_FIELDS, SECRET_KEY, normalise_key

__all__ = ["QueryMetadata", "build_query", "parse_query"]


def parse_query(target: str) -> QueryMetadata:
    """Read the call's metadata from an upgrade request target (``/any/path?callId=1&...``).

    Keys match case- and style-insensitively. Never raises: bad percent escapes stay as
    written, undecodable bytes become U+FFFD, repeated keys keep their first value in
    ``mapped`` and all values in ``raw``.
    """
    path, _, query = target.partition("#")[0].partition("?")
    mapped: dict[str, str] = {}
    raw: dict[str, list[str]] = {}
    secret: str | None = None
    for key, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        norm = normalise_key(key)
        if norm == SECRET_KEY:
            if secret is None:
                secret = value
            continue
        raw.setdefault(key, []).append(value)
        canonical = CANONICAL_FIELDS.get(norm)
        if canonical is not None and value and canonical not in mapped:
            mapped[canonical] = value
    return QueryMetadata(mapped=mapped, raw=raw, path=path, secret=secret)


def build_query(fields: dict[str, Any]) -> str:
    """``?key=value&...`` (percent-encoded; values through str()), or "" for no fields."""
    if not fields:
        return ""
    return "?" + urlencode([(key, str(value)) for key, value in fields.items()])
