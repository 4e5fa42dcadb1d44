"""The configuration: desired-properties schema 1 (DESIGN.md, "Twin contract") as frozen models.

The module twin's desired properties and the local config file (TOML or JSON) are the same
document; the file adds a top-level `deviceId` (and may set `moduleId`). Durations are strings such
as "30d", shares of the lifetime "80%", instants ISO-8601 with a zone. Every problem is reported
with its field path and how to fix it, and a bad document is rejected as a whole
(`ConfigError.problems`). Templates `{deviceId}`, `{moduleId}` and `{certificateName}` are checked
when the document is read and expanded by `resolve_certificates`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import string
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from edgecert.core.certinfo import KEY_TYPES
from edgecert.core.policy import DesiredShape, RenewalPolicy
from edgecert.core.schedule import (
    AutoSlots,
    DailyWindow,
    RetryPolicy,
    SuggestedWindow,
    Windows,
    longest_closed_gap,
)
from edgecert.core.timefmt import iso, parse_instant
from edgecert.core.units import (
    BeforeExpiry,
    Percent,
    Threshold,
    UnitError,
    format_duration,
    parse_duration,
    parse_percent,
    parse_threshold,
    threshold_instant,
)
from edgecert.crypto import parse_subject
from edgecert.errors import ConfigError, FieldProblem, KeyGenerationError
from edgecert.ports import CertPaths

__all__ = [
    "SCHEMA_VERSION",
    "TEMPLATE_VARIABLES",
    "CertificateConfig",
    "EdgecertConfig",
    "FieldValueError",
    "LocalConfig",
    "ResolvedCertificate",
    "load_config_file",
    "merge_desired",
    "parse_desired",
    "parse_local",
    "resolve_certificates",
]

SCHEMA_VERSION = 1
TEMPLATE_VARIABLES = ("deviceId", "moduleId", "certificateName")
_SAMPLE = {"deviceId": "sample-device", "moduleId": "edgecert", "certificateName": "sample"}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CERT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_VAULT_OBJECT = re.compile(r"[0-9A-Za-z-]{1,127}")
# IoT Hub device and module ids: up to 128 characters of ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ '
_DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
# Longer durations mean nothing for certificates (validityDays is at most 3650) and overflow datetime arithmetic.
_LONGEST = timedelta(days=36500)
# RFC 4514 section 2.4: characters of an id that must be escaped inside a distinguished name's value.
_DN_SPECIAL = re.compile(r'([\\"+,;<>#=])')


class FieldValueError(ValueError):
    """A field value is wrong: `problem` says what, `fix` how to correct it; `field` narrows the path."""

    def __init__(self, problem: str, fix: str, *, field: str | None = None) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix
        self.field = field


# -- value types -----------------------------------------------------------------------------------


def _from_units(parse: typing.Callable[[str], Any], kind: str, example: str) -> typing.Callable[[object], Any]:
    def validate(value: object) -> Any:
        if not isinstance(value, str):
            raise FieldValueError(f"{value!r} is not a {kind}", f"write it as a string, e.g. {example}")
        too_long = FieldValueError(f"{value!r} is longer than 100 years", f"use e.g. {example}")
        try:
            result = parse(value)
        except UnitError as exc:
            raise FieldValueError(exc.problem, exc.fix) from None
        except OverflowError:
            raise too_long from None
        delta = result.delta if isinstance(result, BeforeExpiry) else result
        if isinstance(delta, timedelta) and delta > _LONGEST:
            raise too_long
        return result

    return validate


def _duration_value(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    result: timedelta = _from_units(parse_duration, "duration", "'30d', '12h' or '90m'")(value)
    return result


def _threshold_value(value: object) -> Threshold:
    if isinstance(value, Percent | BeforeExpiry):
        return value
    result: Threshold = _from_units(parse_threshold, "threshold", "'80%' or '30d'")(value)
    return result


def _spread_value(value: object) -> Percent | timedelta:
    if isinstance(value, Percent | timedelta):
        return value
    if isinstance(value, str) and value.strip().endswith("%"):
        result: Percent = _from_units(parse_percent, "percentage", "'10%'")(value)
        return result
    return _duration_value(value)


def _spread_text(value: Percent | timedelta) -> str:
    return str(value) if isinstance(value, Percent) else format_duration(value)


def _clock_value(value: object) -> time:
    if isinstance(value, time):
        return value
    match = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise FieldValueError(f"{value!r} is not a time of day", "write HH:MM from '00:00' to '23:59'")
    return time(int(match.group(1)), int(match.group(2)))


def _instant_value(value: object) -> datetime:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if not isinstance(value, str):
        raise FieldValueError(
            f"{value!r} is not an instant",
            "write ISO-8601 with a zone, e.g. '2026-12-03T02:00:00Z'",
        )
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise FieldValueError(
            str(exc).split(";")[0], "write ISO-8601 with a zone, e.g. '2026-12-03T02:00:00Z'"
        ) from None


def _timezone_value(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise FieldValueError(f"{value!r} is not a time zone", "write an IANA name, e.g. 'UTC' or 'Europe/Berlin'")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise FieldValueError(
            f"unknown time zone {value!r}",
            "write an IANA name, e.g. 'UTC', 'Europe/Berlin', 'America/Chicago'",
        ) from None
    return value


def _weekday_value(value: object) -> str:
    text = value.strip().lower() if isinstance(value, str) else ""
    if text in _WEEKDAYS:
        return text
    if text in _WEEKDAY_FULL:
        return _WEEKDAYS[_WEEKDAY_FULL.index(text)]
    raise FieldValueError(f"{value!r} is not a weekday", f"use {', '.join(_WEEKDAYS)}")


def _template_value(value: object) -> str:
    if not isinstance(value, str):
        raise FieldValueError(
            f"{value!r} is not a string",
            "write text, optionally with {deviceId}, {moduleId}, {certificateName}",
        )
    template_variables(value)
    return value


def _ip_value(value: object) -> str:
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise FieldValueError(
            f"{value!r} is not an IP address", "write an IPv4 or IPv6 address, e.g. '10.0.0.5'"
        ) from None


def _file_value(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldValueError(f"{value!r} is not a file path", "write an absolute path or a file:// URI")
    text = value.strip()
    if text.startswith("pkcs11:"):
        raise FieldValueError(
            "PKCS#11 keys are not managed by edgecert",
            "edgecert writes file-based certificates and keys; give a file path or file:// URI",
        )
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise FieldValueError(
                f"{value!r} is not a local file URI",
                "use 'file:///absolute/path' as config.toml does",
            )
        text = unquote(parts.path)
    template_variables(text)
    if not text.startswith("/"):
        raise FieldValueError(
            f"{value!r} is a relative path",
            "give an absolute path, e.g. '/var/aziot/certs/device-id.pem'",
        )
    return text


Duration = Annotated[
    timedelta,
    PlainValidator(_duration_value),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["30d", "12h", "90m"]}),
]
ThresholdValue = Annotated[
    Percent | BeforeExpiry,
    PlainValidator(_threshold_value),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["80%", "30d"]}),
]
SpreadValue = Annotated[
    Percent | timedelta,
    PlainValidator(_spread_value),
    PlainSerializer(_spread_text, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["10%", "5d"]}),
]
ClockTime = Annotated[
    time,
    PlainValidator(_clock_value),
    PlainSerializer(lambda t: f"{t:%H:%M}", return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}),
]
Instant = Annotated[
    datetime,
    PlainValidator(_instant_value),
    PlainSerializer(iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
TimeZoneName = Annotated[str, PlainValidator(_timezone_value), WithJsonSchema({"type": "string"})]
Weekday = Annotated[str, PlainValidator(_weekday_value), WithJsonSchema({"enum": list(_WEEKDAYS)})]
Template = Annotated[str, PlainValidator(_template_value), WithJsonSchema({"type": "string"})]
IpAddress = Annotated[str, PlainValidator(_ip_value), WithJsonSchema({"type": "string"})]
FileRef = Annotated[str, PlainValidator(_file_value), WithJsonSchema({"type": "string"})]
KeyType: TypeAlias = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
Role: TypeAlias = Literal["device-identity", "edge-ca", "custom"]
Mode: TypeAlias = Literal["vault-ca", "vault-managed", "vault-fetch"]
ActivationMode: TypeAlias = Literal["restart-request", "command", "none"]
assert typing.get_args(KeyType) == KEY_TYPES  # noqa: S101 - one list of key types


def template_variables(text: str) -> list[str]:
    """Return the variables a template uses; raise `FieldValueError` for bad syntax or unknown names."""
    names = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise FieldValueError(
            f"template {text!r} is malformed ({exc})",
            "use {deviceId}, {moduleId} or {certificateName}; write '{{' or '}}' for a literal brace",
        ) from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_VARIABLES:
            raise FieldValueError(
                f"template {text!r} uses unknown variable {{{name}}}",
                f"use {', '.join('{' + v + '}' for v in TEMPLATE_VARIABLES)}",
            )
        if spec or conversion:
            raise FieldValueError(f"template {text!r} formats {{{name}}}", f"write plain {{{name}}}")
        names.append(name)
    return names


def expand(text: str, values: Mapping[str, str]) -> str:
    """Expand a template that `template_variables` accepted."""
    return text.format_map(dict(values))


# -- models ----------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        hide_input_in_errors=True,
    )


class DailyWindowConfig(_Model):
    """`renewal.window`: a daily (or weekly, with `days`) window in a local time zone."""

    start: ClockTime
    length: Duration
    timezone: TimeZoneName = "UTC"
    days: tuple[Weekday, ...] | None = None

    @field_validator("length")
    @classmethod
    def _length(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise FieldValueError(
                f"a window of {format_duration(value)} is too short to renew in",
                "make it at least '1m'",
            )
        if value > timedelta(days=1):
            raise FieldValueError(
                f"a daily window of {format_duration(value)} overlaps the next day's",
                "use at most '24h' ('24h' means renewals may happen at any time)",
            )
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise FieldValueError(
                "an empty list of days never opens the window",
                "list at least one day, or remove 'days'",
            )
        if value is not None and len(set(value)) != len(value):
            raise FieldValueError("a day is listed twice", "list each day once")
        return value

    def to_core(self) -> DailyWindow:
        """The schedule's form of this window."""
        days = None if self.days is None else frozenset(_WEEKDAYS.index(d) for d in self.days)
        return DailyWindow(self.start, self.length, ZoneInfo(self.timezone), days)


