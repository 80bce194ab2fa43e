"""Settings, validated once: every knob of L9 comes from here.

Values are read from environment variables (``REDIS_URL``, ``DATABASE_URL``,
``L9_*``). With no ``REDIS_URL`` / ``DATABASE_URL`` the embedded stack is
started under ``L9_HOME`` (default ``./.l9``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bus.keys import PartitionSet
from envelope import Ed25519Signer, Signer, Verifier
from memory.postgres import SigningKey

if TYPE_CHECKING:  # built on demand: reading the settings imports no agent
    from agents.config import GraphConfig
    from agents.extraction.config import EnforcerConfig, GeneratorConfig, PlannerConfig, ValidatorConfig
    from agents.sympy.config import SymPyConfig
    from bus import DeliveryPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="L9_", frozen=True, extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "L9_REDIS_URL"))
    #: Redis Cluster or a standalone server: ``auto`` asks the server (``CLUSTER INFO``).
    redis_cluster: Literal["auto", "yes", "no"] = "auto"
    #: Replicas of a master that must acknowledge a publish (``WAIT``) before it returns: 1 on
    #: a replicated deployment so an accepted envelope survives a failover; 0 (no wait) else.
    publish_replicas: int = Field(default=0, ge=0, le=16)
    #: The share of the namespace's streams an auditor or lineage process takes: ``i/n`` (the
    #: i-th, from 0, of n processes splitting the 64 stream partitions); ``0/1``: all.
    partitions: str = "0/1"
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "L9_DATABASE_URL")
    )
    #: The audit writer's URL (role ``l9_writer``); unset: the database URL with that user.
    database_writer_url: str | None = None
    # The semantic graph (memory/graph): Neo4j when NEO4J_URL is set, else FalkorDB in Redis.
    neo4j_url: str | None = Field(default=None, validation_alias=AliasChoices("NEO4J_URL", "L9_NEO4J_URL"))
    neo4j_user: str = Field(default="neo4j", validation_alias=AliasChoices("NEO4J_USER", "L9_NEO4J_USER"))
    neo4j_password: str | None = Field(
        default=None, validation_alias=AliasChoices("NEO4J_PASSWORD", "L9_NEO4J_PASSWORD")
    )
    neo4j_database: str | None = Field(
        default=None, validation_alias=AliasChoices("NEO4J_DATABASE", "L9_NEO4J_DATABASE")
    )
    #: A Redis with the FalkorDB module holding the graph; unset: the bus's own Redis.
    graph_url: str | None = None
    #: The FalkorDB graph (a Redis key); unset: ``<namespace>:graph``.
    graph_name: str | None = Field(default=None, min_length=1, max_length=200)
    #: Bound of one graph query: past it the graph store counts as unavailable.
    graph_timeout_s: float = Field(default=5.0, gt=0, le=300)
    #: Bound of the planner's and the SymPy worker's own graph writes (the projector catches up).
    graph_hook_timeout_s: float = Field(default=1.0, gt=0, le=60)
    #: Envelopes per batch of the lineage projector (``l9 agent run lineage``).
    lineage_batch_size: int = Field(default=500, ge=1, le=10_000)
    home: Path = Path(".l9")
    namespace: str = Field(default="l9", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: How envelopes are signed (docs/SECURITY.md): ``hmac``, a keyring shared by every process
    #: (any holder can sign as any agent: development, one tenant), or ``ed25519``, one private
    #: key per agent (``signing_key_file``) and public keys for everyone else (``public_keys``).
    signing_scheme: Literal["hmac", "ed25519"] = "hmac"
    #: hmac: JSON object ``{"key id": "secret"}``; empty means the key file under ``home``.
    signing_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    #: hmac: the key of ``signing_keys`` this process signs with.
    signing_key_id: str = "dev"
    #: ed25519: this process's own key, a JSON file ``{"key_id": ..., "seed": ...}`` (``l9 deploy``).
    signing_key_file: Path | None = None
    #: ed25519: the public keys this process trusts, JSON ``{"key id": "hex public key"}``.
    public_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    log_level: str = "info"
    #: The agent process's admin HTTP port (l9/admin.py: /metrics, /healthz, /readyz); unset: none.
    admin_port: int | None = Field(default=None, ge=1, le=65_535)
    #: The address the admin port listens on: loopback unless set (``0.0.0.0`` in a container).
    admin_host: str = Field(default="127.0.0.1", min_length=1)

    # Delivery loop defaults (a handler spec may override each).
    concurrency: int = Field(default=16, ge=1, le=10_000)
    batch_size: int = Field(default=256, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=1, le=60_000)
    max_deliveries: int = Field(default=5, ge=1, le=1000)
    retry_backoff_ms: int = Field(default=200, ge=0)
    retry_backoff_max_ms: int = Field(default=30_000, ge=0)
    lease_ms: int = Field(default=30_000, ge=100)
    heartbeat_ms: int = Field(default=2_000, ge=50)
    drain_timeout_s: float = Field(default=10.0, ge=0)
    #: How long a consumer group remembers the envelope ids it handled, so a repeat of one is
    #: acked unhandled (bus/dedupe.py); 0: no window. Redis keeps ~110 bytes per id per group.
    dedupe_window_s: float = Field(default=3600.0, ge=0, le=30 * 86_400)

    # The auditor and the trail.
    #: Signed checkpoint files, kept outside the database; unset: ``home/checkpoints``.
    audit_checkpoint_dir: Path | None = None
    #: Ed25519 key signing checkpoints and evidence reports: a file holding the 32-byte
    #: seed in hex. Unset: ``home/audit-key.hex``, created (mode 0600) on first use.
    audit_key_file: Path | None = None
    #: More public keys to trust, as JSON ``{"key id": "hex public key"}`` (e.g. retired keys).
    audit_trusted_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    audit_batch_size: int = Field(default=1000, ge=1, le=10_000)
    #: How many hash chains the trail has (memory/audit/chains.py): chain ``c`` holds the
    #: streams of the bus partitions ``p`` with ``p mod n == c``, so auditors that own
    #: different chains commit in parallel. Chosen when the trail is created and fixed once
    #: it holds an entry; unset: 1 for a new trail, and an existing trail keeps its own.
    audit_chains: int | None = Field(default=None, ge=1, le=64)
    #: A checkpoint after this many new entries, or after ``audit_checkpoint_interval_s``.
    audit_checkpoint_every: int = Field(default=10_000, ge=1)
    audit_checkpoint_interval_s: float = Field(default=60.0, gt=0)
    #: Fault injection for crash tests only: ``STAGE:N`` kills the auditor (SIGKILL) the
    #: N-th time it reaches STAGE (before_copy, before_commit or before_xack).
    audit_failpoint: str | None = Field(
        default=None, pattern=r"^(before_copy|before_commit|before_xack):[1-9]\d*$"
    )

    # The SymPy worker (agents/sympy): its subprocess pool, the parser's limits, the cache.
    sympy_workers: int = Field(default=2, ge=1, le=64)
    #: Wall-clock bound of one parse or operation in a worker subprocess (killed past it).
    sympy_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    #: Address space a worker subprocess may add to its size at start (RLIMIT_AS).
    sympy_memory_mb: int = Field(default=1024, ge=64)
    sympy_max_chars: int = Field(default=2000, ge=1, le=2000)  # the wire bounds each field there
    sympy_max_nodes: int = Field(default=2000, ge=1)
    sympy_max_depth: int = Field(default=60, ge=1, le=200)
    sympy_max_exponent: int = Field(default=1000, ge=1)
    sympy_max_factorial: int = Field(default=1000, ge=1)
    sympy_max_integer_digits: int = Field(default=1000, ge=1)
    sympy_max_points: int = Field(default=1_000_000, ge=1)
    sympy_cache_ttl_s: int = Field(default=86_400, ge=1)
    #: Results larger than this (JSON bytes) are returned but not cached.
    sympy_cache_max_bytes: int = Field(default=1_000_000, ge=0)
    #: Compiled Cython kernels (one directory per kernel hash); unset: ``home/sympy-kernels``.
    sympy_kernel_dir: Path | None = None
    #: Wall-clock bound of building one compiled kernel (Cython + C compiler).
    sympy_compile_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    #: Per-operation metrics to PostgreSQL (``l9_metrics.sympy_metrics``, ``sympy_codegen_metrics``).
    sympy_metrics: bool = True
    #: Metric rows kept in memory while PostgreSQL is away; past it the oldest are dropped (logged).
    sympy_metrics_buffer: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Seconds between two metric writes (sooner when 1000 rows wait).
    sympy_metrics_flush_s: float = Field(default=1.0, gt=0, le=60)

    # Governance (package ``governance``): policies, strict mode, rate limits, identities.
    #: The policy file (YAML); unset: ``governance/default_policy.yaml``. Its ``identity.signers``
    #: table, when not empty, makes every consumer refuse envelopes whose signer may not emit them.
    policy_file: Path | None = None
    #: Strict mode: the policies that refuse unfinished code in what the generator writes
    #: (``governance/default_policy.yaml``).
    strict_mode: bool = True

    # Extraction (``l9 extract``, the planner, generator, enforcer and validator).
    #: Where extraction folders are made when a request names no ``out_dir`` (relative: to the
    #: generator's working directory).
    extractions_dir: Path = Path("extractions")
    #: How long the generator waits for the SymPy tool's code of one kernel (no answer: the run fails).
    generator_sympy_deadline_s: float = Field(default=30.0, gt=0, le=3600)
    #: Wall-clock bound of the validator's run of the generated tests (its process group is killed past it).
    validator_test_timeout_s: float = Field(default=300.0, gt=0, le=86_400)

    @field_validator("partitions")
    @classmethod
    def _partitions(cls, value: str) -> str:
        PartitionSet.parse(value)  # a clear error now, not when the agent starts reading
        return value

    def partition_set(self) -> PartitionSet:
        return PartitionSet.parse(self.partitions)

    @field_validator("signing_keys", "audit_trusted_keys", "public_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            try:
                parsed = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"L9_{str(info.field_name).upper()} is not a JSON object: {exc}") from exc
            return parsed
        return value

    @model_validator(mode="after")
    def _check_signing(self) -> Settings:
        if self.signing_scheme == "ed25519":
            if self.signing_keys:
                raise ValueError(
                    "L9_SIGNING_KEYS is set with L9_SIGNING_SCHEME=ed25519: a shared HMAC key would let "
                    "every holder sign as any agent; unset it"
                )
            if not self.public_keys:
                raise ValueError("L9_SIGNING_SCHEME=ed25519 needs L9_PUBLIC_KEYS (key id -> hex public key)")
            for key_id, hex_key in self.public_keys.items():
                try:
                    if len(bytes.fromhex(hex_key)) != 32:
                        raise ValueError("not 32 bytes")
                except ValueError as exc:
                    raise ValueError(f"L9_PUBLIC_KEYS[{key_id!r}] is not a 32-byte hex key ({exc})") from None
        return self

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        if self.heartbeat_ms * 2 >= self.lease_ms:
            raise ValueError(
                f"L9_HEARTBEAT_MS ({self.heartbeat_ms}) must be under half of L9_LEASE_MS ({self.lease_ms})"
            )
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ValueError("L9_RETRY_BACKOFF_MAX_MS must be >= L9_RETRY_BACKOFF_MS")
        return self

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    def keyring(self) -> dict[str, bytes]:
        """HMAC signing secrets by key id; created under ``home`` on first use if none is set.
        Empty with the ed25519 scheme."""
        if self.signing_scheme == "ed25519":
            return {}
        if self.signing_keys:
            return {kid: secret.encode() for kid, secret in self.signing_keys.items()}
        return {kid: secret.encode() for kid, secret in _key_file(self.home_dir).items()}

    def signer(self) -> Signer:
        """What this process signs its envelopes with: the HMAC key ``signing_key_id`` of the
        keyring, or (ed25519) the agent's own key from ``signing_key_file``."""
        if self.signing_scheme == "hmac":
            return Signer(self.keyring(), self.signing_key_id)
        if self.signing_key_file is None:
            raise ValueError("L9_SIGNING_SCHEME=ed25519: this process signs, set L9_SIGNING_KEY_FILE")
        signer = Ed25519Signer.from_key_file(self.signing_key_file.expanduser())
        if signer.key_id not in self.public_keys:
            raise ValueError(
                f"the key {signer.key_id!r} of {self.signing_key_file} is not in L9_PUBLIC_KEYS: "
                "no consumer would accept what it signs"
            )
        return signer

    def verifier(self, *, full_proofs: bool = False) -> Verifier:
        """What this process checks signatures with: the HMAC keyring, or the public keys
        (``full_proofs``: every entry's own batch proof in full, as the auditor stores it)."""
        public = {kid: bytes.fromhex(hex_key) for kid, hex_key in self.public_keys.items()}
        return Verifier(self.keyring(), public_keys=public, full_proofs=full_proofs)

    @property
    def checkpoint_dir(self) -> Path:
        return (self.audit_checkpoint_dir or self.home_dir / "checkpoints").expanduser().resolve()

    def audit_signing_key(self) -> SigningKey:
        """The Ed25519 key of checkpoints and reports (created under ``home`` if unset)."""
        if self.audit_key_file is not None:
            path = self.audit_key_file.expanduser()
            if not path.exists():
                raise ValueError(f"L9_AUDIT_KEY_FILE {path} does not exist")
        else:
            path = self.home_dir / "audit-key.hex"
            if not path.exists():
                _create_exclusive(path, secrets.token_hex(32))
        try:
            return SigningKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
        except ValueError as exc:
            raise ValueError(f"{path}: expected a 32-byte Ed25519 seed in hex ({exc})") from None

    def audit_trusted(self) -> dict[str, bytes]:
        """Public keys trusted for checkpoints and reports: the signing key's (when a key file
        exists; none is created here) and ``audit_trusted_keys``. Empty: nothing to check with."""
        default = self.home_dir / "audit-key.hex"
        has_key = self.audit_key_file is not None or default.exists()
        trusted = self.audit_signing_key().trusted() if has_key else {}
        for key_id, hex_key in self.audit_trusted_keys.items():
            try:
                trusted[key_id] = bytes.fromhex(hex_key)
            except ValueError:
                raise ValueError(f"L9_AUDIT_TRUSTED_KEYS[{key_id!r}] is not hex") from None
        return trusted

    # Each agent's own configuration, holding only what it reads.

    def delivery_policy(self, concurrency: int | None = None) -> DeliveryPolicy:
        """The delivery loop's policy (``concurrency`` overrides ``L9_CONCURRENCY``)."""
        from bus import DeliveryPolicy

        n = concurrency or self.concurrency
        return DeliveryPolicy(
            max_in_flight=max(self.batch_size, n),
            concurrency=n,
            block_ms=self.block_ms,
            max_deliveries=self.max_deliveries,
            retry_backoff_ms=self.retry_backoff_ms,
            retry_backoff_max_ms=self.retry_backoff_max_ms,
            lease_ms=self.lease_ms,
            heartbeat_ms=self.heartbeat_ms,
            drain_timeout_s=self.drain_timeout_s,
            dedupe_window_s=self.dedupe_window_s,
        )

    def graph_config(self) -> GraphConfig:
        from agents.config import GraphConfig

        return GraphConfig(
            namespace=self.namespace,
            neo4j_url=self.neo4j_url,
            neo4j_user=self.neo4j_user,
            neo4j_password=self.neo4j_password,
            neo4j_database=self.neo4j_database,
            graph_url=self.graph_url,
            graph_name=self.graph_name,
            graph_timeout_s=self.graph_timeout_s,
            graph_hook_timeout_s=self.graph_hook_timeout_s,
        )

    def sympy_config(self, database_url: str | None = None) -> SymPyConfig:
        """The SymPy worker's; metrics only with ``L9_SYMPY_METRICS`` and a ``database_url``."""
        from agents.sympy.config import MetricsConfig, SymPyConfig
        from agents.sympy.operations import ToolConfig
        from agents.sympy.parser import ParserLimits
        from memory.postgres import writer_dsn

        kernels = self.sympy_kernel_dir or self.home_dir / "sympy-kernels"
        limits = ParserLimits(
            max_chars=self.sympy_max_chars,
            max_nodes=self.sympy_max_nodes,
            max_depth=self.sympy_max_depth,
            max_exponent=self.sympy_max_exponent,
            max_factorial=self.sympy_max_factorial,
            max_integer_digits=self.sympy_max_integer_digits,
        )
        tool = ToolConfig(
            limits, self.sympy_max_points, str(kernels.expanduser().resolve()), self.sympy_compile_timeout_s
        )
        metrics = None
        if self.sympy_metrics and database_url is not None:
            metrics = MetricsConfig(
                writer_dsn(database_url, self.database_writer_url),
                admin_dsn=database_url,
                capacity=self.sympy_metrics_buffer,
                interval_s=self.sympy_metrics_flush_s,
            )
        return SymPyConfig(
            tool=tool,
            workers=self.sympy_workers,
            timeout_s=self.sympy_timeout_s,
            memory_mb=self.sympy_memory_mb,
            cache_ttl_s=self.sympy_cache_ttl_s,
            cache_max_bytes=self.sympy_cache_max_bytes,
            policy_file=self.policy_file,
            strict_mode=self.strict_mode,
            graph=self.graph_config(),
            metrics=metrics,
        )

    def planner_config(self, redis_url: str | None = None, database_url: str | None = None) -> PlannerConfig:
        from agents.extraction.config import PlannerConfig

        return PlannerConfig(
            policy_file=self.policy_file,
            strict_mode=self.strict_mode,
            graph=self.graph_config(),
            redis_url=redis_url,
            database_url=database_url,
        )

    def enforcer_config(self) -> EnforcerConfig:
        from agents.extraction.config import EnforcerConfig

        return EnforcerConfig(policy_file=self.policy_file, strict_mode=self.strict_mode)

    def generator_config(self) -> GeneratorConfig:
        from agents.extraction.config import GeneratorConfig

        return GeneratorConfig(
            extractions_dir=self.extractions_dir, sympy_deadline_s=self.generator_sympy_deadline_s
        )

    def validator_config(self) -> ValidatorConfig:
        from agents.extraction.config import ValidatorConfig

        return ValidatorConfig(test_timeout_s=self.validator_test_timeout_s)


def _create_exclusive(path: Path, text: str) -> None:
    """Write ``path`` (mode 0600) unless it exists; a concurrent creator wins atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)  # atomic
    tmp.unlink(missing_ok=True)


def _key_file(home: Path) -> dict[str, str]:
    path = home / "signing-keys.json"
    if not path.exists():
        _create_exclusive(path, json.dumps({"dev": secrets.token_hex(32)}))
    keys = json.loads(path.read_text())
    if not isinstance(keys, dict) or not keys:
        raise ValueError(f"{path}: expected a non-empty JSON object of key id -> secret")
    return {str(k): str(v) for k, v in keys.items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
