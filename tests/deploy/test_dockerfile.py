"""deploy/Dockerfile, checked line by line (no Docker engine runs here; hadolint is not available)
and by checkov's Dockerfile checks; plus what the image relies on in the repository."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass

import pytest
import yaml

from tests.deploy.chart import CHART_DIR, ROOT
from tests.deploy.test_chart_examples import CHECKOV, run_checkov

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UID = 10001


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), self
        assert all(isinstance(v, str) for v in value), self
        return value


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(pending).partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    assert not pending, "a continuation line ends the file"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stages.append([])
        assert stages, f"line {ins.line}: {ins.keyword} before the first FROM"
        stages[-1].append(ins)
    return stages


def test_parser_joins_continuations() -> None:
    parsed = parse('# c\nFROM a AS b\nRUN one \\\n  # inside\n    && two\nCMD ["x"]\n')
    assert [(i.keyword, i.args) for i in parsed] == [("FROM", "a AS b"), ("RUN", "one && two"), ("CMD", '["x"]')]


def test_multi_stage_with_pinned_slim_python(instructions: list[Instruction]) -> None:
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert [f.args.split()[-1] for f in froms] == ["build", "runtime"]
    images = {f.args.split()[0] for f in froms}
    assert len(images) == 1, "both stages share one base image"
    image = images.pop()
    match = re.fullmatch(r"python:(3\.\d+\.\d+)-slim-bookworm@sha256:[0-9a-f]{64}", image)
    assert match, f"{image}: pin an exact slim tag and its digest"
    python = tuple(int(p) for p in match.group(1).split("."))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python >= tuple(int(p) for p in requires.removeprefix(">=").split(".")), requires


def test_no_forbidden_instructions(instructions: list[Instruction]) -> None:
    keywords = {i.keyword for i in instructions}
    assert "HEALTHCHECK" not in keywords, "Kubernetes probes replace HEALTHCHECK"
    assert "ADD" not in keywords, "COPY only: ADD fetches URLs and unpacks archives"
    assert "MAINTAINER" not in keywords
    assert keywords <= {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "LABEL", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}


def test_run_steps_are_safe(instructions: list[Instruction]) -> None:
    for ins in (i for i in instructions if i.keyword == "RUN"):
        text = ins.args
        assert not re.search(r"\b(curl|wget)\b", text), f"line {ins.line}: nothing is downloaded outside pip"
        assert not re.search(r"\b(sudo|apt-get|apt|apk|gcc|g\+\+|make|build-essential)\b", text), (
            f"line {ins.line}: no system packages or compilers"
        )
        assert "chmod 777" not in text
        assert "--privileged" not in text
        for command in re.split(r"&&|;", text):
            words = shlex.split(command)
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                assert "--no-cache-dir" in words, f"line {ins.line}: pip install without --no-cache-dir"
                assert "-c" in words, f"line {ins.line}: versions come from constraints.txt"
                assert words[words.index("-c") + 1] == "constraints.txt", f"line {ins.line}"
                assert "--only-binary=:all:" in words, f"line {ins.line}: wheels only, so no compiler is needed"
                assert not any(w.startswith(("http:", "https:", "git+")) for w in words)


def test_build_stage_installs_the_project_from_constraints(instructions: list[Instruction]) -> None:
    build, runtime = _stages(instructions)
    copies = [i.args for i in build if i.keyword == "COPY"]
    assert copies == [
        "pyproject.toml constraints.txt README.md ./",
        "broker ./broker",
        "providers ./providers",
        "mcp_app ./mcp_app",
    ], "copy only what the package build needs, never the whole context"
    for source in ("pyproject.toml", "constraints.txt", "README.md", "broker", "providers", "mcp_app"):
        assert (ROOT / source).exists(), source
    run = " ".join(i.args for i in build if i.keyword == "RUN")
    # The verifier distribution (inside mcp_app/, so copied with it) first, then the broker's.
    assert "pip install --no-cache-dir --only-binary=:all: -c constraints.txt ./mcp_app/mcp-broker-verifier ." in run
    assert 'python -c "import broker.asgi, mcp_app.app, mcp_broker_verifier.verifier"' in run, (
        "the build proves the package data is installed"
    )
    assert "pip uninstall --yes pip setuptools" in run
    # The runtime stage takes the environment and nothing else from the build stage.
    assert [i.args for i in runtime if i.keyword == "COPY"] == ["--from=build /opt/mcp-broker /opt/mcp-broker"]


def test_runtime_stage_runs_as_a_fixed_non_root_user(instructions: list[Instruction]) -> None:
    _, runtime = _stages(instructions)
    users = [i for i in runtime if i.keyword == "USER"]
    assert [u.args for u in users] == [f"{UID}:{UID}"]
    after_user = runtime[runtime.index(users[0]) :]
    assert not [i for i in after_user if i.keyword in ("RUN", "COPY")], "USER is the last filesystem change"
    run = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert f"--uid {UID}" in run
    assert f"--gid {UID}" in run
    assert "--shell /usr/sbin/nologin" in run
    # The image's user is the one the chart's security contexts name.
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for component in ("broker", "mcpApp"):
        assert values[component]["securityContext"]["runAsUser"] == UID
        assert values[component]["podSecurityContext"]["runAsGroup"] == UID


def test_runtime_environment(instructions: list[Instruction]) -> None:
    _, runtime = _stages(instructions)
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    for setting in (
        "PATH=/opt/mcp-broker/bin:${PATH}",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "TMPDIR=/tmp",
    ):
        assert setting in env
    for ins in instructions:
        if ins.keyword in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", ins.args) or [ins.args.split("=")[0]]
            for name in names:
                assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY", name, re.I), f"line {ins.line}: {name}"
    workdirs = [i.args for i in runtime if i.keyword == "WORKDIR"]
    assert workdirs == ["/tmp"], "a writable working directory under the tmp volume"  # noqa: S108


def test_entrypoint_runs_the_broker_or_mcp_app(instructions: list[Instruction]) -> None:
    _, runtime = _stages(instructions)
    entrypoint = [i for i in runtime if i.keyword == "ENTRYPOINT"]
    cmd = [i for i in runtime if i.keyword == "CMD"]
    assert [e.exec_form() for e in entrypoint] == [["mcp-broker"]]
    assert [c.exec_form() for c in cmd] == [["serve"]]
    # The chart runs mcp_app through the same entry point.
    template = (CHART_DIR / "templates" / "mcp-app-deployment.yaml").read_text()
    assert 'args: ["mcp-app", "serve"]' in template


def test_exposed_ports_match_the_chart(instructions: list[Instruction]) -> None:
    exposed = {int(p) for i in instructions if i.keyword == "EXPOSE" for p in i.args.split()}
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert exposed == {values["broker"]["containerPort"], values["mcpApp"]["containerPort"], values["metrics"]["port"]}


def test_checkov_dockerfile_checks_pass() -> None:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make install` puts checkov into .venv/checkov"
    report = run_checkov(DOCKERFILE, "dockerfile")
    assert report["results"]["failed_checks"] == []
    skipped = {s["check_id"]: s["check_result"].get("suppress_comment") for s in report["results"]["skipped_checks"]}
    # HEALTHCHECK is left out on purpose: Kubernetes probes /healthz and /readyz instead.
    assert skipped == {
        "CKV_DOCKER_2": "Kubernetes liveness and readiness probes on /healthz and /readyz replace a HEALTHCHECK"
    }


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    rules = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "deny everything, then allow what the build copies"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "broker", "providers", "mcp_app"}
    for pattern in ("**/.env", "**/*.pem", "**/*.key", "**/__pycache__"):
        assert pattern in rules


# Files a non-editable install must carry besides the Python modules (templates, static files,
# the dev stack's config). The image is built from such an install.
def _package_data_patterns() -> dict[str, list[str]]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns: dict[str, list[str]] = pyproject["tool"]["setuptools"]["package-data"]
    return patterns


def test_every_data_file_is_package_data() -> None:
    """A file the packages read at run time but that package-data misses would be absent from the
    image (the build stage's import check would fail); list each such file."""
    patterns = _package_data_patterns()
    missing = []
    verifier = ROOT / "mcp_app" / "mcp-broker-verifier"
    for package in ("broker", "providers", "mcp_app"):
        base = ROOT / package
        for path in sorted(base.rglob("*")):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            if path.is_relative_to(verifier):
                continue  # a distribution of its own, with its own package data (below)
            relative = path.relative_to(base).as_posix()
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in patterns.get(package, [])):
                missing.append(f"{package}/{relative}")
    assert missing == [], "add to [tool.setuptools.package-data] in pyproject.toml"
    with (verifier / "pyproject.toml").open("rb") as f:
        verifier_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["mcp_broker_verifier"]
    package_dir = verifier / "src" / "mcp_broker_verifier"
    data = [p.name for p in package_dir.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert sorted(data) == sorted(verifier_data) == ["py.typed"]
