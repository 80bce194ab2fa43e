"""The compose profile ``observability``: Prometheus scrapes every agent's admin port, Grafana
shows the dashboard of deploy/grafana, and every series the dashboard queries is one the code
exports (a renamed metric breaks this test, not the dashboard in production)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any, cast

import yaml
from prometheus_client.metrics import MetricWrapperBase

import agents.auditor.metrics
import agents.sympy.metrics
import bus.metrics
import governance.metrics
from bus.metrics import GroupStats
from tests.conftest import ROOT
from tests.unit.test_specs import _compose, agent_services

DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ADMIN_PORT = 9464
_SERIES = re.compile(r"\b(l9_[a-z0-9_]+)\b")


#: Every module that defines metrics an L9 process serves.
METRIC_MODULES = (bus.metrics, agents.auditor.metrics, agents.sympy.metrics, governance.metrics)


def exported_series() -> set[str]:
    """Every series name L9's metrics expose: each metric's, with its type's suffixes (a
    counter's ``_total``, a histogram's ``_bucket``, ``_sum`` and ``_count``), and the gauges
    the auditor's :class:`~bus.metrics.GroupStats` collects."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for module in METRIC_MODULES:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase | bus.metrics.DeliveryCounts):  # (its own collector)
                for family in value.describe():
                    names |= {family.name + suffix for suffix in suffixes[family.type]}
    stats = cast(GroupStats, SimpleNamespace(groups={}, dead={}))
    names |= {family.name for family in GroupStats.collect(stats)}
    return names


def _dashboards() -> list[dict[str, Any]]:
    found = [json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))]
    assert found, f"no dashboard in {DASHBOARDS}"
    return found


def test_every_dashboard_is_grafana_json_whose_queries_use_series_the_code_exports() -> None:
    exported = exported_series()
    for dashboard in _dashboards():
        assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: panel ids repeat"
        for panel in dashboard["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "l9-prometheus"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                used = set(_SERIES.findall(target["expr"]))
                assert used, (panel["title"], target["expr"])
                assert used <= exported, (panel["title"], used - exported)


def test_prometheus_scrapes_the_admin_port_of_every_agent_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (dns,) = job["dns_sd_configs"]
    compose = _compose()
    agents = agent_services(compose)
    assert set(dns["names"]) == set(agents) and dns["port"] == ADMIN_PORT
    for name, service in agents.items():
        assert service["environment"]["L9_ADMIN_PORT"] == str(ADMIN_PORT), name
        assert service["environment"]["L9_ADMIN_HOST"] == "0.0.0.0", name  # in a container
        assert f"{ADMIN_PORT}/healthz" in " ".join(service["healthcheck"]["test"]), name


def test_the_observability_profile_mounts_prometheus_config_and_grafana_provisioning() -> None:
    services = _compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service in (prometheus, grafana):
        assert service["profiles"] == ["observability"]
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # loopback only
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["uid"] == "l9-prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "l9.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
