import pytest

from taskcreds.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), ("1h0m5s", 3605)],
)
def test_parses_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "15", "m", "15 m", "-5s", "0s", "1d", "15m-", "s15", "1h 30m", "x" * 40]
)
def test_refuses_what_is_not_a_duration_and_says_what_would_be(text: str) -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(text)
    assert repr(text)[:20] in str(err.value) or "longer than zero" in str(err.value)


@pytest.mark.parametrize(("seconds", "text"), [(5400, "1h30m"), (90, "1m30s"), (3600, "1h"), (5, "5s")])
def test_formats_round_trip(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
