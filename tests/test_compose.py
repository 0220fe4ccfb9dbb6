"""compose.yaml and its per-GPU override compose.gpus.yaml, checked statically (no Docker engine
runs here, so neither `docker compose config` nor a GPU checks them): the properties an operator
relies on when running `docker compose up --scale worker=N`, or one worker per GPU."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from inference.settings import QueueSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
GPUS: dict[str, Any] = yaml.safe_load((ROOT / "compose.gpus.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
ROLES = ("bot", "worker")


def seconds(duration: str) -> float:
    """A compose duration such as `45s`, `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_the_services_are_the_bot_redis_and_workers() -> None:
    assert set(SERVICES) == {"bot", "redis", "worker"}
    assert SERVICES["bot"]["command"] == ["python", "-m", "bot"]
    assert SERVICES["worker"]["command"][:4] == ["python", "-m", "inference", "worker"]


def test_every_role_runs_the_dockerfiles_image() -> None:
    images = {SERVICES[role]["image"] for role in ROLES}
    assert len(images) == 1
    for role in ROLES:
        assert SERVICES[role]["build"] == "."


def test_the_worker_scales_without_clashes_and_reserves_a_gpu() -> None:
    """Its replicas share that GPU (Compose sends them all the same device request)."""
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "replicas" not in worker["deploy"]  # `--scale` decides
    assert "deploy" not in SERVICES["bot"]  # a submitter runs no inference


def test_redis_keeps_an_append_only_file_on_a_named_volume() -> None:
    redis = SERVICES["redis"]
    assert redis["image"].split(":")[0] == "redis"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in COMPOSE["volumes"]


def test_redis_is_healthy_before_the_bot_and_workers_start() -> None:
    assert "redis-cli" in SERVICES["redis"]["healthcheck"]["test"]
    for role in ROLES:
        assert SERVICES[role]["depends_on"]["redis"]["condition"] == "service_healthy"
        # The image's HEALTHCHECK on /healthz applies: no service turns it off.
        assert "healthcheck" not in SERVICES[role]


def test_bot_and_workers_share_the_queue_and_env_cannot_move_the_paths() -> None:
    for role in ROLES:
        service = SERVICES[role]
        environment = service["environment"]
        assert service["env_file"] == ".env"
        assert environment["IMG2IMG_QUEUE"] == "redis://redis:6379/0"
        queue = QueueSettings.model_validate({"IMG2IMG_QUEUE": environment["IMG2IMG_QUEUE"]})
        assert queue.redis_url == "redis://redis:6379/0"
        assert environment["IMG2IMG_MODELS"].startswith("/app/models/")
        assert environment["IMG2IMG_DATABASE"].startswith("/app/data/")
        assert environment["IMG2IMG_METRICS_PORT"]
        mounts = {volume.split(":")[1] for volume in service["volumes"]}
        assert "/app/models" in mounts
    assert "/app/data" in {volume.split(":")[1] for volume in SERVICES["bot"]["volumes"]}


def test_a_stop_waits_longer_than_the_shutdown_grace() -> None:
    for role in ROLES:
        service = SERVICES[role]
        raw = service["environment"]["IMG2IMG_SHUTDOWN_GRACE"]
        grace = QueueSettings.model_validate({"IMG2IMG_SHUTDOWN_GRACE": raw}).shutdown_grace
        assert seconds(service["stop_grace_period"]) > grace


def test_the_gpus_override_pins_one_worker_to_each_gpu() -> None:
    services: dict[str, Any] = GPUS["services"]
    assert services.pop("worker") == {"profiles": ["scaled"]}  # the shared-GPU worker is off
    assert sorted(services) == ["worker-gpu0", "worker-gpu1"]
    for index, (name, service) in enumerate(sorted(services.items())):
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [
            {"driver": "nvidia", "device_ids": [str(index)], "capabilities": ["gpu"]}
        ]
        assert "count" not in devices[0]  # Compose refuses `count` beside `device_ids`
        assert "replicas" not in service["deploy"], name
        # The same worker as compose.yaml's in everything but the GPU it reserves.
        same = {key: value for key, value in service.items() if key != "deploy"}
        assert same == {key: value for key, value in SERVICES["worker"].items() if key != "deploy"}


def test_the_readme_tells_how_to_pin_workers_to_gpus() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "-f compose.yaml -f compose.gpus.yaml" in readme
