"""JSON decoding for request bodies: orjson, with a fallback for NaN and Infinity.

Python's ``json.dumps`` writes ``NaN`` and ``Infinity`` for float NaN and infinities, and
clients built on it send them (``tritonclient`` does for a missing value in an FP64 input).
They are not JSON, and orjson refuses them; the standard library reads them. So a body that
orjson refuses and that holds one of those words is read again by ``json``: slower, but only
for such bodies.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["loads"]

_NON_FINITE = (b"NaN", b"Infinity")


def loads(body: bytes) -> Any:
    """Parse ``body``; raises ``ValueError`` with the parser's message when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if any(word in body for word in _NON_FINITE):
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
        raise ValueError(str(exc)) from None
