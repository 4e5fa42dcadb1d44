"""The troubleshooting guide, generated from the error tree so that it cannot drift from the code.

`docs/troubleshooting.md` is the output of `troubleshooting_markdown()`: one section per code of
`edgecert.errors.ERROR_CLASSES` (its class, parent, whether the agent retries it, its `summary` and
`default_remedy`, read from the classes themselves) plus the codes that only `edgecert check`
reports (`CHECK_CODES`), each with operator notes kept here next to the generator.

    python -m edgecert.docs                                # print the guide
    python -m edgecert.docs --write docs/troubleshooting.md
    python -m edgecert.docs --check docs/troubleshooting.md  # exit 1 when the file is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent

from edgecert.errors import ERROR_CLASSES, EdgecertError

__all__ = ["CHECK_CODES", "NOTES", "Note", "main", "troubleshooting_markdown"]


@dataclass(frozen=True)
class Note:
    """Operator notes for one code: more on what it means, and how to fix it (Markdown)."""

    meaning: str = ""
    fix: str = ""


@dataclass(frozen=True)
class CheckCode:
    """A code that only `edgecert check` reports (a finding, not an error class)."""

    summary: str
    remedy: str


#: Codes `edgecert check` reports that are not error classes (see `edgecert.diagnose`).
CHECK_CODES: dict[str, CheckCode] = {
    "kv.too-broad": CheckCode(
        summary="the identity can read secrets it was never meant to read (a role or access policy at vault scope)",
        remedy="grant roles at the scope of each object (/secrets/<name>) instead of the whole vault",
    ),
}


def _md(text: str) -> str:
    return dedent(text).strip()


_OID = "<object id of the device's identity>"
_VAULT_ID = "/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<vault>"

#: Notes per code; a code without a note still gets its summary and default remedy.
NOTES: dict[str, Note] = {
    "error": Note(
        meaning=_md("""
            The base of the tree. It appears only when a failure did not fit a more specific code; the message
            says what failed.
        """),
        fix=_md("""
            Run `edgecert check` on the device (or `az iot hub invoke-module-method … --method-name getStatus`)
            and read the module's log: `sudo iotedge logs edgecert --tail 200`. If the message names no cause,
            report it with that log line.
        """),
    ),
    "usage.invalid": Note(
        meaning="A command was given arguments it cannot use. Commands exit with code 2.",
        fix="Run the command with `--help`, e.g. `edgecert inspect --help`.",
    ),
    "config.invalid": Note(
        meaning=_md("""
            The desired properties (or the `--config` file) were rejected **as a whole**; the last good
            configuration stays in force. The module twin reports `config.status: "rejected"` and one entry per
            problem in `config.errors` (`path`, `message`, `fix`).
        """),
        fix=_md("""
            Read the problems and fix each field they name:

            ```sh
            az iot hub module-twin show --hub-name <hub> --device-id <device> --module-id edgecert \\
              --query properties.reported.config
            edgecert check --config edgecert.toml      # the same validation, locally
            ```

            If the module is deployed by a deployment manifest, fix the `edgecert` section of
            `properties.desired` in the manifest: the manifest overwrites the twin's desired properties, so an
            edit made with `az iot hub module-twin update` is lost at the next deployment.
        """),
    ),
    "cert.invalid": Note(
        meaning="The base of the certificate problems below; the message names the file and the check that failed.",
        fix="Read the message; `edgecert status --config edgecert.toml` shows what is installed.",
    ),
    "cert.unreadable": Note(
        meaning=_md("""
            A file named in `certificates.<name>.files` is not a certificate or key edgecert can read (a
            password-protected key, a truncated file, the wrong path). The agent treats unusable installed files
            as missing and renews them.
        """),
        fix=_md("""
            ```sh
            openssl x509 -in <cert.pem> -noout -subject -enddate   # must print a subject
            openssl pkey -in <key.pem> -noout                       # must not ask for a password
            ```
        """),
    ),
    "cert.key-mismatch": Note(
        meaning="The private key file does not belong to the certificate file (one of the pair was replaced).",
        fix=_md("""
            Compare the public keys; they must be equal:

            ```sh
            openssl x509 -in <cert.pem> -noout -pubkey | openssl sha256
            openssl pkey -in <key.pem> -pubout | openssl sha256
            ```

            Then restore the matching pair (`*.previous` holds the last pair edgecert installed) or issue a new
            one:

            ```sh
            az iot hub invoke-module-method --hub-name <hub> --device-id <device> --module-id edgecert \\
              --method-name renewNow --method-payload '{"certificate": "<name>", "force": true}'
            ```
        """),
    ),
    "cert.chain-untrusted": Note(
        meaning=_md("""
            The new certificate's chain does not build to the configured trust anchor, so edgecert refused to
            install it (the live files are untouched).
        """),
        fix=_md("""
            The issuing CA (in `vault-ca` the certificate `issuerCertificateName`, or `issuerChain` when pinned)
            must be in the runtime's trust bundle (`trust_bundle_cert` in `/etc/aziot/config.toml`), and the chain
            file must hold any intermediates:

            ```sh
            openssl verify -CAfile <trust-bundle.pem> -untrusted <chain.pem> <cert.pem>
            ```
        """),
    ),
    "cert.not-valid-now": Note(
        meaning="A certificate is not yet valid or has expired at the device's current time.",
        fix=_md("""
            A wrong clock is the usual cause: `timedatectl status` must say `System clock synchronized: yes`.
            Then renew: `renewNow` with `{"force": true}` (above), or `edgecert renew --force` on a host.
        """),
    ),
    "cert.shape-mismatch": Note(
        meaning=_md("""
            What was issued differs from the configuration (subject, SANs, key type or CA flag), so it was not
            installed. In `vault-managed` and `vault-fetch` the shape comes from the certificate's policy in
            Key Vault.
        """),
        fix=_md("""
            Compare the policy with the twin's `certificates.<name>` (`subject`, `dnsNames`, `key.type`):

            ```sh
            az keyvault certificate show --vault-name <vault> --name <name> \\
              --query "{subject: policy.x509CertificateProperties.subject, key: policy.keyProperties}"
            ```
        """),
    ),
    "store.io": Note(
        meaning=_md("""
            Writing or reading the certificate files failed. Every folder holding a file the module manages
            must be mounted read-write into the container at the same path as on the host: a swap writes
            `*.new`, `*.previous` and a journal next to each live file. `deployment.template.json` runs the
            module as root with `CHOWN`, `DAC_OVERRIDE` and `FOWNER`; a deployment that sets another
            `createOptions.User` must give that user write access to those folders.
        """),
        fix=_md("""
            ```sh
            docker inspect edgecert --format '{{json .HostConfig.Binds}} {{.Config.User}}'
            sudo -u '#<uid of the module>' test -w <host folder> && echo writable
            df -h <host folder>
            ```
        """),
    ),
    "store.ownership": Note(
        meaning=_md("""
            A renewed file has to keep the owner of the file it replaces: `aziot-keyd` reads keys as
            `aziotks`, and a `0600` key owned by anyone else is unreadable to it. The module ran as a uid
            without `CAP_CHOWN` (the image's uid 10001, or a `createOptions.User` other than the owner), so
            the swap was refused before any live file changed. The device keeps its current certificate.
        """),
        fix=_md("""
            Deploy with the template's `createOptions` (`"User":"0:0"` and a `CapDrop` list that keeps
            `CHOWN`, `DAC_OVERRIDE` and `FOWNER`), or run the module as the uid that owns the files:

            ```sh
            stat -c '%U:%G %a %n' /var/aziot/secrets/*.pem /var/aziot/certs/*.pem
            docker inspect edgecert --format '{{.Config.User}} {{json .HostConfig.CapDrop}}'
            ```
        """),
    ),
    "store.recovery": Note(
        meaning=_md("""
            On start, an interrupted swap (journal `<cert>.swap`, files `*.new`) could be neither finished nor
            undone. The agent does not touch the files until a person has looked.
        """),
        fix=_md("""
            Put back a pair that matches (certificate and key together), remove the leftovers, restart:

            ```sh
            cd <certificate folder>
            ls -l *.new *.previous *.swap
            cp -p <cert>.previous <cert> && cp -p <key>.previous <key>   # only as a pair
            rm -f *.new <cert>.swap
            sudo iotedge restart edgecert
            ```
        """),
    ),
    "crypto.keygen": Note(
        meaning="A private key or CSR could not be made on the device (`vault-ca`).",
        fix=_md("""
            Check `key.type` (`ec-p256`, `ec-p384`, `rsa-2048`, `rsa-3072`, `rsa-4096`) and that `subject` is an
            RFC 4514 name such as `CN={deviceId}`.
        """),
    ),
    "issue.failed": Note(
        meaning="Key Vault issuance failed in a way none of the codes below describes; the message has the detail.",
        fix="Run `edgecert check`: it probes the identity, the vault, the permission model and each object.",
    ),
    "issue.transient": Note(
        meaning=_md("""
            A timeout, a dropped connection or a 5xx answer. The agent retries with exponential backoff and full
            jitter (from `renewal.retry.initialDelay` up to `maxDelay`); the certificate reports `backing-off`.
        """),
        fix=_md("""
            Nothing, if it passes. If it persists, check the route to the vault from the device (proxy settings
            of the module, DNS, packet loss) and the Azure status page for Key Vault in the vault's region.
        """),
    ),
    "issue.throttled": Note(
        meaning=_md("""
            Key Vault answered 429. Its limits are per vault and region and shared by every caller: a
            certificate create counts as a key create (20 per 10 s for software keys, 10 for HSM keys), a sign
            as an "other" key transaction (4,000 per 10 s software, 2,000 HSM, for RSA-2048 and EC). The message
            says how many requests this device sent in the last 10 s; when that is small, the rest of the fleet
            is renewing at the same time.
        """),
        fix=_md("""
            Spread the fleet ([operations.md](operations.md)): keep `renewal.spread` (default `10%`), widen
            `renewal.window` or add `renewal.autoWindow.slots`; split a large fleet over several vaults; for
            large fleets prefer `vault-ca`, whose sign is not limited by the create rate. The agent itself
            honours `Retry-After` and backs off.
        """),
    ),
    "identity.unavailable": Note(
        meaning=_md("""
            The module got no token from the managed-identity endpoint: no identity is assigned to the host, the
            endpoint is not reachable from the container, or `vault.clientId` names a user-assigned identity the
            host does not have.
        """),
        fix=_md("""
            ```sh
            az vm identity show --resource-group <rg> --name <vm>          # Azure VM: is one assigned?
            az vm identity assign --resource-group <rg> --name <vm>        # assign the system identity
            azcmagent show                                                 # Azure Arc-enabled server
            ```

            On an Azure VM, check from the host that the endpoint answers, without printing the token:

            ```sh
            curl -s -G -H Metadata:true http://169.254.169.254/metadata/identity/oauth2/token \\
              --data-urlencode api-version=2018-02-01 --data-urlencode resource=https://vault.azure.net \\
              | python3 -c 'import json, sys; print(sorted(json.load(sys.stdin)))'
            ```
        """),
    ),
    "kv.unauthorized": Note(
        meaning=_md("""
            The vault answered 401 to the identity's token: the vault is in another tenant than the identity,
            or `vault.url` names another vault than intended.
        """),
        fix=_md("""
            `edgecert check` prints the identity's object id and tenant; compare with the vault's:

            ```sh
            az keyvault show --name <vault> --query properties.tenantId
            ```
        """),
    ),
    "kv.forbidden": Note(
        meaning=_md("""
            A 403 that is neither a missing role, a missing access policy nor the firewall, e.g. an object that
            is disabled (`SecretDisabled`, `CertificateDisabled`).
        """),
        fix=_md("""
            ```sh
            az keyvault certificate show --vault-name <vault> --name <name> --query attributes.enabled
            az keyvault certificate set-attributes --vault-name <vault> --name <name> --enabled true
            ```
        """),
    ),
    "kv.forbidden-rbac": Note(
        meaning=_md("""
            The vault uses the Azure RBAC permission model (`enableRbacAuthorization: true`) and the identity
            has no role granting the refused data action on that object; access policies are ignored on such a
            vault. The message names the action, the object and the least-privilege role; the remedy is the
            exact command with the identity's object id. The classic case is
            `Microsoft.KeyVault/vaults/secrets/getSecret/action` on `/secrets/<name>`: a certificate's private
            key is downloaded through its secret, and a role at the certificate's scope does not reach the
            secret of the same name.
        """),
        fix=_md(f"""
            Run the command from the remedy, e.g.:

            ```sh
            az role assignment create --role "Key Vault Secrets User" \\
              --assignee-object-id {_OID} --assignee-principal-type ServicePrincipal \\
              --scope "{_VAULT_ID}/secrets/<name>"
            ```

            A new assignment can take a few minutes to take effect. Every role per mode:
            [permissions.md](permissions.md).
        """),
    ),
    "kv.forbidden-policy": Note(
        meaning=_md("""
            The vault uses access policies (`enableRbacAuthorization: false`) and the identity's policy lacks the
            permission named in the message. Role assignments are ignored on such a vault.
        """),
        fix=_md(f"""
            Either add the permission (`set-policy` replaces the list for that object type, so name all of them;
            here those of `vault-fetch`):

            ```sh
            az keyvault set-policy --name <vault> --object-id {_OID} \\
              --secret-permissions get --certificate-permissions get list
            ```

            or move the vault to Azure RBAC, which can scope a role to one object (access policies cannot):
            assign the roles of [permissions.md](permissions.md) first, then
            `az keyvault update --name <vault> --enable-rbac-authorization true` (this invalidates every access
            policy of the vault at once).
        """),
    ),
    "kv.forbidden-firewall": Note(
        meaning=_md("""
            The vault's network rules refused the device's address (the public address its traffic leaves from,
            after NAT).
        """),
        fix=_md("""
            ```sh
            az keyvault network-rule add --name <vault> --ip-address <address from the message>
            ```

            or reach the vault through a private endpoint (and `privatelink.vaultcore.azure.net` DNS).
        """),
    ),
    "kv.not-found": Note(
        meaning=_md("""
            A certificate, secret or key named by the configuration does not exist, or it was deleted (soft
            delete keeps it recoverable). In `vault-managed` the certificate object must exist with its policy:
            the agent reads the policy before it creates a version.
        """),
        fix=_md("""
            ```sh
            az keyvault certificate list --vault-name <vault> --query "[].name"
            az keyvault certificate list-deleted --vault-name <vault> --query "[].name"
            az keyvault certificate recover --vault-name <vault> --name <name>
            az keyvault certificate create --vault-name <vault> --name <name> \\
              --policy "$(az keyvault certificate get-default-policy)"       # vault-managed: create it once
            ```
        """),
    ),
    "kv.unreachable": Note(
        meaning="The vault's name did not resolve or no connection could be made.",
        fix=_md("""
            Check `vault.url` (`https://<vault>.vault.azure.net`), DNS from the device
            (`getent hosts <vault>.vault.azure.net`) and outbound HTTPS (a proxy needs `https_proxy` in the
            module's environment). The agent retries.
        """),
    ),
    "kv.tls": Note(
        meaning="The vault's TLS certificate did not verify: usually a TLS-inspecting proxy with its own CA.",
        fix=_md("""
            See who issued what the device receives, then give the module that CA bundle
            (`EDGECERT_VAULT_CA_FILE` in the module's environment, or `vault.caFile` in a local config):

            ```sh
            openssl s_client -connect <vault>.vault.azure.net:443 -servername <vault>.vault.azure.net \\
              </dev/null 2>/dev/null | openssl x509 -noout -issuer
            ```
        """),
    ),
    "kv.bad-request": Note(
        meaning=_md("""
            The vault refused a request as malformed or conflicting: 409 `ObjectIsDeletedButRecoverable` (the
            name is soft-deleted), or 400 for a policy the vault does not accept.
        """),
        fix=_md("""
            For a soft-deleted name, recover it (`az keyvault certificate recover …`) or purge it
            (`az keyvault certificate purge …`, impossible while purge protection holds it). For a 400, read the
            message and compare the policy with `key.type` and `subject`.
        """),
    ),
    "issue.bad-material": Note(
        meaning=_md("""
            The vault returned something edgecert cannot install: a secret without the private key (a policy
            with `exportable: false`), an unexpected content type, or in `vault-ca` a signature that does not
            verify against the CA certificate (`issuerKeyName` is not the key of `issuerCertificateName`).
        """),
        fix=_md("""
            ```sh
            az keyvault certificate show --vault-name <vault> --name <name> \\
              --query "{keyProperties: policy.keyProperties, contentType: policy.secretProperties.contentType}"
            ```

            `edgecert check` signs a test digest with the CA key and verifies it against the CA certificate.
        """),
    ),
    "activation.failed": Note(
        meaning=_md("""
            After the swap the runtime did not come back using the new certificate within
            `activation.verifyTimeout`, so edgecert restored `*.previous`, restarted the runtime again and reports
            `rolled-back` with the cause.
        """),
        fix=_md("""
            The message quotes the host helper's answer (the module reads and removes `<id>.result.json`); the
            helper's journal keeps every answer. Read it and the runtime's logs:

            ```sh
            sudo journalctl -u edgecert-activate.service --since -1h
            sudo iotedge system logs -- -n 200
            sudo iotedge check
            ```

            For a `device-identity` certificate with self-signed (thumbprint) authentication, register the new
            thumbprint in IoT Hub first: the twin reports it as `pendingThumbprint`. Then `renewNow` with
            `{"force": true}`.
        """),
    ),
    "twin.unavailable": Note(
        meaning="A module twin call through edgeHub failed or timed out; the agent retries and keeps renewing.",
        fix="`sudo iotedge logs edgeHub --tail 100` and `sudo iotedge check`.",
    ),
    "kv.too-broad": Note(
        meaning=_md("""
            Reported by `edgecert check` (status `fail`, exit code 1): a secret name that does not exist drew 404
            instead of 403, so the identity may read **every** secret of the vault: a role at vault (or resource
            group) scope, or an access policy with secrets `get` (access policies are always vault-wide).
        """),
        fix=_md(f"""
            List the identity's assignments, remove the vault-wide ones and assign per object
            ([permissions.md](permissions.md)):

            ```sh
            az role assignment list --assignee {_OID} --all --output table
            az role assignment delete --assignee {_OID} --role "Key Vault Secrets User" \\
              --scope "{_VAULT_ID}"
            ```

            On an access-policy vault the only way to least privilege is moving the vault to Azure RBAC.
        """),
    ),
}

_HEADER = """\
# Troubleshooting: every error code

<!-- Generated by `python -m edgecert.docs --write docs/troubleshooting.md` from src/edgecert/errors.py
     and src/edgecert/docs.py. Do not edit by hand: tests/deploy/test_docs.py fails when this file differs. -->

Every failure edgecert reports has a code. You find it:

- on the command line: `edgecert: error [<code>]: <message>` and `remedy: …` on stderr;
- in the module twin: `properties.reported.certificates.<name>.lastError {code, message, remedy}`;
- in `edgecert check --json`: `checks[].code` and `checks[].remedy`;
- in the metrics: `edgecert_keyvault_requests_total{status="<code>"}`.

The remedy in the message is specific (it names the object, the role and the identity's object id); the
remedy below is the general one. **Retried by the agent: yes** means the failure may pass by itself: the
certificate concerned reports `backing-off` and the agent retries with backoff. **No** means a person has to
act: the certificate reports `failed`; the agent still tries again at its next attempt, but the failure will not
pass by itself.
Start with `edgecert check` (no side effects; exit code 0 when all is well, 1 when it found problems).
"""


def _row(code: str, summary: str, retried: str) -> str:
    return f"| [`{code}`](#{_anchor(code)}) | {_escape(summary)} | {retried} |"


def _escape(text: str) -> str:
    """Texts from the error classes hold placeholders such as `<name>`, which Markdown would take for HTML."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _anchor(code: str) -> str:
    """GitHub's heading anchor for a heading that is just the code in backticks."""
    return "".join(c for c in code.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def _error_section(code: str, cls: type[EdgecertError]) -> list[str]:
    parent = next((b for b in cls.__mro__[1:] if issubclass(b, EdgecertError) and "code" in b.__dict__), None)
    where = f"`{cls.__name__}`" + (f", a kind of `{parent.code}`" if parent is not None else ", the base class")
    intro = f"{where}. Retried by the agent: {'yes' if cls.retryable else 'no'}."
    return _section(code, intro, cls.summary, cls.default_remedy)


def _check_section(code: str, check: CheckCode) -> list[str]:
    return _section(code, "A finding of `edgecert check`, not an error of the agent.", check.summary, check.remedy)


def _section(code: str, intro: str, summary: str, remedy: str) -> list[str]:
    note = NOTES.get(code, Note())
    lines = [f"## `{code}`", "", intro, ""]
    lines += [f"**What it means.** {_sentence(summary)}", ""]
    if note.meaning:
        lines += [note.meaning, ""]
    lines += [f"**How to fix it.** {_sentence(remedy)}", ""]
    if note.fix:
        lines += [note.fix, ""]
    return lines


def _sentence(text: str) -> str:
    text = _escape(text.strip())
    if not text.startswith("edgecert"):  # the name is written in lower case
        text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def troubleshooting_markdown() -> str:
    """The whole of `docs/troubleshooting.md`: every code of `ERROR_CLASSES` and `CHECK_CODES`, in tree order."""
    lines = [_HEADER, "| code | what it means | retried by the agent |", "|---|---|---|"]
    for code, cls in ERROR_CLASSES.items():
        lines.append(_row(code, cls.summary, "yes" if cls.retryable else "no"))
    for code, check in CHECK_CODES.items():
        lines.append(_row(code, check.summary, "`edgecert check` only"))
    lines.append("")
    for code, cls in ERROR_CLASSES.items():
        lines += _error_section(code, cls)
    for code, check in CHECK_CODES.items():
        lines += _check_section(code, check)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edgecert.docs [--write FILE | --check FILE]`; exit 1 when `--check` finds the file stale."""
    parser = argparse.ArgumentParser(prog="python -m edgecert.docs", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE", help="write the guide to FILE")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the guide")
    args = parser.parse_args(argv)
    text = troubleshooting_markdown()
    if args.write is not None:
        args.write.write_text(text, encoding="utf-8")
        return 0
    if args.check is not None:
        try:
            current = args.check.read_text(encoding="utf-8")
        except OSError as exc:
            sys.stderr.write(f"{args.check}: {exc.strerror}\n")
            return 1
        if current != text:
            sys.stderr.write(f"{args.check} is stale: run python -m edgecert.docs --write {args.check}\n")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
