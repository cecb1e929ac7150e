"""The stand-in's own tests use its fixtures; other suites import them the same way."""

from tests.kube.fixtures import kube_api, kube_api_tls  # noqa: F401
