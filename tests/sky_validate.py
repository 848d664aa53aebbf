"""Validate SkyPilot YAML files with SkyPilot's own loaders; print one JSON answer.

Run by tests/sky_node.py with .venv-sky's python (SkyPilot is not in
.venv), every file in one process, because `import sky` alone takes seconds:

    .venv-sky/bin/python tests/sky_validate.py OUT.json [--secret NAME=VALUE ...] FILE...
    .venv-sky/bin/python tests/sky_validate.py OUT.json --jobs JOBS.json

JOBS.json lists `{"path": FILE, "secrets": {NAME: VALUE}, "id": KEY}` (id: the
answer's key; the path by default), for secrets that differ between files.

Offline and without SkyPilot's API server: task files go through
`sky.Task.from_yaml_config` (the task, resources and service schemas, then
building the Task), service tasks also through
`serve_utils.validate_service_task`, and volume files (`type:` at the top)
through `common_utils.validate_schema` with `schemas.get_volume_schema()`, as
`sky volumes apply` does. A file's answer is `{"ok": true, ...what SkyPilot
made of it}` or `{"ok": false, "error": "<SkyPilot's message>"}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from sky.serve import serve_utils
from sky.utils import common_utils, schemas

import sky


def _volume(config: dict[str, Any]) -> dict[str, Any]:
    schema = schemas.get_volume_schema()
    common_utils.validate_schema(config, schema, "Invalid volume YAML: ")
    # Stricter than SkyPilot, whose schema lets any key through under `config:`
    # (it has no additionalProperties: false there): a typo'd storage_class_name
    # would silently fall back to the cluster's default storage class.
    known = schema["properties"]["config"]["properties"]
    unknown = sorted(set(config.get("config") or {}) - set(known))
    if unknown:
        raise ValueError(
            f"Invalid volume YAML (checked here, not by SkyPilot): unknown config key(s)"
            f" {unknown}; known: {sorted(known)}"
        )
    return {"kind": "volume", "name": config["name"], "type": config["type"], **config}


def _task(config: dict[str, Any], secrets: list[tuple[str, str]]) -> dict[str, Any]:
    # `--secret NAME=VALUE`, as `sky launch` passes it, for the secrets this file declares.
    declared = set(config.get("secrets") or {})
    overrides = [(name, value) for name, value in secrets if name in declared]
    task = sky.Task.from_yaml_config(config, secrets_overrides=overrides or None)
    # Relative to the working directory, as `sky launch` resolves it.
    task.expand_and_validate_workdir()
    answer: dict[str, Any] = {
        "kind": "task",
        "name": task.name,
        "num_nodes": task.num_nodes,
        "workdir": task.workdir,
        "envs": dict(task.envs),
        # Secrets with a value in the file, and those without one, which must be given
        # at launch (`--secret NAME`).
        "secret_names": sorted(task.secrets),
        "required_secrets": sorted(ref.name for ref in task.managed_secret_refs),
        "setup": task.setup,
        "run": task.run,
        "volumes": dict(task.volumes),
        "resources": [
            {
                "image_id": sorted(set((r.image_id or {}).values())),
                "ports": r.ports,
                "accelerators": r.accelerators,
                "cloud": str(r.cloud) if r.cloud is not None else None,
            }
            for r in task.resources
        ],
        "service": None,
    }
    if task.service is not None:
        serve_utils.validate_service_task(task, pool=False)
        answer["service"] = task.service.to_yaml_config()
    return answer


def validate(path: Path, secrets: list[tuple[str, str]]) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    try:
        if isinstance(config, dict) and "type" in config:
            return {"ok": True, **_volume(config)}
        return {"ok": True, **_task(config, secrets)}
    except Exception as exc:  # each file's own error is its answer
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--jobs", type=Path)
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    secrets = dict(item.split("=", 1) for item in args.secret)
    jobs = [{"path": path, "secrets": secrets} for path in args.files]
    if args.jobs is not None:
        jobs += json.loads(args.jobs.read_text())
    answers = {
        job.get("id", job["path"]): validate(Path(job["path"]), list(job["secrets"].items()))
        for job in jobs
    }
    args.out.write_text(json.dumps(answers, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
