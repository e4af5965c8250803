"""The Dockerfile's structure (no docker engine here to build it): multi-stage on a slim
Python base, nothing to compile in the final image, the daemon as entrypoint."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"

BUILD_TOOLS = re.compile(
    r"^(gcc|g\+\+|cc|clang|make|build-essential|cmake|rustc|cargo|python3?-dev|"
    r"lib[\w.+-]*-dev|[\w.+-]+-dev)$"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
    assert not pending, "dangling line continuation at the end"
    return out


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(words[0], name))
        else:
            assert result, f"{keyword} before the first FROM"
            result[-1].instructions.append((keyword, rest))
    return result


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def parsed(text: str) -> list[Stage]:
    return stages(text)


def apt_packages(stage: Stage) -> list[str]:
    packages: list[str] = []
    for command in stage.args("RUN"):
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            if words[:2] in (["apt-get", "install"], ["apt", "install"]):
                packages += [w for w in words[2:] if not w.startswith("-")]
    return packages


def test_multi_stage_on_python_311_slim(parsed: list[Stage]) -> None:
    assert len(parsed) >= 2
    for stage in parsed:
        assert stage.base.startswith("python:3.11-slim"), stage.base
    assert parsed[0].name is not None, "the build stage is named for COPY --from"


def test_final_stage_copies_the_venv_from_the_build_stage(parsed: list[Stage]) -> None:
    build, final = parsed[0], parsed[-1]
    venvs = [m.group(1) for run in build.args("RUN")
             for m in [re.search(r"python -m venv (\S+)", run)] if m]
    assert venvs, "the build stage creates a venv"
    venv = venvs[0]
    assert any(re.search(rf"{re.escape(venv)}/bin/pip install\b.* \.(\s|$)", run)
               for run in build.args("RUN")), "the build stage pip-installs the project"
    assert f"--from={build.name} {venv} {venv}" in final.args("COPY"), (
        "the venv keeps its path (console scripts carry it in their shebang)"
    )
    assert any(f"{venv}/bin" in env for env in final.args("ENV")), "the venv's bin on PATH"


def test_build_context_copies_only_what_the_package_needs(parsed: list[Stage]) -> None:
    """There is no .dockerignore: copying the whole context would ship .venv and caches."""
    for stage in parsed:
        for copy in stage.args("COPY"):
            sources = [w for w in copy.split() if not w.startswith("--")][:-1]
            if copy.startswith("--from="):
                continue
            for source in sources:
                assert source not in (".", "./", "*"), f"COPY of the whole context: {copy}"
                assert (REPO / source).exists(), f"COPY source missing in the repo: {source}"


def test_no_compilers_and_a_small_runtime(parsed: list[Stage]) -> None:
    final = parsed[-1]
    packages = apt_packages(final)
    assert "nftables" in packages, "nft and libnftables.so.1"
    tools = [p for p in packages if BUILD_TOOLS.match(p)]
    assert tools == [], f"build tools in the final image: {tools}"
    for run in final.args("RUN"):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run
            assert "rm -rf /var/lib/apt/lists" in run
    # nor in the build stage: every dependency comes as a wheel
    assert not [p for p in apt_packages(parsed[0]) if BUILD_TOOLS.match(p)]
    assert any("--only-binary=:all:" in run for run in parsed[0].args("RUN"))


def test_entrypoint_and_cmd_run_the_daemon(parsed: list[Stage]) -> None:
    final = parsed[-1]
    (entrypoint,) = final.args("ENTRYPOINT")
    (cmd,) = final.args("CMD")
    assert json.loads(entrypoint) == ["l3hostd", "run"]
    assert json.loads(cmd) == ["--config", "/etc/l3hostd/l3hostd.yaml"]
    assert final.args("STOPSIGNAL") in ([], ["SIGTERM"])


def test_header_documents_the_host_network_run_line(text: str) -> None:
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    run = " ".join(header.replace("\\\n#", " ").replace("#", " ").split())
    for part in (
        "docker run -d --name l3hostd --network host",
        "--cap-add NET_ADMIN",
        "--cap-add NET_RAW",
        "-v /etc/l3hostd:/etc/l3hostd:ro",
        "-v /var/lib/l3hostd:/var/lib/l3hostd",
        "-v /run/l3hostd:/run/l3hostd l3hostd",
    ):
        assert part in run, part


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = stages(
        "# c\nFROM python:3.11-slim AS b\nRUN a \\\n  && b\n# x\nFROM python:3.11-slim\n"
        "ENTRYPOINT [\"x\"]\n"
    )
    assert [s.name for s in parsed] == ["b", None]
    assert parsed[0].instructions == [("RUN", "a && b")]
    assert parsed[1].args("ENTRYPOINT") == ['["x"]']
