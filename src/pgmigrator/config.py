"""Typed configuration: a YAML file, ``PGMIGRATOR_*`` environment variables and command-line flags.

Precedence: flags override environment variables, which override the file. Validation errors name
the field, where its value came from, and how to fix it. Connection strings are kept as given (the
drivers need the password) but every printable form goes through :func:`redacted`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pgmigrator import dsn as dsnmod
from pgmigrator.errors import ConfigError
from pgmigrator.lake.settings import LakeSettings
from pgmigrator.pipeline.bidi_settings import BidiSettings
from pgmigrator.retry import RetryPolicy
from pgmigrator.stream.settings import SinkConfig, StreamSettings, redact_sink

if TYPE_CHECKING:
    from pgmigrator.schema.dump import DumpOptions

_file_data: ContextVar[dict[str, Any] | None] = ContextVar("_file_data", default=None)

LogLevel = Literal["debug", "info", "warning", "error"]
NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,40}$"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CopySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split_threshold_mb: int = Field(
        1024, ge=1, description="tables larger than this are split in ctid chunks"
    )
    chunk_mb: int = Field(512, ge=1, description="target chunk size for split tables")
    analyze: bool = Field(
        True,
        description="ANALYZE each copied table once its indexes are built (planner statistics)",
    )
    max_attempts: int | None = Field(
        None, ge=1, description="attempts per chunk when the destination fails (default: retry's)"
    )
    index_memory_mb: int = Field(
        1024,
        ge=1,
        le=2_097_151 // 1024,
        description="maintenance_work_mem of each post-data connection (index builds sort in memory up to this)",
    )
    index_parallel_workers: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="max_parallel_maintenance_workers of each post-data connection; unset: none"
        " while the connections and the copy keep the cores busy, the idle cores for a build"
        " left alone (a big table's key at the end)",
    )


class RetrySettings(BaseModel):
    """Backoff for reconnects (follow) and chunk retries (copy); see pgmigrator.retry."""

    model_config = ConfigDict(extra="forbid")
    initial_s: float = Field(0.5, ge=0, description="first delay before a retry, seconds")
    max_s: float = Field(30.0, gt=0, description="longest delay between retries, seconds")
    multiplier: float = Field(2.0, ge=1, description="each delay is the previous one times this")
    jitter: float = Field(0.2, ge=0, lt=1, description="delays vary randomly by this fraction")
    max_attempts: int = Field(
        10, ge=0, description="attempts in a row before giving up (0: never give up)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be at least initial_s")
        return self

    def policy(self, max_attempts: int | None = None) -> RetryPolicy:
        attempts = self.max_attempts if max_attempts is None else max_attempts
        return RetryPolicy(self.initial_s, self.max_s, self.multiplier, self.jitter, attempts)


class WalBudgetSettings(BaseModel):
    """How much WAL the slot may hold back on the source (see pipeline/walbudget.py)."""

    model_config = ConfigDict(extra="forbid")
    warn_mb: int = Field(1024, ge=1, description="log a warning, slot health degraded, above this")
    max_mb: int = Field(8192, ge=1, description="slot health down, /readyz unhealthy, above this")
    check_s: float = Field(5.0, gt=0, description="how often the slot is checked, seconds")
    heartbeat_s: float = Field(
        0, ge=0, description="emit a heartbeat WAL message this often when idle (0: off)"
    )
    detach_sinks: bool = Field(
        False,
        description="stream: above max_mb, detach the durable sink holding the slot back "
        "(its events go to the dead-letter queue) so the source's disk never fills",
    )

    @model_validator(mode="after")
    def _ordered(self) -> WalBudgetSettings:
        if self.max_mb < self.warn_mb:
            raise ValueError("max_mb must be at least warn_mb")
        return self


class DlqSettings(BaseModel):
    """The dead-letter queue of stream/listen sinks (see pgmigrator.stream.dlq)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="dead-letter what a sink gives up on (else: stop)")
    dsn: str | None = Field(
        None, description="database holding pgmigrator.dead_letters (default: the destination)"
    )
    max_attempts: int = Field(
        8,
        ge=0,
        description="sends of a batch on retryable errors before dead-lettering (0: retry forever)",
    )

    @field_validator("dsn")
    @classmethod
    def _valid_dsn(cls, value: str | None) -> str | None:
        if value is not None:
            dsnmod.parse(value)
        return value