class SuggestedWindowConfig(_Model):
    """`renewal.suggestedWindow`: an absolute window with RFC 9773 (ACME ARI) semantics."""

    start: Instant
    end: Instant

    @model_validator(mode="after")
    def _order(self) -> SuggestedWindowConfig:
        if self.end <= self.start:
            raise FieldValueError(
                f"the window ends ({iso(self.end)}) before it starts ({iso(self.start)})",
                "set end after start",
                field="end",
            )
        return self


class AutoWindowConfig(_Model):
    """`renewal.autoWindow`: automatic daily slots chosen by a hash of the device id."""

    slots: StrictInt = Field(default=24, ge=1, le=1440)


class RetryConfig(_Model):
    """`renewal.retry`: backoff between failed attempts."""

    initial_delay: Duration = timedelta(seconds=1)
    max_delay: Duration = timedelta(minutes=10)
    max_attempts_per_window: StrictInt = Field(default=8, ge=1, le=1000)

    @model_validator(mode="after")
    def _delays(self) -> RetryConfig:
        if self.initial_delay <= timedelta(0):
            raise FieldValueError("initialDelay must be more than zero", "write e.g. '1s'", field="initialDelay")
        if self.max_delay < self.initial_delay:
            raise FieldValueError(
                f"maxDelay ({format_duration(self.max_delay)}) is shorter than initialDelay "
                f"({format_duration(self.initial_delay)})",
                "make maxDelay at least initialDelay",
                field="maxDelay",
            )
        if self.max_delay > timedelta(days=1):
            raise FieldValueError("maxDelay is more than a day", "use at most '24h'", field="maxDelay")
        return self

    def to_core(self) -> RetryPolicy:
        """The schedule's form of this retry policy."""
        return RetryPolicy(self.initial_delay, self.max_delay, self.max_attempts_per_window)


