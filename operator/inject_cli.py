"""``taskcreds inject -f FILE|- [--config FILE]``: print manifests as the webhook would admit them.

Multi-document YAML in, the same documents out: labelled Pods and workload pod templates are
injected (the same pure core the webhook runs), everything else passes through unchanged. A
denial prints ``taskcreds inject: <reason>`` on stderr, nothing on stdout, and exits 1; so do an
unreadable file, bad YAML, YAML aliases (``*name``, refused before anything is built) and a bad
config — never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

import yaml
from taskcreds.operator.config import ConfigError, InjectionConfig, config_from_env, load_config
from taskcreds.operator.injection import inject_object

__all__ = ["run", "inject_documents", "InjectError"]

_PROG = "taskcreds inject"


class _Dumper(yaml.SafeDumper):
    """Plain YAML for kubectl: no &anchors/*aliases even where objects are shared."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class InjectError(Exception):
    """A document was denied (or could not be read); the message is for the user as is."""


def _label(doc: dict[str, Any], index: int, count: int) -> str:
    metadata = doc.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name") or metadata.get("generateName") or "?"
    where = f", document {index + 1}" if count > 1 else ""
    return f"{doc.get('kind')} {name}{where}"


def inject_documents(docs: list[Any], config: InjectionConfig) -> tuple[list[Any], list[str]]:
    """Mutate every document; returns (documents, warnings). Raises InjectError on the first denial."""
    out: list[Any] = []
    warnings: list[str] = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            out.append(doc)
            continue
        where = _label(doc, index, len(docs))
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):  # kubectl get -o yaml
            items, found = inject_documents(doc["items"], config)
            out.append({**doc, "items": items})
            warnings += [f"{w} (in {where})" for w in found]
            continue
        mutated, result = inject_object(doc, config)
        if result.outcome == "denied":
            raise InjectError(f"{result.message} ({where})")
        warnings += [f"{w} ({where})" for w in result.warnings]
        out.append(mutated)
    return out, warnings


def _read(filename: str, stdin: TextIO) -> str:
    if filename == "-":
        return stdin.read()
    try:
        with open(filename, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise InjectError(f"cannot read {filename}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InjectError(f"cannot read {filename}: not UTF-8 text") from None


def _refuse_aliases(text: str, source: str) -> None:
    """Refuse YAML aliases (``*name``) before anything is built from the text.

    The output is written without aliases (kubectl's YAML), so each alias is expanded in full: a
    700-byte "billion laughs" file took gigabytes and never finished. Scanning the parser's events is
    linear in the input; Kubernetes manifests never need aliases.
    """
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            mark = event.start_mark
            raise InjectError(
                f"{source} uses the YAML alias *{event.anchor} at line {mark.line + 1}, column "
                f"{mark.column + 1}: anchors and aliases are not accepted; write the manifest out in full"
            )


def _parse(text: str, filename: str) -> list[Any]:
    source = "stdin" if filename == "-" else filename
    try:
        _refuse_aliases(text, source)
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InjectError(f"{source} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not docs:
        raise InjectError(f"{source} holds no YAML document; accepted: a Pod or a workload manifest")
    return docs


def run(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The subcommand: 0 and the documents on stdout, or 1 and one message on stderr."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    try:
        config = load_config(args.config) if args.config else config_from_env(os.environ)
        docs = _parse(_read(args.filename, stdin), args.filename)
        out, warnings = inject_documents(docs, config)
    except (ConfigError, InjectError) as exc:
        for line in str(exc).splitlines():
            print(f"{_PROG}: {line}", file=stderr)
        return 1
    for warning in warnings:
        print(f"{_PROG}: warning: {warning}", file=stderr)
    text = yaml.dump_all(
        out, Dumper=_Dumper, sort_keys=False, default_flow_style=False, explicit_start=len(out) > 1
    )
    try:
        stdout.write(text)
        stdout.flush()
    except BrokenPipeError:  # `taskcreds inject ... | head`: the reader left, which is fine
        _silence_stdout()
    return 0


def _silence_stdout() -> None:
    """After a broken pipe, keep the interpreter's final flush from printing a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