class ApiSettings(BaseModel):
    """The HTTP API served by long-running commands (clone, follow, stream) when ``addr`` is set."""

    model_config = ConfigDict(extra="forbid")
    addr: str | None = Field(
        None, description="HOST:PORT to serve the API on (e.g. 127.0.0.1:8080); unset: no API"
    )
    token: str | None = Field(
        None, description="bearer token for control endpoints; unset: a random one, printed once"
    )
    protect_reads: bool = Field(False, description="require the token on read endpoints too")
    ready_max_lag_s: float = Field(10.0, gt=0, description="/readyz fails above this lag")
    ready_max_lag_mb: int = Field(64, ge=1, description="/readyz fails above this lag in MB")


class SwitchoverSettings(BaseModel):
    """How a switchover runs: the defaults of `pgmigrator switchover`'s flags, and what the API's
    ``POST /api/v1/switchover`` (the dashboard's and the TUI's button) does."""

    model_config = ConfigDict(extra="forbid")
    fence: bool = Field(False, description="make the source read-only first (undo: unfence)")
    verify: Literal["full", "sample", "none", "live"] = Field(
        "full", description="verification: live runs before the fence, while writes go on"
    )
    schema_: bool = Field(
        False,
        alias="schema",
        description="compare the schemas first; a difference stops it before the fence",
    )
    timeout_s: float = Field(60.0, gt=0, description="how long to wait for the sentinel")
    sequence_margin: int = Field(1000, ge=0, description="added to every synced sequence")
    max_lag_mb: int = Field(64, ge=0, description="refuse when the follower is further behind")