class RenewalConfig(_Model):
    """`renewal`: when to renew, how to spread, windows, retries, pause and forced renewal."""

    renew_at: ThresholdValue = Percent(Decimal(80))
    urgent_at: ThresholdValue = Percent(Decimal(95))
    spread: SpreadValue = Percent(Decimal(10))
    window: DailyWindowConfig | None = None
    suggested_window: SuggestedWindowConfig | None = None
    auto_window: AutoWindowConfig = AutoWindowConfig()
    retry: RetryConfig = RetryConfig()
    paused: StrictBool = False
    force_renew_token: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _consistent(self) -> RenewalConfig:
        for name, value in (("renewAt", self.renew_at), ("urgentAt", self.urgent_at)):
            if isinstance(value, Percent) and not 0 < value.value < 100:
                raise FieldValueError(
                    f"{value} is not inside the lifetime",
                    "use more than 0% and less than 100%, e.g. '80%'",
                    field=name,
                )
            if isinstance(value, BeforeExpiry) and value.delta <= timedelta(0):
                raise FieldValueError(f"{value} before expiry is expiry itself", "use e.g. '30d'", field=name)
        if isinstance(self.spread, Percent) and self.spread.value >= 100:
            raise FieldValueError(
                f"a spread of {self.spread} covers the whole lifetime",
                "use e.g. '10%'",
                field="spread",
            )
        ordered = _threshold_order(self.renew_at, self.urgent_at)
        if ordered is False:
            raise FieldValueError(
                f"urgentAt ({self.urgent_at}) comes before renewAt ({self.renew_at})",
                "urgency starts after renewal is due: make urgentAt later in the lifetime than renewAt",
                field="urgentAt",
            )
        if self.window is not None and self.suggested_window is not None:
            raise FieldValueError(
                "both window and suggestedWindow are set",
                "keep one: a daily window or an absolute suggested window",
                field="suggestedWindow",
            )
        return self

    def policy(self) -> RenewalPolicy:
        """The core's renewal policy."""
        return RenewalPolicy(self.renew_at, self.urgent_at, self.spread)

    def windows(self) -> Windows:
        """The core's windows."""
        explicit: DailyWindow | SuggestedWindow | None = None
        if self.window is not None:
            explicit = self.window.to_core()
        elif self.suggested_window is not None:
            explicit = SuggestedWindow(self.suggested_window.start, self.suggested_window.end)
        return Windows(explicit, AutoSlots(self.auto_window.slots))


