"""The `edgecert` command.

Exit codes: 0 success, 1 a problem was found (an expired, missing or unusable certificate),
2 bad usage or input. Errors go to stderr with their remedy; `--json` output goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives import serialization

from edgecert import __version__
from edgecert.adapters.filestore import FileCertStore, write_new_file
from edgecert.config import load_config_file, resolve_certificates
from edgecert.core.certinfo import CertFacts, ParseError, certificate_facts, load_certificates
from edgecert.core.policy import Action, Decision, RenewalPolicy, renewal_decision
from edgecert.core.schedule import AutoSlots, DailyWindow, Windows, first_attempt, next_attempt
from edgecert.core.timefmt import iso, parse_instant
from edgecert.core.units import Percent, UnitError, parse_duration, parse_percent, parse_threshold
from edgecert.crypto import DEFAULT_KEY_TYPE, build_csr, generate_key, key_to_pem, parse_subject
from edgecert.errors import ConfigError, EdgecertError, KeyGenerationError, UsageError

__all__ = ["main"]

_T = TypeVar("_T")
EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so every error prints the same way."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, remedy=f"run '{self.prog} --help'")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        code: int = args.handler(args)
    except EdgecertError as exc:
        _print_error(exc)
        return EXIT_USAGE if _is_input_error(exc) else EXIT_PROBLEM
    return code


def _build_parser() -> _Parser:
    parser = _Parser(prog="edgecert", description="Keeps IoT Edge certificates renewed through Azure Key Vault.")
    parser.add_argument("--version", action="version", version=f"edgecert {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    inspect = commands.add_parser("inspect", help="what the renewal policy decides for one certificate file")
    inspect.add_argument("cert", type=Path, metavar="CERT.pem", help="certificate file (PEM or DER; the first is used)")
    inspect.add_argument("--renew-at", default="80%", help="share of the lifetime or time before expiry (80%%, 30d)")
    inspect.add_argument("--urgent-at", default="95%", help="from here windows are ignored (95%%, 3d)")
    inspect.add_argument("--device-id", help="also compute this device's own first attempt (scheduledAt)")
    inspect.add_argument("--name", help="the certificate's name in the config (default: the file name without suffix)")
    inspect.add_argument("--spread", default="10%", help="per-device spread after renewAt (10%%, 5d)")
    inspect.add_argument("--window", help="daily window HH:MM/LENGTH[@TIMEZONE], e.g. 02:00/2h@Europe/Berlin")
    inspect.add_argument("--slots", type=int, default=24, help="automatic daily slots when no window is given")
    inspect.add_argument("--now", help="judge at this ISO-8601 instant instead of the current time")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)

    csr = commands.add_parser("csr", help="make a private key and a PKCS#10 request for manual enrolment")
    csr.add_argument("--key-type", default=DEFAULT_KEY_TYPE, help="ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096")
    csr.add_argument("--subject", required=True, help="distinguished name, e.g. 'CN=device-1,O=Contoso'")
    csr.add_argument("--dns", action="append", default=[], help="DNS subject alternative name (repeatable)")
    csr.add_argument("--ip", action="append", default=[], help="IP subject alternative name (repeatable)")
    csr.add_argument("--key-out", required=True, type=Path, help="private key file to create (mode 0600)")
    csr.add_argument("--csr-out", required=True, type=Path, help="CSR file to write (PEM)")
    csr.add_argument("--force", action="store_true", help="replace existing files")
    csr.add_argument("--json", action="store_true", help="print JSON")
    csr.set_defaults(handler=_csr)

    _add_fleet_commands(commands)

    status = commands.add_parser("status", help="the installed certificates named by a config, and their decisions")
    status.add_argument("--config", type=Path, help="config file (TOML or JSON; default: $EDGECERT_CONFIG)")
    status.add_argument("--now", help="judge at this ISO-8601 instant instead of the current time")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)
    return parser


def _add_fleet_commands(commands: Any) -> None:
    """The commands that talk to Key Vault or run the agent or the emulators."""
    renew = commands.add_parser("renew", help="one renewal pass for every configured certificate, outside the loop")
    renew.add_argument("--config", type=Path, help="config file (TOML or JSON; default: $EDGECERT_CONFIG)")
    renew.add_argument("--force", action="store_true", help="renew every certificate, due or not")
    renew.add_argument("--dry-run", action="store_true", help="issue and store nothing; say what would be done")
    renew.add_argument("--json", action="store_true", help="print JSON")
    renew.set_defaults(handler=_renew)

    check = commands.add_parser("check", help="diagnose identity, vault and permissions without side effects")
    check.add_argument("--config", type=Path, help="config file (TOML or JSON; default: $EDGECERT_CONFIG)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=_check)

    run = commands.add_parser("run", help="the IoT Edge module: keep the configured certificates renewed")
    run.set_defaults(handler=_run)

    sandbox = commands.add_parser("sandbox", help="a whole fleet renewing against local emulators (the demo)")
    sandbox.add_argument("--devices", type=int, default=5, help="how many devices (default 5)")
    sandbox.add_argument(
        "--mode", default="vault-ca", choices=["vault-ca", "vault-managed", "vault-fetch", "mixed"], help="issuance"
    )
    sandbox.add_argument("--json", action="store_true", help="print one JSON document")
    sandbox.set_defaults(handler=_sandbox)

    emulator = commands.add_parser("emulator", help="run one sandbox emulator in the foreground (for your own tests)")
    emulator.add_argument(
        "kind", choices=["keyvault", "iothub"], help="keyvault (with identity) or iothub (with workload)"
    )
    emulator.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    emulator.add_argument("--port", type=int, default=0, help="port of the vault or hub (0 picks a free one)")
    emulator.add_argument("--state-dir", type=Path, help="folder for the CA file and TLS files (default: a temp dir)")
    emulator.add_argument("--permission-model", default="rbac", choices=["rbac", "access-policy"], help="the vault's")
    emulator.set_defaults(handler=_emulator)


# -- inspect ---------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    now = _now(args.now)
    try:
        facts = certificate_facts(load_certificates(_read(args.cert))[0])
    except ParseError as exc:
        raise UsageError(f"{args.cert}: {exc}", remedy="give a PEM or DER X.509 certificate") from None
    policy = RenewalPolicy(
        renew_at=_unit(parse_threshold, args.renew_at, "--renew-at"),
        urgent_at=_unit(parse_threshold, args.urgent_at, "--urgent-at"),
        spread=_spread(args.spread),
    )
    windows = Windows(_window(args.window) if args.window else None, _slots(args.slots))
    decision = renewal_decision(facts, policy, now=now)
    result = _decision_fields(facts, decision)
    if args.device_id:
        plan = first_attempt(
            decision.thresholds, policy, windows, device_id=args.device_id, cert_name=args.name or args.cert.stem
        )
        result["scheduledAt"] = iso(plan.scheduled_at)
    _emit(result, as_json=args.json)
    return EXIT_PROBLEM if decision.action is Action.RENEW_EXPIRED else EXIT_OK


def _decision_fields(facts: CertFacts, decision: Decision) -> dict[str, Any]:
    th = decision.thresholds
    return {
        "subject": facts.subject,
        "thumbprintSha256": facts.thumbprint_sha256,
        "notBefore": iso(facts.not_before),
        "notAfter": iso(facts.not_after),
        "lifetimeSeconds": int(facts.lifetime.total_seconds()),
        "renewAfter": iso(th.renew_after),
        "urgentAfter": iso(th.urgent_after),
        "action": str(decision.action),
        "reason": decision.reason,
    }


def _window(text: str) -> DailyWindow:
    clock, _, rest = text.partition("/")
    length, _, zone = rest.partition("@")
    try:
        hours, minutes = (int(part) for part in clock.split(":"))
        return DailyWindow(time(hours, minutes), parse_duration(length), ZoneInfo(zone or "UTC"))
    except (ValueError, UnitError, ZoneInfoNotFoundError) as exc:
        raise UsageError(
            f"--window {text!r} is not a window ({exc})",
            remedy="write HH:MM/LENGTH[@TIMEZONE], e.g. 02:00/2h or 22:30/90m@Europe/Berlin",
        ) from None


def _slots(count: int) -> AutoSlots:
    try:
        return AutoSlots(count)
    except ValueError as exc:
        raise UsageError(f"--slots {count}: {exc}") from None


def _spread(text: str) -> Percent | timedelta:
    if text.strip().endswith("%"):
        return _unit(parse_percent, text, "--spread")
    return _unit(parse_duration, text, "--spread")


def _unit(parse: Callable[[str], _T], text: str, option: str) -> _T:
    try:
        return parse(text)
    except UnitError as exc:
        raise UsageError(f"{option}: {exc.problem}", remedy=exc.fix) from None


# -- csr -------------------------------------------------------------------------------------------


def _csr(args: argparse.Namespace) -> int:
    subject = parse_subject(args.subject)
    key = generate_key(args.key_type)
    request = build_csr(key, subject, dns_names=args.dns, ip_addresses=args.ip)
    if args.key_out.resolve() == args.csr_out.resolve():
        raise UsageError("--key-out and --csr-out name the same file", remedy="give two different files")
    write_new_file(args.key_out, key_to_pem(key), mode=0o600, overwrite=args.force)
    write_new_file(args.csr_out, request.public_bytes(serialization.Encoding.PEM), mode=0o644, overwrite=args.force)
    _emit(
        {
            "subject": subject.rfc4514_string(),
            "keyType": args.key_type,
            "dnsNames": list(args.dns),
            "ipAddresses": list(args.ip),
            "keyFile": str(args.key_out),
            "csrFile": str(args.csr_out),
        },
        as_json=args.json,
    )
    return EXIT_OK


# -- status ----------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    now = _now(args.now)
    config = load_config_file(_config_path(args.config))
    policy = config.renewal.policy()
    windows = config.renewal.windows()
    retry = config.renewal.retry.to_core()
    store = FileCertStore(now=lambda: now)
    report: dict[str, Any] = {}
    problem = False
    for cert in resolve_certificates(config, device_id=config.device_id, module_id=config.module_id):
        entry: dict[str, Any] = {"role": cert.role, "mode": cert.mode, "files": {"cert": str(cert.paths.cert)}}
        try:
            installed = store.load(cert.paths)
        except EdgecertError as exc:
            entry.update(state="invalid", error=exc.report())
            problem = True
        else:
            if installed is None:
                entry.update(state="missing", reason=f"{cert.paths.cert} does not exist yet")
                problem = True
            else:
                facts = certificate_facts(installed.leaf)
                decision = renewal_decision(facts, policy, now=now, desired=cert.desired_shape())
                plan = first_attempt(
                    decision.thresholds, policy, windows, device_id=config.device_id, cert_name=cert.name
                )
                upcoming = next_attempt(
                    decision, plan, windows, retry, device_id=config.device_id, cert_name=cert.name, now=now
                )
                entry.update(
                    _decision_fields(facts, decision),
                    scheduledAt=iso(plan.scheduled_at),
                    nextAttempt=iso(upcoming.at),
                )
                entry["state"] = "expired" if decision.action is Action.RENEW_EXPIRED else "installed"
                problem = problem or decision.action is Action.RENEW_EXPIRED
        report[cert.name] = entry
    result = {"deviceId": config.device_id, "checkedAt": iso(now), "idle": config.idle_reason, "certificates": report}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_status(result)
    return EXIT_PROBLEM if problem else EXIT_OK


def _print_status(result: dict[str, Any]) -> None:
    print(f"device {result['deviceId']} at {result['checkedAt']}")
    if result["idle"]:
        print(f"  idle: {result['idle']}")
    for name, entry in result["certificates"].items():
        state = entry["state"]
        line = f"  {name:<16} {state:<9}"
        if "action" in entry:
            line += f" {entry['action']:<13} notAfter {entry['notAfter']}  next attempt {entry['nextAttempt']}"
        elif "error" in entry:
            line += f" {entry['error']['code']}: {entry['error']['message']}"
        else:
            line += f" {entry['reason']}"
        print(line)
        if "error" in entry:
            print(f"  {'':<16} remedy: {entry['error']['remedy']}")


# -- run and sandbox -------------------------------------------------------------------------------


def _run(_args: argparse.Namespace) -> int:
    from edgecert.module import run_module  # noqa: PLC0415 - the SDKs load only for the commands that use them

    return run_module()


def _sandbox(args: argparse.Namespace) -> int:
    from edgecert.sandbox.main import run_sandbox  # noqa: PLC0415 - the emulators load only when asked for

    return run_sandbox(devices=args.devices, mode=args.mode, as_json=args.json)


# -- renew and check -------------------------------------------------------------------------------


def _renew(args: argparse.Namespace) -> int:
    from edgecert.renewal import renew_pass  # noqa: PLC0415 - the Azure SDKs load only for commands that use them

    config = load_config_file(_config_path(args.config))
    outcomes = asyncio.run(
        renew_pass(
            config,
            device_id=config.device_id,
            module_id=config.module_id,
            store=FileCertStore(now=lambda: datetime.now(UTC)),
            now=lambda: datetime.now(UTC),
            force=args.force,
            dry_run=args.dry_run,
        )
    )
    result = {"deviceId": config.device_id, "certificates": {o.name: o.report() for o in outcomes}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for outcome in outcomes:
            print(f"{outcome.name:<16} {outcome.result:<12} {outcome.reason}")
            if outcome.error is not None:
                print(f"{'':<16} error [{outcome.error.code}]: {outcome.error.message}")
                print(f"{'':<16} remedy: {outcome.error.remedy}")
    return EXIT_PROBLEM if any(o.result == "failed" for o in outcomes) else EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from edgecert.diagnose import run_checks  # noqa: PLC0415 - the Azure SDKs load only for commands that use them

    config = load_config_file(_config_path(args.config))
    checks = asyncio.run(run_checks(config, device_id=config.device_id, module_id=config.module_id))
    ok = all(c.status != "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.report() for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"[{c.status:^10}] {c.name}: {c.message}")
            if c.remedy and c.status == "fail":
                print(f"{'':<13}remedy: {c.remedy}")
    return EXIT_OK if ok else EXIT_PROBLEM


def _config_path(given: Path | None) -> Path:
    path = given or (Path(os.environ["EDGECERT_CONFIG"]) if os.environ.get("EDGECERT_CONFIG") else None)
    if path is None:
        raise UsageError("no config file given", remedy="pass --config FILE or set EDGECERT_CONFIG")
    return path


# -- emulator --------------------------------------------------------------------------------------


def _emulator(args: argparse.Namespace) -> int:
    from edgecert.sandbox.run import run_emulator  # noqa: PLC0415 - the emulators load only when asked for

    if not args.host.startswith("127.") and args.host not in ("::1", "localhost"):
        raise UsageError(
            f"--host {args.host} is not a loopback address", remedy="use 127.0.0.1 or another 127.x address"
        )
    return run_emulator(
        args.kind, host=args.host, port=args.port, state_dir=args.state_dir, permission_model=args.permission_model
    )


# -- shared ----------------------------------------------------------------------------------------


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise UsageError(f"--now: {exc}", remedy="write e.g. --now 2026-12-03T16:00:00Z") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", remedy="check the path") from None


def _emit(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    width = max(len(key) for key in result)
    for key, value in result.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")


def _is_input_error(exc: EdgecertError) -> bool:
    return isinstance(exc, UsageError | ConfigError | KeyGenerationError)


def _print_error(exc: EdgecertError) -> None:
    print(f"edgecert: error [{exc.code}]: {exc}", file=sys.stderr)
    print(f"remedy: {exc.remedy}", file=sys.stderr)
