"""The sidecar's environment: one place, errors that name the variable and what is accepted."""

from __future__ import annotations

import pytest
from taskcreds.sidecar.config import from_env
from taskcreds.sidecar.errors import ConfigError

from taskcreds import names

BASE = {
    names.ENV_DIR: "/run/taskcreds", names.ENV_TASK: "fix-issue-42", names.ENV_CREDENTIALS: "github, db",
    names.ENV_POD_NAME: "agent-0", names.ENV_POD_NAMESPACE: "team-a", names.ENV_POD_UID: "u-1",
    names.ENV_BROKER_URL: "https://taskcreds-broker.taskcreds-system.svc:8444/",
    names.ENV_BROKER_SPIFFE_ID: "spiffe://cluster.local/ns/taskcreds-system/sa/taskcreds-operator",
    names.ENV_TOKEN_FILE: "/var/run/secrets/taskcreds/token",
}


def test_defaults_from_the_webhooks_env() -> None:
    config = from_env(BASE)
    assert config.credentials == ("github", "db")
    assert config.broker_url == "https://taskcreds-broker.taskcreds-system.svc:8444"
    assert config.listen_local == ("127.0.0.1", names.SIDECAR_LOCAL_PORT)
    assert config.listen_probe == ("0.0.0.0", names.SIDECAR_PROBE_PORT)
    assert (config.ttl, config.max_duration, config.fs_group, config.podinfo_dir) == (None, None, None, None)
    assert config.log_level == "info"


def test_optional_values_are_parsed() -> None:
    config = from_env({**BASE, names.ENV_TTL: "15m", names.ENV_MAX_DURATION: "1h30m", names.ENV_FS_GROUP: "2000",
                       names.ENV_LISTEN_LOCAL: "[::1]:0", names.ENV_PODINFO_DIR: "/etc/taskcreds/podinfo",
                       names.ENV_CREDENTIALS: "github,github,db"})
    assert (config.ttl, config.max_duration, config.fs_group) == ("15m", 5400.0, 2000)
    assert config.listen_local == ("::1", 0)
    assert config.credentials == ("github", "db")


@pytest.mark.parametrize(("key", "value", "mentions"), [
    pytest.param(names.ENV_DIR, "", "not set", id="no directory"),
    pytest.param(names.ENV_DIR, "relative/dir", "absolute", id="relative directory"),
    pytest.param(names.ENV_TASK, "-bad", "task id", id="bad task id"),
    pytest.param(names.ENV_CREDENTIALS, " , ", "names no credential", id="empty credential list"),
    pytest.param(names.ENV_CREDENTIALS, "../etc", "not a CredentialSource name", id="path in credential"),
    pytest.param(names.ENV_CREDENTIALS, ".hidden", "not a CredentialSource name", id="hidden credential"),
    pytest.param(names.ENV_CREDENTIALS, "taskcreds.json", "not a CredentialSource name", id="manifest name"),
    pytest.param(names.ENV_TTL, "15 minutes", "Go-style duration", id="bad ttl"),
    pytest.param(names.ENV_MAX_DURATION, "0s", "longer than zero", id="zero max duration"),
    pytest.param(names.ENV_BROKER_URL, "http://broker:8444", "https://", id="plain http broker"),
    pytest.param(names.ENV_BROKER_SPIFFE_ID, "taskcreds-operator", "SPIFFE ID", id="bad broker id"),
    pytest.param(names.ENV_FS_GROUP, "staff", "numeric group id", id="named group"),
    pytest.param(names.ENV_LISTEN_PROBE, "9090", "HOST:PORT", id="port only"),
    pytest.param(names.ENV_LISTEN_LOCAL, "127.0.0.1:99999", "HOST:PORT", id="port out of range"),
    pytest.param(names.ENV_LOG_LEVEL, "verbose", "debug, info, warning, error", id="bad log level"),
    pytest.param(names.ENV_SPIFFE_SOCKET, "/run/spire/agent.sock", "unix://", id="bare socket path"),
    pytest.param(names.ENV_TOKEN_FILE, "", "not set", id="no token file"),
])
def test_bad_values_name_the_variable(key: str, value: str, mentions: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_env({**BASE, key: value})
    assert key in str(err.value)
    assert mentions in str(err.value)