def _threshold_order(renew: Threshold, urgent: Threshold) -> bool | None:
    """True when urgent is after renew for every lifetime, False when before, None when it depends."""
    if isinstance(renew, Percent) and isinstance(urgent, Percent):
        return urgent.value > renew.value
    if isinstance(renew, BeforeExpiry) and isinstance(urgent, BeforeExpiry):
        return urgent.delta < renew.delta
    return None


class KeyConfig(_Model):
    """`certificates.<name>.key`: the key type made for each renewal."""

    type: KeyType = "ec-p256"


class FilesConfig(_Model):
    """`certificates.<name>.files`: the live files, as IoT Edge's config.toml names them."""

    cert: FileRef
    key: FileRef
    chain: FileRef | None = None


class CertificateConfig(_Model):
    """`certificates.<name>`: one managed certificate."""

    role: Role = "custom"
    mode: Mode
    certificate_name: Template | None = None
    issuer_certificate_name: Template | None = None
    issuer_key_name: Template | None = None
    #: vault-ca: the issuing CA's chain pinned in a PEM file (issuing CA first) instead of read from Key Vault.
    issuer_chain: FileRef | None = None
    key: KeyConfig | None = None
    subject: Template | None = None
    dns_names: tuple[Template, ...] = ()
    ip_addresses: tuple[IpAddress, ...] = ()
    validity_days: StrictInt | None = Field(default=None, ge=1, le=3650)
    files: FilesConfig

    @model_validator(mode="after")
    def _consistent(self) -> CertificateConfig:
        self._check_mode_fields()
        self._check_vault_names()
        self._check_subject()
        self._check_dns_names()
        if self.files.cert == self.files.key or self.files.chain in (self.files.cert, self.files.key):
            raise FieldValueError(
                "two files of this certificate share a path", "give cert, key and chain their own paths", field="files"
            )
        return self

    def _check_mode_fields(self) -> None:
        vault_ca = self.mode == "vault-ca"
        rules = (
            (
                "issuerCertificateName",
                self.issuer_certificate_name,
                vault_ca,
                "the name of the CA certificate in the vault",
            ),
            ("issuerKeyName", self.issuer_key_name, vault_ca, "the name of the CA key in the vault"),
            (
                "certificateName",
                self.certificate_name,
                not vault_ca,
                "the certificate object in Key Vault, e.g. '{deviceId}-id'",
            ),
        )
        for field, value, needed, what in rules:
            if needed and value is None:
                raise FieldValueError(f"mode {self.mode} needs {field}", f"add {field}: {what}", field=field)
            if not needed and value is not None:
                raise FieldValueError(f"{field} is not used by mode {self.mode}", f"remove {field}", field=field)
        if self.issuer_chain is not None and self.mode != "vault-ca":
            raise FieldValueError(
                f"issuerChain is used only by mode vault-ca, not {self.mode}", "remove issuerChain", field="issuerChain"
            )
        if self.mode == "vault-fetch":
            decided_by_vault = {"key": self.key is not None, "validityDays": self.validity_days is not None}
            for field, given in decided_by_vault.items():
                if given:
                    raise FieldValueError(
                        f"in vault-fetch the certificate's policy in Key Vault decides {field}",
                        f"remove {field}, or set it in the Key Vault certificate policy",
                        field=field,
                    )

    def _check_vault_names(self) -> None:
        for field, value in (
            ("certificateName", self.certificate_name),
            ("issuerCertificateName", self.issuer_certificate_name),
            ("issuerKeyName", self.issuer_key_name),
        ):
            if value is not None and not _VAULT_OBJECT.fullmatch(expand(value, _SAMPLE)):
                raise FieldValueError(
                    f"{value!r} is not a Key Vault object name",
                    "use 1-127 letters, digits and dashes (templates allowed)",
                    field=field,
                )

    def _check_dns_names(self) -> None:
        for index, name in enumerate(self.dns_names):
            if not _is_dns_name(expand(name, _SAMPLE)):
                raise FieldValueError(
                    f"{name!r} is not a DNS name",
                    "use letters, digits, dashes and dots, e.g. '{deviceId}.factory.local'",
                    field=f"dnsNames[{index}]",
                )

    def _check_subject(self) -> None:
        try:
            name = parse_subject(expand(self.effective_subject, _SAMPLE))
        except KeyGenerationError as exc:
            raise FieldValueError(exc.message, exc.remedy, field="subject") from None
        cns = [a.value for a in name if a.oid.dotted_string == "2.5.4.3"]
        if self.role == "device-identity" and cns != [_SAMPLE["deviceId"]]:
            raise FieldValueError(
                "a device-identity certificate must have CN = the device id "
                "(IoT Hub authenticates X.509 devices by CN)",
                "use subject 'CN={deviceId}' (other attributes may follow, e.g. 'CN={deviceId},O=Contoso')",
                field="subject",
            )
        if self.role == "edge-ca" and _SAMPLE["deviceId"] in cns:
            raise FieldValueError(
                "an Edge CA's CN must not equal the device id (IoT Edge refuses it)",
                "use e.g. 'CN={deviceId} Edge CA'",
                field="subject",
            )

    @property
    def effective_subject(self) -> str:
        """The subject template, defaulted by role."""
        if self.subject is not None:
            return self.subject
        return "CN={deviceId} Edge CA" if self.role == "edge-ca" else "CN={deviceId}"

    @property
    def effective_key_type(self) -> str | None:
        """The key type to request (None in vault-fetch, where Key Vault's policy decides)."""
        if self.mode == "vault-fetch":
            return None
        return self.key.type if self.key is not None else "ec-p256"


