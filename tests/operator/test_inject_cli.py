"""``taskcreds inject`` as a user runs it: the installed command, in a real subprocess."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import inject_object

from taskcreds import names
from tests.operator.validation import assert_valid_pod_spec

REPO = Path(__file__).resolve().parents[2]
TASKCREDS = REPO / ".venv" / "bin" / "taskcreds"
FIXTURES = REPO / "tests" / "fixtures" / "pods"


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TASKCREDS), "inject", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def sidecar_of(pod: dict) -> dict:
    return pod["spec"]["initContainers"][0]


def test_the_example_pod_injects_with_defaults() -> None:
    out = run("-f", "examples/agent-pod.yaml")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    pod = yaml.safe_load(out.stdout)
    assert sidecar_of(pod)["name"] == names.SIDECAR_CONTAINER
    assert_valid_pod_spec(pod)
    # exactly what the webhook would produce
    expected, _ = inject_object(
        yaml.safe_load((REPO / "examples" / "agent-pod.yaml").read_text()), InjectionConfig()
    )
    assert pod == expected


def test_stdin_and_multiple_documents_keep_order_and_pass_others_through() -> None:
    workloads = (FIXTURES / "workloads.yaml").read_text()
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n"
    unlabelled = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec: {containers: [{name: a, image: a}]}\n"
    )
    text = f"{configmap}---\n{workloads}\n---\n{unlabelled}---\n"
    out = run("-f", "-", stdin=text)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == [
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
        "Pod",
    ]
    assert docs[0] == yaml.safe_load(configmap)
    assert docs[-1] == yaml.safe_load(unlabelled)
    for doc in docs[1:-1]:
        assert_valid_pod_spec(doc)
    assert "&id" not in out.stdout and "*id" not in out.stdout, "plain YAML, no anchors"


def test_output_feeds_back_unchanged() -> None:
    first = run("-f", str(FIXTURES / "full.yaml"))
    second = run("-f", "-", stdin=first.stdout)
    assert (first.returncode, second.returncode) == (0, 0)
    assert yaml.safe_load(second.stdout) == yaml.safe_load(first.stdout)


def test_config_file_is_used(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sidecar: {image: registry.local/taskcreds:dev}\n")
    out = run("-f", str(FIXTURES / "minimal.yaml"), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert sidecar_of(yaml.safe_load(out.stdout))["image"] == "registry.local/taskcreds:dev"


def test_operator_config_environment_is_honoured(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("injection: {mountPath: /creds}\n")
    out = run("-f", str(FIXTURES / "minimal.yaml"), env={"TASKCREDS_CONFIG": str(config)})
    assert out.returncode == 0, out.stderr
    assert sidecar_of(yaml.safe_load(out.stdout))["env"][0] == {"name": "TASKCREDS_DIR", "value": "/creds"}


def test_warnings_go_to_stderr_and_the_pod_still_prints() -> None:
    out = run("-f", str(FIXTURES / "static-secrets.yaml"))
    assert out.returncode == 0
    assert yaml.safe_load(out.stdout)["metadata"]["annotations"][names.ANNOTATION_INJECTED]
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and all(
        line.startswith("taskcreds inject: warning: container 'agent': ") for line in lines
    )
    assert "GITHUB_TOKEN" in lines[0] and "(Pod agent-legacy)" in lines[0]


BAD_POD = """apiVersion: v1
kind: Pod
metadata:
  name: agent-bad
  labels: {taskcreds.io/inject: "true"}
  annotations: {taskcreds.io/task: t, taskcreds.io/credentials: github, taskcreds.io/ttl: 15 minutes}
spec:
  containers: [{name: agent, image: a}]