class Settings(BaseSettings):
    """Every setting of a pipeline. Field descriptions double as documentation."""

    model_config = SettingsConfigDict(
        env_prefix="PGMIGRATOR_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    name: str = Field(
        "default",
        pattern=NAME_PATTERN,
        description="pipeline name: slot, publication, origin and state file derive from it",
    )
    source: str | None = Field(None, description="source connection string")
    dest: str | None = Field(None, description="destination connection string")
    slot: str | None = Field(
        None, pattern=NAME_PATTERN, description="replication slot (default pgmigrator_<name>)"
    )
    publication: str | None = Field(
        None, pattern=NAME_PATTERN, description="publication (default pgmigrator_<name>)"
    )
    workers: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1, le=64)
    tables: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="include patterns schema.table (glob)"
    )
    exclude: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="exclude patterns schema.table (glob)"
    )
    keyless_tables: Literal["refuse", "full"] = Field(
        "refuse",
        description="selected tables with neither a primary key nor a replica identity: refuse"
        " them (publishing them would make the source refuse their UPDATE and DELETE), or set"
        " REPLICA IDENTITY FULL on them on the source",
    )
    owners: bool = Field(
        True,
        description="clone: give copied objects their source owners (the roles must exist on"
        " the destination); false: the destination's user owns them",
    )
    privileges: bool = Field(
        True, description="clone: copy GRANTs (the grantees must exist on the destination)"
    )
    tablespaces: bool = Field(
        True,
        description="clone: place tables and indexes in the source's tablespaces (they must exist"
        " on the destination); false: everything in the destination database's default",
    )
    large_objects: bool = Field(
        True,
        description="clone: copy the source's large objects (with owners, privileges, comments)"
        " after its tables; switchover: bring them up to date while the source is fenced (logical"
        " replication does not carry them); verify: compare them",
    )
    roles: bool = Field(
        False,
        description="clone: create on the destination the roles this database involves that it"
        " lacks (owners, grantees and their members; attributes, settings, memberships, password"
        " hashes when readable)",
    )
    # `copy` shadows BaseModel.copy, hence the alias; an alias is read from the environment
    # without the prefix, so PGMIGRATOR_COPY__... is listed as well.
    copy_: CopySettings = Field(
        default_factory=lambda: CopySettings.model_validate({}),
        alias="copy",
        validation_alias=AliasChoices("copy", "pgmigrator_copy"),
    )
    api: ApiSettings = Field(default_factory=lambda: ApiSettings.model_validate({}))
    switchover: SwitchoverSettings = Field(
        default_factory=lambda: SwitchoverSettings.model_validate({})
    )
    dlq: DlqSettings = Field(default_factory=lambda: DlqSettings.model_validate({}))
    sinks: list[SinkConfig] = Field(default_factory=list, description="sinks of stream/listen")
    bidi: BidiSettings = Field(default_factory=lambda: BidiSettings.model_validate({}))
    stream: StreamSettings = Field(default_factory=lambda: StreamSettings.model_validate({}))
    lake: LakeSettings = Field(default_factory=LakeSettings, description="Iceberg destination")
    retry: RetrySettings = Field(default_factory=lambda: RetrySettings.model_validate({}))
    wal_budget: WalBudgetSettings = Field(
        default_factory=lambda: WalBudgetSettings.model_validate({})
    )
    log_level: LogLevel = "info"
    log_format: Literal["text", "json"] = "text"
    state_dir: Path = Field(default_factory=lambda: Path.home() / ".pgmigrator")

    @field_validator("tables", "exclude", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("source", "dest")
    @classmethod
    def _valid_dsn(cls, value: str | None) -> str | None:
        if value is not None:
            dsnmod.parse(value)
        return value

    @property
    def slot_name(self) -> str:
        return self.slot or f"pgmigrator_{self.name}"

    @property
    def publication_name(self) -> str:
        return self.publication or f"pgmigrator_{self.name}"

    @property
    def origin_name(self) -> str:
        return f"pgmigrator_{self.name}"

    def require(self, *fields: str) -> None:
        missing = [f for f in fields if getattr(self, f) in (None, "")]
        if missing:
            flags = ", ".join(f"--{f}" for f in missing)
            envs = ", ".join(f"PGMIGRATOR_{f.upper()}" for f in missing)
            raise ConfigError(
                f"missing setting(s): {', '.join(missing)}",
                hint=f"pass {flags}, set {envs}, or put them in the --config file",
            )

    @property
    def dump_options(self) -> DumpOptions:
        """The clone's schema options, for every pg_dump of the source or the destination."""
        from pgmigrator.schema.dump import DumpOptions

        return DumpOptions(self.owners, self.privileges, self.tablespaces)

    @property
    def source_target(self) -> dsnmod.Target:
        """The source's connection, named for messages (empty when unset: see `require`)."""
        return dsnmod.Target(self.source or "", "source")

    @property
    def dest_target(self) -> dsnmod.Target:
        """The destination's connection, named for messages (empty when unset: see `require`)."""
        return dsnmod.Target(self.dest or "", "destination")

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to print, log or serve."""
        data = self.model_dump(mode="json", by_alias=True)
        for key in ("source", "dest"):
            if data.get(key):
                data[key] = dsnmod.redact(data[key])
        if data.get("dlq", {}).get("dsn"):
            data["dlq"]["dsn"] = dsnmod.redact(data["dlq"]["dsn"])
        if data.get("api", {}).get("token"):
            data["api"]["token"] = "***"
        data["sinks"] = [redact_sink(sink) for sink in data.get("sinks", [])]
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data.get() or {})


def read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}", hint="check the --config path"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
            hint="fix the YAML syntax (indentation, quotes, colons)",
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings, not {type(data).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load(config_file: Path | None = None, **flags: Any) -> Settings:
    """Build the settings from file, environment and flags (``None`` flags are ignored)."""
    data = read_file(config_file) if config_file else {}
    token = _file_data.set(data)
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None and v != ()})
    except ValidationError as exc:
        raise ConfigError(
            _describe(exc, config_file),
            hint="see `pgmigrator --help` and the README's configuration section",
        ) from None
    finally:
        _file_data.reset(token)


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling)"
        else:
            msg = err["msg"]
        bad = err.get("input")
        shown = "" if loc in ("source", "dest") or isinstance(bad, dict) else f" (got {bad!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    if config_file:
        lines.append(f"  settings come from flags, PGMIGRATOR_* variables and {config_file}")
    return "\n".join(lines)
