"""Read serverless.yml: the functions, their handlers, routes, schedules and S3 triggers.

Only what the local runner needs is read, with Serverless v3's own variable forms
``${self:a.b}``, ``${env:NAME, 'default'}`` and ``${opt:name, 'default'}`` resolved
(options are never given locally, so they take their defaults).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nimbus.errors import ConfigError

_VAR = re.compile(r"\$\{(self|env|opt):([^,}]+?)\s*(?:,\s*(?:'([^']*)'|\"([^\"]*)\"|([^}]*?)))?\s*\}")


@dataclass(frozen=True)
class HttpRoute:
    method: str  # "GET", ..., or "*" for any
    path: str  # API Gateway syntax: /items/{id}, /files/{proxy+}


@dataclass(frozen=True)
class Schedule:
    expression: str  # rate(5 minutes) | cron(0 2 * * ? *)
    enabled: bool = True
    name: str = ""


@dataclass(frozen=True)
class S3Trigger:
    bucket: str
    event: str = "s3:ObjectCreated:*"
    prefix: str = ""
    suffix: str = ""

    def matches(self, bucket: str, key: str, event_name: str) -> bool:
        """Does an S3 record (bucket, decoded key, eventName like 'ObjectCreated:Put') fire this trigger?"""
        wanted = self.event.removeprefix("s3:")
        kind_ok = (wanted.endswith("*") and event_name.startswith(wanted[:-1])) or event_name == wanted
        return bucket == self.bucket and key.startswith(self.prefix) and key.endswith(self.suffix) and kind_ok


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str  # "functions/health/handler.handler"
    timeout_s: int
    memory_mb: int
    http: list[HttpRoute] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    s3: list[S3Trigger] = field(default_factory=list)

    @property
    def module_path(self) -> str:
        """The handler's module as Lambda's Python runtime imports it: functions.health.handler."""
        return self.handler.rsplit(".", 1)[0].replace("/", ".")

    @property
    def attribute(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass(frozen=True)
class Project:
    root: Path
    service: str
    region: str
    functions: dict[str, FunctionSpec]

    def function(self, name: str) -> FunctionSpec:
        try:
            return self.functions[name]
        except KeyError:
            known = ", ".join(sorted(self.functions)) or "none"
            raise ConfigError(f"no function {name!r} in serverless.yml (functions: {known})") from None


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.strip().split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _resolve(value: Any, doc: dict[str, Any], depth: int = 0) -> Any:
    if depth > 10:
        raise ConfigError("serverless.yml: variables nest too deep (a cycle?)")
    if isinstance(value, dict):
        return {k: _resolve(v, doc, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, doc, depth) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2).strip()
        default = next((g for g in match.groups()[2:] if g is not None), None)
        found = os.environ.get(name) if kind == "env" else _lookup(doc, name) if kind == "self" else None
        if found is None:
            if default is None:
                raise ConfigError(f"serverless.yml: ${{{kind}:{name}}} has no value and no default")
            found = default
        return str(_resolve(found, doc, depth + 1))

    return _VAR.sub(one, value)


def _events(raw_fn: dict[str, Any], name: str) -> tuple[list[HttpRoute], list[Schedule], list[S3Trigger]]:
    http, schedules, s3 = [], [], []
    for event in raw_fn.get("events") or []:
        if not isinstance(event, dict) or len(event) != 1:
            raise ConfigError(f"serverless.yml: function {name}: each event must be a one-key mapping")
        (kind, spec), = event.items()
        if kind == "httpApi":
            if spec == "*":
                http.append(HttpRoute("*", "/{proxy+}"))
            elif isinstance(spec, str):  # "GET /path"
                method, _, path = spec.partition(" ")
                http.append(HttpRoute(method.upper(), path))
            else:
                http.append(HttpRoute(str(spec.get("method", "*")).upper(), spec["path"]))
        elif kind == "schedule":
            spec = {"rate": spec} if isinstance(spec, str) else spec
            rates = spec["rate"] if isinstance(spec["rate"], list) else [spec["rate"]]
            schedules += [Schedule(r, bool(spec.get("enabled", True)), spec.get("name", "")) for r in rates]
        elif kind == "s3":
            spec = {"bucket": spec} if isinstance(spec, str) else spec
            rules = {k: v for rule in spec.get("rules") or [] for k, v in rule.items()}
            s3.append(S3Trigger(spec["bucket"], spec.get("event", "s3:ObjectCreated:*"),
                                rules.get("prefix", ""), rules.get("suffix", "")))
    return http, schedules, s3


def load_project(root: Path) -> Project:
    """Parse ``root/serverless.yml``; errors name the file and what is wrong."""
    path = root / "serverless.yml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run from the project folder or set NIMBUS_PROJECT_ROOT") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    doc = _resolve(raw, raw)
    provider = doc.get("provider") or {}
    functions: dict[str, FunctionSpec] = {}
    for name, fn in (doc.get("functions") or {}).items():
        handler = fn.get("handler") or ((fn.get("image") or {}).get("command") or [None])[0]
        if not handler or "." not in handler:
            raise ConfigError(f"serverless.yml: function {name} has no handler (handler: or image.command)")
        http, schedules, s3 = _events(fn, name)
        functions[name] = FunctionSpec(
            name, handler,
            int(fn.get("timeout", provider.get("timeout", 6))),
            int(fn.get("memorySize", provider.get("memorySize", 1024))),
            http, schedules, s3,
        )
    return Project(root, str(doc.get("service", "nimbus")), str(provider.get("region", "us-east-1")), functions)

