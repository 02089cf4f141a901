"""The streaming profile's secret: where a stream may present it and how it is compared.

docs/protocol.md: how the platform sends the secret is undocumented, so a stream may present it in the
upgrade's `Authorization` header (`Bearer <secret>` or the bare value), in a `secret` query
parameter, or, when the upgrade carries neither, in a `secret` field of its first message.
Comparison is constant-time. Nothing here logs or stores the secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path

from callstream.engagevoice.session import message_credential

__all__ = ["message_credential", "read_secret_file", "secret_matches", "upgrade_credential"]

BEARER = "bearer "


def upgrade_credential(headers: Mapping[str, str], query_secret: str | None) -> str | None:
    """The secret presented on the upgrade (header first, then query), or None if none was."""
    value = headers.get("authorization")
    if value is not None:
        value = value.strip()
        return value[len(BEARER) :].strip() if value.lower().startswith(BEARER) else value
    return query_secret


def secret_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison; a missing credential never matches."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def read_secret_file(path: Path) -> str:
    """The secret held in ``path``, surrounding whitespace stripped. Raises `OSError` when the
    file cannot be read and `ValueError` when it holds no secret (an empty secret would let
    ``"secret": ""`` authenticate)."""
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret
