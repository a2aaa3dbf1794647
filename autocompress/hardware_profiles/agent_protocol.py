"""What both ends of the timing agent's HTTP protocol agree on: the token's form and how long an
error message may get.

The server is :mod:`~autocompress.hardware_profiles.agent`, the client
:mod:`~autocompress.hardware_profiles.remote`; keeping these rules here lets neither import the
other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_ERROR_CHARS", "check_token", "clip_message"]

#: Longest error message sent or shown: a runtime's message can quote a whole model.
MAX_ERROR_CHARS = 600


def check_token(token: Any, *, where: str) -> str | None:
    """None (no token) or a non-empty str of printable ASCII without spaces, since it goes into
    an HTTP header verbatim."""
    if token is None:
        return None
    if not isinstance(token, str) or not token or not all("!" <= c <= "~" for c in token):
        raise ValueError(
            f"The 'token' parameter of {where} must be None or a non-empty str of printable "
            f"ASCII characters without spaces. Got {'a str' if isinstance(token, str) else token!r}"
            " instead."
        )
    return token


def clip_message(text: str) -> str:
    """``text`` cut to :data:`MAX_ERROR_CHARS` characters (ending in ``...`` when cut)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