class VaultConfig(_Model):
    """`vault`: the Key Vault and the identity used with it."""

    url: str
    client_id: str | None = None
    ca_file: FileRef | None = None
    #: False only for a vault that is not under vault.azure.net (the sandbox on 127.0.0.1).
    verify_challenge_resource: StrictBool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise FieldValueError(
                f"{value!r} is not a vault URL",
                "use the vault's https URL, e.g. 'https://myvault.vault.azure.net'",
            )
        return value.rstrip("/")

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and not _UUID.fullmatch(value):
            raise FieldValueError(
                f"{value!r} is not a client id",
                "use the user-assigned identity's client id (a GUID), or remove clientId for the system identity",
            )
        return value


class ActivationConfig(_Model):
    """`activation`: how the runtime takes new files, and how long to wait for proof."""

    mode: ActivationMode = "restart-request"
    command: tuple[str, ...] | None = None
    verify_timeout: Duration = timedelta(minutes=5)

    @model_validator(mode="after")
    def _command(self) -> ActivationConfig:
        if self.mode == "command" and not self.command:
            raise FieldValueError(
                "mode 'command' needs a command",
                "add command as a list, e.g. ['iotedge', 'system', 'restart']",
                field="command",
            )
        if self.mode != "command" and self.command is not None:
            raise FieldValueError(
                f"command is used only with mode 'command', not {self.mode!r}",
                "remove command or set mode: command",
                field="command",
            )
        if not timedelta(seconds=10) <= self.verify_timeout <= timedelta(hours=1):
            raise FieldValueError(
                f"verifyTimeout {format_duration(self.verify_timeout)} is outside 10s to 1h",
                "IoT Edge restarts take tens of seconds; use e.g. '5m'",
                field="verifyTimeout",
            )
        return self


# pydantic's pattern is searched, not matched: anchor it so 'identity.v2' or '2nd' cannot pass on a substring
CertName = Annotated[str, Field(pattern=f"^{_CERT_NAME.pattern}$")]


