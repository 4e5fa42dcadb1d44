"""The GitHub Actions workflows, checked offline.

Both files are validated with `check-jsonschema --builtin-schema vendor.github-workflows` (SchemaStore's
workflow schema, vendored in the package), run from the same environment as the tests, with every
proxy variable pointing at a closed port so that a network fetch would fail instead of passing
silently. A broken workflow must be rejected the same way. Then what the schema cannot know: the CI
matrix, the actions' major versions, the sandbox smoke job, and the image builds for both platforms.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
IMAGES = WORKFLOWS / "images.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
ON_TAG = "startsWith(github.ref, 'refs/tags/v')"
#: Every action the workflows use, pinned by major version.
ACTIONS = {
    "actions/checkout": "v4",
    "actions/setup-python": "v5",
    "docker/setup-qemu-action": "v3",
    "docker/setup-buildx-action": "v3",
    "docker/login-action": "v3",
    "docker/build-push-action": "v6",
}


def validate(*files: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the vendored workflow schema; no network (proxies lead nowhere)."""
    assert CHECK_JSONSCHEMA.exists(), f"{CHECK_JSONSCHEMA} is missing: ./dev setup installs check-jsonschema"
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def load(path: Path) -> Any:
    # YAML 1.2 (ruamel): the key `on` stays a string, as GitHub reads it
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if str(step.get("uses", "")).split("@")[0] == action]


def run_lines(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


@pytest.mark.parametrize("workflow", [CI, IMAGES], ids=["ci.yml", "images.yml"])
def test_workflow_is_valid_under_the_github_workflow_schema(workflow: Path) -> None:
    result = validate(workflow)
    assert result.returncode == 0, result.stdout + result.stderr


MINIMAL = "name: x\non: push\njobs:\n  build:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo hi\n"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (MINIMAL.replace("    runs-on: ubuntu-24.04\n", ""), "$.jobs.build"),
        (MINIMAL.replace("steps:", "step:"), "$.jobs.build"),
        (MINIMAL.replace("on: push", "on: psuh"), "$.on"),
        (MINIMAL.replace("jobs:", "permissions:\n  packages: admin\njobs:"), "$.permissions"),
        (CI.read_text(encoding="utf-8").replace("    runs-on: ubuntu-24.04\n", "", 1), "$.jobs.check"),
    ],
    ids=["job without runs-on", "misspelt steps", "unknown event", "bad permission level", "ci.yml without runs-on"],
)
def test_a_broken_workflow_is_rejected(tmp_path: Path, text: str, where: str) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(text, encoding="utf-8")
    result = validate(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"broken.yml::{where}" in result.stdout


def test_the_minimal_control_workflow_is_accepted(tmp_path: Path) -> None:
    # the rejections above are caused by the faults, not by the checker failing in this environment
    good = tmp_path / "good.yml"
    good.write_text(MINIMAL, encoding="utf-8")
    result = validate(good)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workflow", [CI, IMAGES], ids=["ci.yml", "images.yml"])
def test_actions_are_pinned_by_major_version(workflow: Path) -> None:
    used = re.findall(r"uses:\s*([\w.-]+/[\w.-]+)@(\S+)", workflow.read_text(encoding="utf-8"))
    assert used
    for action, version in used:
        assert ACTIONS.get(action) == version, f"{action}@{version} in {workflow.name}"


def test_ci_runs_the_whole_check_on_three_pythons() -> None:
    ci = load(CI)
    assert set(ci["on"]) == {"push", "pull_request"}
    assert ci["permissions"] == {"contents": "read"}
    check = ci["jobs"]["check"]
    assert check["strategy"]["matrix"]["python-version"] == ["3.11", "3.12", "3.13"]
    (setup,) = steps_using(check, "actions/setup-python")
    assert setup["with"]["python-version"] == "${{ matrix.python-version }}"
    assert setup["with"]["cache"] == "pip"
    assert "requirements/dev.lock" in setup["with"]["cache-dependency-path"]
    runs = run_lines(check)
    # ./dev would otherwise pick the newest python3.x on PATH: the venv is made with the matrix version
    assert runs.index("python -m venv .venv") < runs.index("./dev test")
    assert "${{ matrix.python-version }}" in runs
    assert steps_using(check, "actions/checkout")


def test_ci_has_a_sandbox_smoke_job() -> None:
    jobs = load(CI)["jobs"]
    smoke = [job for job in jobs.values() if re.search(r"(\./dev|edgecert) sandbox", run_lines(job))]
    assert len(smoke) == 1
    assert "--json" in run_lines(smoke[0])
    assert steps_using(smoke[0], "actions/setup-python")


def test_images_builds_both_platforms_from_their_dockerfiles() -> None:
    images = load(IMAGES)
    build = images["jobs"]["build"]
    matrix = {entry["platform"]: entry for entry in build["strategy"]["matrix"]["include"]}
    assert set(matrix) == {"linux/amd64", "linux/arm64"}
    for platform, entry in matrix.items():
        dockerfile = f"Dockerfile.{platform.split('/')[1]}"
        assert entry["dockerfile"] == dockerfile
        assert (ROOT / dockerfile).is_file(), f"{dockerfile} is missing"
    (push,) = steps_using(build, "docker/build-push-action")
    assert push["with"]["file"] == "${{ matrix.dockerfile }}"
    assert push["with"]["platforms"] == "${{ matrix.platform }}"
    assert push["with"]["push"] == "${{ " + ON_TAG + " }}"
    assert steps_using(build, "docker/setup-qemu-action")
    assert steps_using(build, "docker/setup-buildx-action")
    (login,) = steps_using(build, "docker/login-action")
    assert login["if"] == ON_TAG
    assert login["with"]["registry"] == "ghcr.io"


def test_images_pushes_a_manifest_list_only_for_version_tags() -> None:
    images = load(IMAGES)
    assert "v*" in images["on"]["push"]["tags"]
    assert images["permissions"] == {"contents": "read"}  # write access only where a job pushes
    manifest = images["jobs"]["manifest"]
    assert manifest["needs"] == "build"
    assert manifest["if"] == ON_TAG
    runs = run_lines(manifest)
    assert "docker buildx imagetools create" in runs
    assert '"${image}:${version}-amd64" "${image}:${version}-arm64"' in runs
    for name in ("build", "manifest"):
        assert images["jobs"][name]["permissions"]["packages"] == "write"
