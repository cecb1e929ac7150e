"""Local stand-ins for outside services: github.py is a GitHub for App installation tokens.

Provider tests use :class:`taskcreds.operator.memcluster.MemCluster` for Secrets.
"""
