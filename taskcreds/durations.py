"""Go-style durations (``90s``, ``15m``, ``1h30m``), as Kubernetes users write them."""

from __future__ import annotations

import re

__all__ = ["DurationError", "parse_duration", "format_duration", "MAX_SECONDS", "MAXIMUM"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
ACCEPTED = "a Go-style duration such as 90s, 15m or 1h30m (units ms, s, m, h)"
#: The longest duration taken anywhere (TTLs, maxTTL, max-duration, the chart's 10-year webhook CA):
#: 10 years. Longer ones are mistakes, and near the limits of datetime/timedelta they crashed deep
#: inside providers (100000000000h: OverflowError in the JWT provider, an endless 503).
MAXIMUM = "87600h"
MAX_SECONDS = 87600 * 3600.0


class DurationError(ValueError):
    """A value that is not a Go-style duration; the message says what would be accepted."""


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise DurationError naming the value otherwise.

    Zero and negative durations are refused: every duration we take is a lifetime; so are durations
    longer than :data:`MAXIMUM` (10 years).
    """
    if not isinstance(text, str) or not text or len(text) > 32:
        raise DurationError(f"{text!r} is not {ACCEPTED}")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise DurationError(f"{text!r} is not {ACCEPTED}")
    if total <= 0:
        raise DurationError(f"{text!r} must be longer than zero")
    if total > MAX_SECONDS:
        raise DurationError(f"{text!r} is longer than the maximum {MAXIMUM} (10 years)")
    return total


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling of a whole number of seconds (``5400`` -> ``1h30m``)."""
    whole = int(round(seconds))
    if whole <= 0:
        return f"{int(round(seconds * 1000))}ms"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return out
