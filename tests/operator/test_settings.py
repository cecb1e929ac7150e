import pytest
from taskcreds.operator.settings import OperatorSettings, SettingsError, parse_listen


def test_defaults_match_a_chart_install() -> None:
    s = OperatorSettings.from_env({})
    assert s.namespace == "taskcreds-system"
    assert s.webhook_listen == ("0.0.0.0", 8443)
    assert s.broker_listen == ("0.0.0.0", 8444)
    assert s.webhook_cert_dir is None


def test_reads_every_variable() -> None:
    s = OperatorSettings.from_env(
        {
            "TASKCREDS_NAMESPACE": "sec",
            "TASKCREDS_WEBHOOK_LISTEN": "127.0.0.1:9443",
            "TASKCREDS_BROKER_LISTEN": "[::1]:9444",
            "TASKCREDS_WEBHOOK_CERT_DIR": "/certs",
            "TASKCREDS_LOG_LEVEL": "debug",
        }
    )
    assert (s.namespace, s.webhook_listen, s.broker_listen, s.webhook_cert_dir, s.log_level) == (
        "sec",
        ("127.0.0.1", 9443),
        ("::1", 9444),
        "/certs",
        "DEBUG",
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TASKCREDS_WEBHOOK_LISTEN": "8443"}, "TASKCREDS_WEBHOOK_LISTEN"),
        ({"TASKCREDS_BROKER_LISTEN": "host:http"}, "TASKCREDS_BROKER_LISTEN"),
        ({"TASKCREDS_METRICS_LISTEN": "h:70000"}, "TASKCREDS_METRICS_LISTEN"),
        ({"TASKCREDS_LOG_LEVEL": "loud"}, "TASKCREDS_LOG_LEVEL"),
        ({"TASKCREDS_SPIFFE_ID_TEMPLATE": "spiffe://x/{namespace}"}, "TASKCREDS_SPIFFE_ID_TEMPLATE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        OperatorSettings.from_env(env)


def test_parse_listen_says_what_is_accepted() -> None:
    with pytest.raises(SettingsError, match="HOST:PORT"):
        parse_listen("nonsense")
