"""docker-compose.yml (the production Argilla stack) parses and has what it must; Docker does not run here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRETS = ("ARGILLA_AUTH_SECRET_KEY", "ARGILLA_OWNER_PASSWORD", "ARGILLA_OWNER_API_KEY", "POSTGRES_PASSWORD")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _variables(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))


def test_services_and_images(compose):
    services = compose["services"]
    assert {"argilla", "worker", "elasticsearch", "redis", "postgres"} <= set(services)
    assert services["argilla"]["image"] == services["worker"]["image"] == "argilla/argilla-server:v2.8.0"
    assert re.fullmatch(r"docker\.elastic\.co/elasticsearch/elasticsearch:8\.\d+\.\d+", services["elasticsearch"]["image"])
    assert services["redis"]["image"].startswith("redis:")
    assert "worker" in services["worker"]["command"]


def test_every_service_has_a_health_check_and_waits_for_its_dependencies(compose):
    services = compose["services"]
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"service {name} has no health check"
    for name in ("argilla", "worker"):
        deps = services[name]["depends_on"]
        assert {d: deps[d]["condition"] for d in ("elasticsearch", "redis", "postgres")} == dict.fromkeys(
            ("elasticsearch", "redis", "postgres"), "service_healthy"
        )


def test_server_and_worker_share_the_argilla_settings(compose):
    for name in ("argilla", "worker"):
        env = compose["services"][name]["environment"]
        assert env["ARGILLA_ELASTICSEARCH"] == "http://elasticsearch:9200"
        assert env["ARGILLA_REDIS_URL"] == "redis://redis:6379/0"
        assert env["ARGILLA_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["ARGILLA_AUTH_SECRET_KEY"].startswith("${ARGILLA_AUTH_SECRET_KEY")
        assert env["ARGILLA_HOME_PATH"] == "/var/lib/argilla"
    owner = compose["services"]["argilla"]["environment"]
    assert {"USERNAME", "PASSWORD", "API_KEY", "WORKSPACE"} <= set(owner)


def test_data_lives_in_named_volumes(compose):
    declared = set(compose["volumes"])
    used = {v.split(":")[0] for svc in compose["services"].values() for v in svc.get("volumes", [])}
    assert {"argilla_data", "elasticsearch_data", "postgres_data", "redis_data"} <= declared
    assert used <= declared and {"argilla_data", "elasticsearch_data", "postgres_data"} <= used


def test_secrets_come_from_env_file_and_are_required():
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, flags=re.M))
    assert _variables(text) <= documented, f"not in .env.example: {_variables(text) - documented}"
    for name in SECRETS:  # no default: compose refuses to start without it
        assert re.search(r"\$\{" + name + r":\?", text), f"{name} must be required (${{{name}:?...}})"
    assert {"ARGILLA_API_URL", "ARGILLA_API_KEY"} <= documented
