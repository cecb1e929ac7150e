"""The local kubelet stand-in lays out volumes and the sidecar env as the kubelet would."""

from __future__ import annotations

from pathlib import Path

import jsonpatch
import pytest
import yaml
from taskcreds.operator.config import load_config
from taskcreds.operator.injection import mutate_pod

from taskcreds.localpod import LocalPod, LocalPodError, go_quote, render_downward_annotations

EXAMPLE = Path(__file__).parents[2] / "examples" / "agent-pod.yaml"


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("a\\b", r'"a\\b"'),
        ("l1\nl2", r'"l1\nl2"'),
        ("tab\t", r'"tab\t"'),
        ("\x01", r'"\x01"'),
        ("ünïcode", '"ünïcode"'),
    ],
)
def test_go_quote_matches_strconv_quote(value: str, quoted: str) -> None:
    assert go_quote(value) == quoted


def test_downward_annotations_are_sorted_key_value_lines() -> None:
    text = render_downward_annotations({"b": "2", "a": 'x"y'})
    assert text == 'a="x\\"y"\nb="2"\n'


def admitted_pod() -> dict:
    pod = yaml.safe_load(EXAMPLE.read_text())
    pod["metadata"].update(name="agent-1", uid="uid-1")
    result = mutate_pod(pod, load_config(None))
    assert result.outcome == "injected"
    return jsonpatch.apply_patch(pod, result.patch)


def test_sidecar_env_resolves_field_refs_and_maps_mounts(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    sock = tmp_path / "spiffe" / "agent.sock"
    pod = LocalPod(
        admitted_pod(),
        root=tmp_path / "pod",
        credentials_dir=creds,
        spiffe_socket=sock,
        token=lambda: "pod-token",
    )
    env = pod.sidecar_env()
    assert env["TASKCREDS_POD_NAME"] == "agent-1"
    assert env["TASKCREDS_POD_UID"] == "uid-1"
    assert env["TASKCREDS_POD_NAMESPACE"] == "agents"
    assert env["TASKCREDS_DIR"] == str(creds)
    assert env["SPIFFE_ENDPOINT_SOCKET"].startswith("unix://" + str(sock.parent))
    assert Path(env["TASKCREDS_TOKEN_FILE"]).read_text() == "pod-token"
    annotations = (Path(env["TASKCREDS_PODINFO_DIR"]) / "annotations").read_text()
    assert 'taskcreds.io/task="fix-issue-42"' in annotations


def test_annotation_change_reaches_the_downward_api_file(tmp_path: Path) -> None:
    pod = LocalPod(
        admitted_pod(),
        root=tmp_path,
        credentials_dir=tmp_path / "c",
        spiffe_socket=tmp_path / "s" / "sock",
        token=lambda: "t",
    )
    pod.set_annotation("taskcreds.io/task-status", "completed")
    text = (Path(pod.sidecar_env()["TASKCREDS_PODINFO_DIR"]) / "annotations").read_text()
    assert 'taskcreds.io/task-status="completed"' in text


def test_a_pod_without_the_sidecar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalPodError, match="admitted by the webhook"):
        LocalPod(
            {"metadata": {}, "spec": {"containers": []}},
            root=tmp_path,
            credentials_dir=tmp_path / "c",
            spiffe_socket=tmp_path / "s",
            token=lambda: "t",
        )
