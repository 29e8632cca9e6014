"""``avatar-forge serve``: run the online API from a Serve config file on an embedded local Ray
(or the cluster at $RAY_ADDRESS), until Ctrl-C or SIGTERM, then remove it cleanly."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

from serve.config import ServeSettings

DEFAULT_CONFIG = Path(__file__).with_name("local.yaml")
REPO_CONFIG = Path(__file__).with_name("config.yaml")  # production: embedded by cluster/kuberay's RayService
BUILDER = "serve.app:build_app"


@dataclasses.dataclass
class ServeFile:
    """The parts of a Serve config file this project's application needs."""

    name: str
    route_prefix: str
    settings: ServeSettings
    deployments: dict[str, dict[str, Any]]
    http_options: dict[str, Any]


def load_serve_file(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ServeFile:
    """Read a Serve config (``yaml.safe_load``) and pick the application built by
    ``serve.app:build_app``; ``overrides`` replace top-level ``args`` keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no Serve config file at {str(path)!r}.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a Serve config must be a mapping, got {type(data).__name__}.")
    apps = [a for a in data.get("applications") or [] if isinstance(a, dict) and a.get("import_path") == BUILDER]
    if not apps:
        raise ValueError(f"{path}: no application with import_path {BUILDER!r} under `applications`.")
    app = apps[0]
    deployments = {}
    for entry in app.get("deployments") or []:
        options = dict(entry)
        name = options.pop("name", None)
        if not name:
            raise ValueError(f"{path}: every entry of `deployments` needs a `name`, got {entry!r}.")
        deployments[name] = options
    settings = ServeSettings.model_validate({**(app.get("args") or {}), **(overrides or {})})
    return ServeFile(app.get("name", "avatar"), app.get("route_prefix", "/"), settings, deployments, dict(data.get("http_options") or {}))


def serve_until_stopped(config: ServeFile, host: str | None = None, port: int | None = None, num_cpus: int | None = None) -> int:
    """Deploy, print where it listens, block until SIGINT/SIGTERM, then delete the app (and stop
    the Ray this call started)."""
    import ray
    from ray import serve

    from serve.app import build_application

    http = {**config.http_options, **({"host": host} if host else {}), **({"port": port} if port else {})}
    own_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False) if own_ray else ray.init()
    # After ray.init, which installs its own fatal-signal handlers: ours must win for SIGTERM.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options=http)
        serve.run(build_application(config.settings, config.deployments), name=config.name, route_prefix=config.route_prefix, blocking=False)
        where = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}{config.route_prefix.rstrip('/')}"
        print(f"serving {config.name!r} at {where}/ (OpenAPI: {where}/docs); Ctrl-C or SIGTERM stops it", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping", flush=True)
    finally:
        try:
            serve.delete(config.name)
            if own_ray:
                serve.shutdown()
        finally:
            if own_ray:
                ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0
