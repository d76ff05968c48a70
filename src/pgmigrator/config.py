"""Typed configuration: a YAML file, ``PGMIGRATOR_*`` environment variables and command-line flags.

Precedence: flags override environment variables, which override the file. Validation errors name
the field, where its value came from, and how to fix it. Connection strings are kept as given (the
drivers need the password) but every printable form goes through :func:`redacted`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pgmigrator import dsn as dsnmod
from pgmigrator.errors import ConfigError

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
    max_attempts: int = Field(5, ge=1, description="attempts per chunk when the destination fails")


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
    copy_: CopySettings = Field(
        default_factory=lambda: CopySettings.model_validate({}), alias="copy"
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

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to print, log or serve."""
        data = self.model_dump(mode="json", by_alias=True)
        for key in ("source", "dest"):
            if data.get(key):
                data[key] = dsnmod.redact(data[key])
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
