"""Loaded by the sidecar's interpreter only when this directory is on its PYTHONPATH (the clock-skew
fault): its wall clock reads ``TASKCREDS_TEST_CLOCK_SKEW`` seconds off, as on a node whose clock
drifted. ``time.time``/``time.time_ns`` and ``datetime.now``/``utcnow``/``today`` are shifted; the
monotonic clock is not (it has no epoch to be wrong about) and neither is OpenSSL's own time check
of certificates (C code; the broker's and the SVID's certificates are minted with 30 s to 5 min of
backdating, which real skew of that size would eat too).
"""

import datetime as _dt
import os
import time as _time

_SKEW = float(os.environ.get("TASKCREDS_TEST_CLOCK_SKEW", "0") or 0)

if _SKEW:
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _time.time = lambda: _real_time() + _SKEW
    _time.time_ns = lambda: _real_time_ns() + int(_SKEW * 1e9)
    _delta = _dt.timedelta(seconds=_SKEW)
    _Base = _dt.datetime

    class _SkewedDatetime(_Base):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return _Base.now(tz) + _delta

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def, override]
            return _Base.utcnow() + _delta

        @classmethod
        def today(cls):  # type: ignore[no-untyped-def, override]
            return _Base.today() + _delta

    _dt.datetime = _SkewedDatetime  # type: ignore[misc]
