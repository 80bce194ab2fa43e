"""l9.start: endpoints resolved once, a database only for agents that need one, configs built."""

from __future__ import annotations

from pathlib import Path

import fakeredis

from agents import Runtime
from agents.extraction.config import GeneratorConfig, PlannerConfig
from agents.extraction.generator.agent import GeneratorAgent
from agents.runner import load_agent
from bus import Keys
from envelope import Signer, Verifier
from l9.settings import Settings
from l9.start import AgentEndpoints, agent_endpoints, build_agent, needs_database

KEYRING = {"k": b"start-test-key-0123456789abcdef"}


def test_an_agent_needing_no_database_takes_the_urls_as_set(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://example:6379/0", home=tmp_path)
    assert agent_endpoints(settings, database=False) == AgentEndpoints("redis://example:6379/0", None)
    assert not list(tmp_path.iterdir())  # no embedded stack started, nothing written


def test_which_agents_need_a_database() -> None:
    on, off = Settings(sympy_metrics=True), Settings(sympy_metrics=False)
    assert needs_database(load_agent("sympy"), on)
    assert not needs_database(load_agent("sympy"), off)
    for name in ("planner", "generator", "enforcer", "validator", "squarer"):
        assert not needs_database(load_agent(name), on)


def test_built_in_agents_get_their_own_config(tmp_path: Path) -> None:
    runtime = Runtime(
        redis=fakeredis.FakeAsyncRedis(),
        keys=Keys("t"),
        signer=Signer(KEYRING, "k"),
        verifier=Verifier(KEYRING),
        agent="generator",
        instance="generator-0",
    )
    settings = Settings(extractions_dir=tmp_path / "x", generator_sympy_deadline_s=3.0)
    endpoints = AgentEndpoints("redis://example:6379/0", None)
    agent = build_agent(GeneratorAgent, runtime, settings, endpoints)
    assert isinstance(agent, GeneratorAgent)
    assert agent.config == GeneratorConfig(extractions_dir=tmp_path / "x", sympy_deadline_s=3.0)
    planner = settings.planner_config(endpoints.redis_url, endpoints.database_url)
    assert planner == PlannerConfig(
        policy_file=None,
        strict_mode=True,
        graph=settings.graph_config(),
        redis_url="redis://example:6379/0",
        database_url=None,
    )
    assert settings.sympy_config().metrics is None  # no database: no metrics
    assert settings.sympy_config("postgresql://u:p@h/db").metrics is not None