"""


#: "billion laughs": 9 levels of 9 aliases, a few hundred bytes
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        pytest.param(
            ["-f", "-"],
            BAD_POD,
            'taskcreds inject: taskcreds.io/ttl: "15 minutes" is not a Go-style duration such as 90s, 15m '
            "or 1h30m (units ms, s, m, h) (Pod agent-bad)",
            id="denied-pod",
        ),
        pytest.param(
            ["-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n" + BAD_POD,
            "(Pod agent-bad, document 2)",
            id="denied-second-document",
        ),
        pytest.param(
            ["-f", "missing.yaml"],
            None,
            "taskcreds inject: cannot read missing.yaml: No such file or directory",
            id="missing-file",
        ),
        pytest.param(
            ["-f", "-"],
            "kind: Pod\nmetadata: {name: [unclosed\n",
            "taskcreds inject: stdin is not valid YAML at line",
            id="bad-yaml",
        ),
        pytest.param(["-f", "-"], "", "taskcreds inject: stdin holds no YAML document", id="empty-input"),
        pytest.param(
            ["-f", "-"],
            BOMB,
            "taskcreds inject: stdin uses the YAML alias *a at line 2, column 8: anchors and aliases are "
            "not accepted; write the manifest out in full",
            id="alias-bomb (9**9 strings on output: ran past 1 GB and 20 s, review L3)",
        ),
        pytest.param(
            ["-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: &l {taskcreds.io/inject: 'true'}\n"
            "  annotations: {taskcreds.io/task: t, taskcreds.io/credentials: gh}\n"
            "spec:\n  nodeSelector: *l\n  containers: [{name: a, image: a}]\n",
            "taskcreds inject: stdin uses the YAML alias *l at line 8, column 17",
            id="pod-sharing-a-mapping",
        ),
        pytest.param(
            ["-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: &x '1', b: *x}\n---\n" + BAD_POD,
            "taskcreds inject: stdin uses the YAML alias *x at line 4, column 22",
            id="alias-in-a-passed-through-document",
        ),
        pytest.param(
            ["-f", "-", "--config", "nope.yaml"],
            BAD_POD,
            "taskcreds inject: nope.yaml: cannot read the injection config",
            id="missing-config",
        ),
    ],
)
def test_failures_exit_1_with_one_clear_message_and_no_output(
    args: list[str], stdin: str | None, message: str
) -> None:
    started = time.monotonic()
    out = run(*args, stdin=stdin)
    assert time.monotonic() - started < 10, "refused at once, never expanded"
    assert out.returncode == 1
    assert out.stdout == ""
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_bad_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("spiffe: {socketSource: nfs}\nbroker: {url: 'http://x'}\n")
    out = run("-f", str(FIXTURES / "minimal.yaml"), "--config", str(config))
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.splitlines() == [
        f"taskcreds inject: {config}: spiffe.socketSource: 'nfs' is not one of csi, hostPath",
        f"taskcreds inject: {config}: broker.url: 'http://x' is not an https:// URL (for example "
        "https://taskcreds-broker.taskcreds-system.svc:8444)",
    ]


def test_a_closed_pipe_is_not_an_error() -> None:
    proc = subprocess.run(  # noqa: S602 - the pipe is the point
        f"{TASKCREDS} inject -f examples/agent-pod.yaml | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.stdout == "apiVersion: v1\n"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_a_kubectl_list_is_injected_item_by_item() -> None:
    pod = yaml.safe_load((FIXTURES / "minimal.yaml").read_text())
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [pod, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}],
    }
    out = run("-f", "-", stdin=yaml.safe_dump(listing))
    assert out.returncode == 0, out.stderr
    items = yaml.safe_load(out.stdout)["items"]
    assert sidecar_of(items[0])["name"] == names.SIDECAR_CONTAINER
    assert items[1] == listing["items"][1]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {taskcreds.io/inject: 'true'}, "
            "annotations: {taskcreds.io/task: t, taskcreds.io/credentials: c}}\n"
            "spec: {containers: [agent]}\n",
            id="container-is-a-string",
        ),
        pytest.param("apiVersion: v1\nkind: Pod\nmetadata: [1]\n", id="metadata-is-a-list"),
        pytest.param("just a string\n", id="scalar-document"),
    ],
)
def test_malformed_manifests_never_print_a_traceback(text: str) -> None:
    out = run("-f", "-", stdin=text)
    assert "Traceback" not in out.stderr
    if out.returncode:
        assert out.stdout == "" and out.stderr.startswith("taskcreds inject: the pod is not well-formed")
    else:
        assert yaml.safe_load(out.stdout) == yaml.safe_load(text)


def test_an_unquoted_label_is_pointed_out() -> None:
    text = (
        (FIXTURES / "minimal.yaml")
        .read_text()
        .replace('taskcreds.io/inject: "true"', "taskcreds.io/inject: true")
    )
    out = run("-f", "-", stdin=text)
    assert out.returncode == 0
    assert 'label taskcreds.io/inject is True, not the string "true"' in out.stderr
    assert yaml.safe_load(out.stdout) == yaml.safe_load(text)
