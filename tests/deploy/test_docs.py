"""The operator documentation cannot drift from the code it describes.

`docs/troubleshooting.md` is generated from the error tree (`python -m edgecert.docs`): it must equal
the generator's output and hold a section for every code in `ERROR_CLASSES` and every code
`edgecert check` reports. The hand-written pages are checked against the code where they quote it:
roles per mode, metric names, direct methods, reported states, CLI commands, and their links.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgecert import docs
from edgecert.adapters.keyvault_errors import LEAST_PRIVILEGE_ROLES
from edgecert.cli import _build_parser
from edgecert.errors import ERROR_CLASSES, IssuanceError
from edgecert.issuers.managed import ROLE_HINT
from edgecert.metrics import STATES, Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
PERMISSIONS = DOCS / "permissions.md"
OPERATIONS = DOCS / "operations.md"
SECURITY = DOCS / "security.md"
PAGES = [TROUBLESHOOTING, PERMISSIONS, OPERATIONS, SECURITY]
PAGE_IDS = [page.name for page in PAGES]
CODE = re.compile(r'"((?:usage|config|cert|store|crypto|issue|identity|kv|activation|twin)\.[a-z-]+)"')


def missing_sections(text: str, codes: list[str]) -> list[str]:
    """The codes that have no `## `code`` heading in `text`."""
    headings = set(re.findall(r"^## `([^`]+)`$", text, flags=re.MULTILINE))
    return [code for code in codes if code not in headings]


def codes_reported_by_check() -> set[str]:
    return set(CODE.findall((ROOT / "src" / "edgecert" / "diagnose.py").read_text(encoding="utf-8")))


# -- troubleshooting.md ------------------------------------------------------------------------------


def test_troubleshooting_is_the_generators_output() -> None:
    assert TROUBLESHOOTING.read_text(encoding="utf-8") == docs.troubleshooting_markdown(), (
        "docs/troubleshooting.md is stale: run .venv/bin/python -m edgecert.docs --write docs/troubleshooting.md"
    )


def test_every_error_code_has_a_section() -> None:
    assert missing_sections(TROUBLESHOOTING.read_text(encoding="utf-8"), list(ERROR_CLASSES)) == []


def test_every_code_edgecert_check_reports_has_a_section() -> None:
    found = codes_reported_by_check()
    assert "kv.too-broad" in found  # the scan works
    extra = found - set(ERROR_CLASSES)
    assert extra <= set(docs.CHECK_CODES), f"add {sorted(extra - set(docs.CHECK_CODES))} to edgecert.docs.CHECK_CODES"
    assert missing_sections(TROUBLESHOOTING.read_text(encoding="utf-8"), sorted(found)) == []


def test_every_code_has_operator_notes_and_no_note_is_stale() -> None:
    assert set(docs.NOTES) == set(ERROR_CLASSES) | set(docs.CHECK_CODES)
    for code, note in docs.NOTES.items():
        assert note.meaning, code
        assert note.fix, code


def test_each_section_quotes_its_class() -> None:
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    for code, cls in ERROR_CLASSES.items():
        section = text.split(f"## `{code}`\n", 1)[1].split("\n## ", 1)[0]
        assert f"`{cls.__name__}`" in section
        assert f"Retried by the agent: {'yes' if cls.retryable else 'no'}." in section
        assert cls.summary[1:].replace("<", "&lt;").replace(">", "&gt;") in section, code


def test_a_new_error_code_makes_the_file_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a class added to the tree without regenerating the file: every check above must notice
    fake = type("ExampleError", (IssuanceError,), {"summary": "an example failure", "default_remedy": "do this"})
    fake.code = "kv.example"  # set after creation, so it does not register itself in the real tree
    monkeypatch.setitem(ERROR_CLASSES, "kv.example", fake)
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    assert missing_sections(text, list(ERROR_CLASSES)) == ["kv.example"]
    generated = docs.troubleshooting_markdown()
    assert generated != text
    assert missing_sections(generated, list(ERROR_CLASSES)) == []
    assert "an example failure" in generated
    stale = tmp_path / "troubleshooting.md"
    stale.write_text(text, encoding="utf-8")
    assert docs.main(["--check", str(stale)]) == 1
    assert docs.main(["--write", str(stale)]) == 0
    assert docs.main(["--check", str(stale)]) == 0


def test_the_module_entry_point_checks_the_committed_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecert.docs", "--check", str(TROUBLESHOOTING)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_placeholders_from_the_error_classes_are_escaped() -> None:
    # '<name>' in a remedy would be swallowed as an HTML tag outside code
    prose = re.sub(r"```.*?```|`[^`]*`", "", TROUBLESHOOTING.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert re.findall(r"<[a-z][^>\n]*>", prose.replace("<!--", "").replace("-->", "")) == []


# -- permissions.md ----------------------------------------------------------------------------------

_FULL_SCOPE = re.compile(
    r'--scope "/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft\.KeyVault/vaults/<vault>/'
    r'(certificates|secrets|keys)/<(?:name|ca)>"'
)


def roles_in(section: str) -> set[tuple[str, str]]:
    """(role, object kind) of every `az role assignment create` command in a section."""
    commands = re.findall(r"az role assignment create (.*?)(?=\n\S|\n\n|\Z)", section, flags=re.DOTALL)
    found = set()
    for command in commands:
        role = re.search(r'--role "([^"]+)"', command)
        scope = _FULL_SCOPE.search(command)
        assert role is not None, command
        assert scope is not None, command
        assert "--assignee-object-id" in command
        assert "--assignee-principal-type" in command
        found.add((role.group(1), scope.group(1)))
    return found


def mode_section(text: str, mode: str) -> str:
    return text.split(f"### `{mode}`", 1)[1].split("\n### ", 1)[0]


def test_permissions_name_the_roles_the_code_asks_for() -> None:
    read_cert = LEAST_PRIVILEGE_ROLES["Microsoft.KeyVault/vaults/certificates/read"]
    get_secret = LEAST_PRIVILEGE_ROLES["Microsoft.KeyVault/vaults/secrets/getSecret/action"]
    sign = LEAST_PRIVILEGE_ROLES["Microsoft.KeyVault/vaults/keys/sign/action"]
    create = ROLE_HINT["Microsoft.KeyVault/vaults/certificates/create/action"]
    expected = {
        "vault-ca": {(sign, "keys"), (read_cert, "certificates")},
        "vault-managed": {(create, "certificates"), (get_secret, "secrets")},
        "vault-fetch": {(read_cert, "certificates"), (get_secret, "secrets")},
    }
    text = PERMISSIONS.read_text(encoding="utf-8")
    for mode, roles in expected.items():
        assert roles_in(mode_section(text, mode)) == roles, mode
        for role, kind in roles:
            assert re.search(rf"\| `{mode}` \| {role} \| `/{kind}/", text), (mode, role, kind)


def test_per_device_commands_use_the_service_principal_type() -> None:
    text = PERMISSIONS.read_text(encoding="utf-8")
    for mode in ("vault-managed", "vault-fetch"):
        section = mode_section(text, mode)
        assert section.count("--assignee-principal-type ServicePrincipal") == 2, mode


def test_permissions_cover_the_model_trap_and_the_limit() -> None:
    text = PERMISSIONS.read_text(encoding="utf-8")
    assert "az keyvault show --name <vault> --query properties.enableRbacAuthorization" in text
    assert "edgecert check" in text
    assert "4,000 role assignments per subscription" in text
    assert "Microsoft.Authorization/roleAssignments@" in text
    assert re.search(r"scope: (caKey|certificateSecret)\b", text)


# -- operations.md -----------------------------------------------------------------------------------


def exposed_metric_names() -> set[str]:
    metrics = Metrics()
    metrics.certificate("identity", not_before=None, not_after=None, renew_after=None, state="valid")
    metrics.request("sign", "ok")
    metrics.request("sign", "issue.throttled")
    metrics.renewals.labels("identity", "renewed").inc()
    metrics.duration.observe(1.0)
    names = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    return names | {family.name for family in metrics.registry.collect()}


@pytest.mark.parametrize("page", [OPERATIONS, SECURITY, TROUBLESHOOTING], ids=lambda p: p.name)
def test_metric_names_in_the_docs_exist(page: Path) -> None:
    exposed = exposed_metric_names()
    quoted = set(re.findall(r"\bedgecert_[a-z_]+[a-z]\b", page.read_text(encoding="utf-8")))
    assert quoted - exposed == set()


def test_metric_names_are_quoted_at_all() -> None:
    quoted = set(re.findall(r"\bedgecert_[a-z_]+[a-z]\b", OPERATIONS.read_text(encoding="utf-8")))
    assert "edgecert_certificate_not_after_timestamp_seconds" in quoted
    assert "edgecert_renewals_total" in quoted
    assert "edgecert_keyvault_throttled_requests_total" in quoted


def test_direct_methods_and_states_exist() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    service = (ROOT / "src" / "edgecert" / "service.py").read_text(encoding="utf-8")
    methods = set(re.findall(r'call\.name == "(\w+)"', service))
    used = set(re.findall(r"--method-name (\w+)", text))
    assert used == {"renewNow", "getStatus", "rollback"}
    assert used <= methods
    for state in re.findall(r"'([a-z-]+)'", text.split("state IN [", 1)[1].split("]", 1)[0]):
        assert state in STATES


def test_operations_quote_the_collector_entry_and_the_fleet_query() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert re.search(r'"MetricsEndpointsCSV": \{ "value": "[^"]*http://edgecert:9600/metrics"', text)
    assert (
        "SELECT deviceId FROM devices.modules WHERE moduleId = 'edgecert' AND "
        "properties.reported.certificates.identity.notAfter < '${before}'"
    ) in text
    assert "for days in 30 10 3" in text
    assert "az iot hub invoke-module-method" in text


# -- security.md -------------------------------------------------------------------------------------


def test_security_states_the_module_user_and_the_helpers_commands() -> None:
    text = SECURITY.read_text(encoding="utf-8")
    assert "uid 10001" in text
    for command in ("iotedge system restart", "iotedge config apply"):
        assert command in text
    helper = ROOT / "contrib" / "host" / "edgecert-activate"
    if helper.exists():  # the helper's own table of commands says the same
        table = re.search(r"^COMMANDS = \{(.*)\}$", helper.read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert table is not None
        pairs = set(re.findall(r'\("(\w+)", "(\w+)"\)', table.group(1)))
        assert pairs == {("system", "restart"), ("config", "apply")}


@pytest.mark.parametrize("mode", ["vault-ca", "vault-managed", "vault-fetch"])
def test_security_has_a_threat_model_per_mode(mode: str) -> None:
    assert f"### `{mode}`" in SECURITY.read_text(encoding="utf-8")


# -- every page --------------------------------------------------------------------------------------


def cli_commands() -> set[str]:
    usage = _build_parser().format_usage()
    found = re.search(r"\{([a-z,]+)\}", usage)
    assert found is not None, usage
    return set(found.group(1).split(","))


def code_spans(text: str) -> list[str]:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    inline = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return blocks + inline


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_edgecert_commands_in_the_docs_exist(page: Path) -> None:
    commands = cli_commands()
    used = {
        match
        for span in code_spans(page.read_text(encoding="utf-8"))
        for match in re.findall(r"(?:^|[\s/])edgecert ([a-z][a-z-]*)", span, flags=re.MULTILINE)
    }
    assert used, page.name
    assert used - commands == set()


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    assert links, page.name
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.is_file(), f"{page.name}: {link}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
            assert anchor in {github_anchor(h) for h in headings}, f"{page.name}: {link}"