class EdgecertConfig(_Model):
    """The module twin's desired properties, schema 1."""

    schema_version: Literal[1]
    vault: VaultConfig | None = None
    renewal: RenewalConfig = RenewalConfig()
    certificates: dict[CertName, CertificateConfig] = Field(default_factory=dict)
    activation: ActivationConfig = ActivationConfig()

    @field_validator("schema_version", mode="before")
    @classmethod
    def _schema_integer(cls, value: object) -> object:
        # Literal[1] alone also takes true and 1.0 (they equal 1 in Python); the contract says the integer 1.
        if type(value) is not int:
            raise FieldValueError(
                f"{value!r} is not the integer 1", "this edgecert reads schema 1; write schemaVersion: 1"
            )
        return value

    @model_validator(mode="after")
    def _whole(self) -> EdgecertConfig:
        if self.certificates and self.vault is None:
            raise FieldValueError(
                "certificates are configured but no vault",
                "add vault: {url: 'https://<vault>.vault.azure.net'}",
                field="vault",
            )
        seen: dict[str, str] = {}
        for name, cert in self.certificates.items():
            for kind in ("cert", "key", "chain"):
                path = getattr(cert.files, kind)
                if path is None:
                    continue
                if path in seen:
                    raise FieldValueError(
                        f"{path} is also {seen[path]}",
                        "give each certificate its own files",
                        field=f"certificates.{name}.files.{kind}",
                    )
                seen[path] = f"certificates.{name}.files"
        for role in ("device-identity", "edge-ca"):
            holders = [n for n, c in self.certificates.items() if c.role == role]
            if len(holders) > 1:
                raise FieldValueError(
                    f"{len(holders)} certificates have role {role}: {', '.join(holders)}",
                    f"a device has one {role} certificate; set the others to role 'custom'",
                    field=f"certificates.{holders[1]}.role",
                )
        for name, cert in self.certificates.items():
            _check_window_fits(self.renewal, cert, name)
        return self

    @property
    def idle_reason(self) -> str | None:
        """Why the agent has nothing to do, or None when it has work."""
        if self.renewal.paused:
            return "renewal.paused is true"
        if not self.certificates:
            return "no certificates are configured"
        return None

    def to_document(self) -> dict[str, Any]:
        """The document form (camelCase, strings for durations), which parses back to an equal config."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class LocalConfig(EdgecertConfig):
    """The local config file: the desired document plus the device's identity."""

    device_id: str
    module_id: str = "edgecert"

    @field_validator("device_id", "module_id")
    @classmethod
    def _iot_id(cls, value: str) -> str:
        if not _DEVICE_ID.fullmatch(value):
            raise FieldValueError(
                f"{value!r} is not an IoT Hub id",
                "use up to 128 letters, digits and - . % _ * ? ! ( ) , : = @ $ '",
            )
        return value


def _check_window_fits(renewal: RenewalConfig, cert: CertificateConfig, name: str) -> None:
    """Reject a window that would be closed for the whole renewal span of a certificate."""
    if cert.validity_days is None or renewal.suggested_window is not None:
        return
    start = datetime(2000, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=cert.validity_days)
    span = threshold_instant(start, end, renewal.urgent_at) - threshold_instant(start, end, renewal.renew_at)
    window = renewal.windows().explicit
    periodic = window if isinstance(window, DailyWindow) else renewal.windows().auto
    gap = longest_closed_gap(periodic)
    if span <= timedelta(0):
        raise FieldValueError(
            f"with validityDays {cert.validity_days} urgentAt ({renewal.urgent_at}) comes at or before renewAt "
            f"({renewal.renew_at}), so renewal would always be urgent",
            "make urgentAt later in the lifetime than renewAt (e.g. both as percentages: '80%' and '95%')",
            field=f"certificates.{name}.validityDays",
        )
    if span < gap:
        where = "renewal.window" if renewal.window is not None else "renewal.autoWindow.slots"
        raise FieldValueError(
            f"with validityDays {cert.validity_days} the renewal span (renewAt {renewal.renew_at} to urgentAt "
            f"{renewal.urgent_at}) is {format_duration(span)}, but {where} stays closed for up to "
            f"{format_duration(gap)}: most renewals would miss the window",
            "open the window more often or for longer (e.g. autoWindow.slots: 1 for short-lived certificates), "
            "or move renewAt earlier",
            field=f"certificates.{name}.validityDays",
        )


def _is_dns_name(text: str) -> bool:
    labels = text.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    return 0 < len(text) <= 253 and bool(labels) and all(_DNS_LABEL.fullmatch(label) for label in labels)


# -- loading, merging, resolving ---------------------------------------------------------------


