"""taskcreds-sidecar: the in-pod process that fetches, rotates and tears down task credentials."""
