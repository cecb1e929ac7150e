from collections.abc import Callable

import pytest

from taskcreds.durations import MAX_SECONDS, MAXIMUM, DurationError, format_duration, parse_duration


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


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("87600h", 87600 * 3600, id="the maximum itself (the chart's 10-year webhook CA)"),
        pytest.param("8760h", 8760 * 3600, id="a year"),
        pytest.param("87599h59m59s", 87600 * 3600 - 1, id="just under"),
        pytest.param("43800h43800h", 87600 * 3600, id="parts adding up to the maximum"),
    ],
)
def test_accepts_up_to_the_maximum(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("100000000000h", id="crashed the jwt provider with OverflowError (review L2)"),
        pytest.param("87600h1ms", id="a millisecond over"),
        pytest.param("87601h", id="an hour over"),
        pytest.param("5256000m1s", id="over in minutes"),
        pytest.param("9" * 31 + "h", id="31 digits: the longest the 32-character limit lets through"),
    ],
)
def test_refuses_durations_over_the_maximum_naming_value_and_maximum(text: str) -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(text)
    assert str(err.value) == f"{text!r} is longer than the maximum {MAXIMUM} (10 years)"
    assert MAX_SECONDS == 87600 * 3600


@pytest.mark.parametrize(("seconds", "text"), [(5400, "1h30m"), (90, "1m30s"), (3600, "1h"), (5, "5s")])
def test_formats_round_trip(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def _source(max_ttl: str) -> object:
    from taskcreds.operator.sources import parse_source

    return parse_source({"kind": "CredentialSource", "metadata": {"name": "jwt", "namespace": "agents"},
                         "spec": {"provider": "jwt", "maxTTL": max_ttl, "allowedServiceAccounts": ["a"]}})


def _requested_ttl(ttl: str) -> object:
    from taskcreds.operator.broker.policy import requested_ttl

    return requested_ttl(ttl)


def _annotation(ttl: str) -> object:
    from taskcreds.operator.annotations import parse_request

    return parse_request({"taskcreds.io/task": "t", "taskcreds.io/credentials": "gh", "taskcreds.io/ttl": ttl})


def _injection_default(ttl: str) -> object:
    from taskcreds.operator.config import InjectionConfig

    return InjectionConfig.from_mapping({"injection": {"defaultTTL": ttl}})


@pytest.mark.parametrize(
    ("parse", "error", "message"),
    [
        pytest.param(_source, "SourceError",
                     "CredentialSource agents/jwt: spec.maxTTL: '100000000000h' is longer than the maximum 87600h",
                     id="CredentialSource maxTTL (the broker answers 403 bad_source, not an endless 503)"),
        pytest.param(_requested_ttl, "BadRequest", "ttl: '100000000000h' is longer than the maximum 87600h",
                     id="broker request ttl (400 bad_request)"),
        pytest.param(_annotation, "AnnotationError",
                     'taskcreds.io/ttl: "100000000000h" is longer than the maximum 87600h',
                     id="pod annotation (the webhook denies the pod)"),
        pytest.param(_injection_default, "ConfigError", "'100000000000h' is longer than the maximum 87600h",
                     id="chart injection.defaultTTL (the operator refuses its config)"),
    ],
)
def test_every_caller_refuses_a_duration_over_the_maximum_naming_it(
    parse: Callable[[str], object], error: str, message: str
) -> None:
    with pytest.raises(Exception) as err:  # noqa: PT011 (the type is checked by name below)
        parse("100000000000h")
    assert type(err.value).__name__ == error
    assert message in str(err.value)