def parse_desired(document: Mapping[str, Any], *, source: str = "desired properties") -> EdgecertConfig:
    """Validate a desired-properties document (twin metadata such as `$version` is ignored)."""
    return _validate(EdgecertConfig, _strip_metadata(document), source)


def parse_local(document: Mapping[str, Any], *, source: str = "config file") -> LocalConfig:
    """Validate a local config document (the desired document plus `deviceId`)."""
    return _validate(LocalConfig, _strip_metadata(document), source)


def load_config_file(path: Path) -> LocalConfig:
    """Read and validate a local config file, TOML (`.toml`) or JSON (anything else)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [
                FieldProblem(
                    str(path),
                    f"cannot be read ({exc.strerror})",
                    "check the path given to --config",
                )
            ],
            source=str(path),
        ) from None
    try:
        document = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(
            [FieldProblem(str(path), f"is not valid {kind} ({exc})", f"fix the {kind} syntax")],
            source=str(path),
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            [FieldProblem(str(path), "does not hold an object", "write the settings as a JSON object")],
            source=str(path),
        )
    return parse_local(document, source=str(path))


def merge_desired(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a desired-properties patch (JSON merge patch, RFC 7386: null removes a member)."""
    merged: dict[str, Any] = dict(base)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_desired(merged[key], value)
        else:
            # a new object is merged into nothing, which also drops its null members (RFC 7386)
            merged[key] = merge_desired({}, value) if isinstance(value, Mapping) else value
    return merged


@dataclass(frozen=True, slots=True)
class ResolvedCertificate:
    """One managed certificate with its templates expanded for a device."""

    name: str
    role: str
    mode: str
    vault_object: str | None
    issuer_certificate: str | None
    issuer_key: str | None
    issuer_chain: Path | None
    key_type: str | None
    subject: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    validity_days: int | None
    paths: CertPaths

    def desired_shape(self) -> DesiredShape:
        """What the installed certificate must look like (a difference means re-issue)."""
        return DesiredShape(
            subject=self.subject,
            dns_names=frozenset(self.dns_names) if self.mode != "vault-fetch" else None,
            ip_addresses=frozenset(self.ip_addresses) if self.mode != "vault-fetch" else None,
            key_type=self.key_type,
        )


def resolve_certificates(
    config: EdgecertConfig, *, device_id: str, module_id: str = "edgecert"
) -> list[ResolvedCertificate]:
    """Expand every certificate's templates for a device; raise ConfigError naming bad results."""
    resolved = []
    problems = []
    for name, cert in config.certificates.items():
        values = {"deviceId": device_id, "moduleId": module_id, "certificateName": name}
        # ids may hold ',', '+' or '=' (IoT Hub allows them): escape them so they stay inside the attribute value
        dn_values = {key: _DN_SPECIAL.sub(r"\\\1", value) for key, value in values.items()}
        where = f"certificates.{name}"
        objects = {}
        for field, template in (
            ("certificateName", cert.certificate_name),
            ("issuerCertificateName", cert.issuer_certificate_name),
            ("issuerKeyName", cert.issuer_key_name),
        ):
            value = expand(template, values) if template is not None else None
            if value is not None and not _VAULT_OBJECT.fullmatch(value):
                problems.append(
                    FieldProblem(
                        f"{where}.{field}",
                        f"expands to {value!r}, which is not a Key Vault object name",
                        "Key Vault names allow only letters, digits and dashes; "
                        "do not build them from ids with other characters",
                    )
                )
            objects[field] = value
        try:
            subject = parse_subject(expand(cert.effective_subject, dn_values)).rfc4514_string()
        except KeyGenerationError as exc:
            problems.append(FieldProblem(f"{where}.subject", exc.message, exc.remedy))
            continue
        dns = tuple(expand(d, values) for d in cert.dns_names)
        for index, dns_name in enumerate(dns):
            if not _is_dns_name(dns_name):
                problems.append(
                    FieldProblem(
                        f"{where}.dnsNames[{index}]",
                        f"expands to {dns_name!r}, which is not a DNS name",
                        "build DNS names only from DNS-safe ids",
                    )
                )
        resolved.append(
            ResolvedCertificate(
                name=name,
                role=cert.role,
                mode=cert.mode,
                vault_object=objects["certificateName"],
                issuer_certificate=objects["issuerCertificateName"],
                issuer_key=objects["issuerKeyName"],
                issuer_chain=_expanded_path(cert.issuer_chain, values, f"{where}.issuerChain", problems)
                if cert.issuer_chain is not None
                else None,
                key_type=cert.effective_key_type,
                subject=subject,
                dns_names=dns,
                ip_addresses=cert.ip_addresses,
                validity_days=cert.validity_days,
                paths=CertPaths(
                    _expanded_path(cert.files.cert, values, f"{where}.files.cert", problems),
                    _expanded_path(cert.files.key, values, f"{where}.files.key", problems),
                    _expanded_path(cert.files.chain, values, f"{where}.files.chain", problems)
                    if cert.files.chain is not None
                    else None,
                ),
            )
        )
    if problems:
        raise ConfigError(problems, source=f"configuration for device {device_id!r}")
    return resolved


