"""taskcreds: short-lived, SPIFFE-authenticated, per-task credentials for coding-agent pods.

The code lives in three packages: ``taskcreds`` (shared names, CLI, demo),
``taskcreds.operator`` (webhook, broker, lifecycle; source folder ``operator/``) and
``taskcreds.sidecar`` (the in-pod sidecar; source folder ``sidecar/``).
"""

__version__ = "0.1.0"