def _expanded_path(template: str, values: Mapping[str, str], where: str, problems: list[FieldProblem]) -> Path:
    """Expand a file template; an id such as '..' (a valid IoT Hub id) must not move the file."""
    text = expand(template, values)
    if any(part in (".", "..") for part in text.split("/")) or text.count("/") != template.count("/"):
        problems.append(
            FieldProblem(
                where,
                f"expands to {text!r}, which leaves the folder the template names",
                "build file names only from ids without '/', or use a fixed path",
            )
        )
    return Path(text)


def _strip_metadata(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_metadata(v) for k, v in value.items() if not str(k).startswith("$")}
    return value


_JSON_KIND = {
    "bool": "true or false",
    "int": "a whole number",
    "string": "a string",
    "dict": "an object",
    "model": "an object",
    "list": "a list",
    "tuple": "a list",
    "float": "a number",
}


_M = typing.TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], document: Mapping[str, Any], source: str) -> _M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise ConfigError([_problem(model, err) for err in exc.errors()], source=source) from None


_BOUNDS = {
    "greater_than_equal": ("must be at least", "ge"),
    "less_than_equal": ("must be at most", "le"),
    "string_too_long": ("must have at most this many characters:", "max_length"),
}


def _problem(model: type[BaseModel], err: Any) -> FieldProblem:
    loc = [str(part) for part in err["loc"]]
    kind: str = err["type"]
    error = err.get("ctx", {}).get("error")
    if isinstance(error, FieldValueError):
        if error.field:
            loc.append(error.field)
        return FieldProblem(_path(loc), error.problem, error.fix)
    if loc and loc[-1] == "[key]":
        return FieldProblem(
            _path(loc[:-1]),
            "is not a usable certificate name",
            "start with a letter; use up to 64 letters, digits, '-' and '_' (twin property names)",
        )
    if kind == "missing":
        fix = "add schemaVersion: 1" if loc == ["schemaVersion"] else "add it"
        return FieldProblem(_path(loc), "is required", fix)
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return FieldProblem(
            _path(loc),
            "is not a field of schema 1",
            f"{hint}remove it; known fields here: {', '.join(allowed)}",
        )
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        if loc == ["schemaVersion"]:
            return FieldProblem("schemaVersion", "must be 1", "this edgecert reads schema 1; write schemaVersion: 1")
        return FieldProblem(_path(loc), "has a value that is not allowed", f"use one of {expected}")
    base = kind.split("_", maxsplit=1)[0]
    if kind.endswith("_type") and base in _JSON_KIND:
        return FieldProblem(_path(loc), f"must be {_JSON_KIND[base]}", f"write {_JSON_KIND[base]}")
    bounds = _BOUNDS.get(kind)
    if bounds is not None:
        limit = err.get("ctx", {}).get(bounds[1])
        return FieldProblem(_path(loc), f"{bounds[0]} {limit}", f"use a value that is {bounds[0]} {limit}")
    if kind == "string_pattern_mismatch":
        return FieldProblem(_path(loc), "has the wrong form", f"match {err.get('ctx', {}).get('pattern')}")
    return FieldProblem(_path(loc), str(err["msg"]), "see the schema 1 reference in README.md")


def _path(loc: list[str]) -> str:
    parts: list[str] = []
    for part in loc:
        if part.isdigit() and parts:
            parts[-1] += f"[{part}]"
        else:
            parts.append(part)
    return ".".join(parts) or "(document)"


def _allowed_fields(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names (aliases) allowed at `loc`, walking the model tree."""
    current: Any = model
    for part in loc:
        current = _inner_model(current, part)
        if current is None:
            return []
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


def _inner_model(current: Any, part: str) -> Any:
    if isinstance(current, type) and issubclass(current, BaseModel):
        for name, info in current.model_fields.items():
            if part in (info.alias, name):
                return _unwrap(info.annotation)
        return None
    origin = typing.get_origin(current)
    if origin is dict:
        return _unwrap(typing.get_args(current)[1])
    return None


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(options[0]) if len(options) == 1 else annotation
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation
