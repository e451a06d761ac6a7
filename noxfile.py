"""Developer sessions. `./dev SESSION` runs them in the shared .venv (fast); plain `nox -s SESSION`
builds a fresh virtualenv per session instead.

- tests: the test suite (CI runs this through `.ci/run`)
- lint: ruff check, ruff format --check and mypy (the type checker, on tlbench/)
- demo: `tlbench demo`, the README's main job
- docs: the manual (docs/, mkdocs.yml) built with `mkdocs build --strict` into site/
- bench: the pytest-benchmark suite, off by default; saves JSON for --benchmark-compare
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "docs"]
nox.options.reuse_venv = "yes"


def _install(session: nox.Session) -> None:
    if session.venv_backend == "none":  # ./dev: .venv already holds everything
        return
    session.install("-r", "requirements-torch.txt")
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    # One worker per core (pytest-xdist), whole files per worker so module fixtures are built once;
    # conftest gives every test process one intra-op thread, so the workers do not contend.
    default = ["-q", "--durations=15", "-n", "auto", "--dist", "loadfile"]
    session.run("python", "-m", "pytest", *(session.posargs or default))


@nox.session
def lint(session: nox.Session) -> None:
    if session.venv_backend != "none":  # mypy reads tlbench's imports (torch, timm): the full install
        _install(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")  # [tool.mypy] in pyproject.toml: tlbench/, zero errors


@nox.session
def demo(session: nox.Session) -> None:
    _install(session)
    session.run("tlbench", "demo", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    _install(session)
    session.run(
        "python",
        "-m",
        "pytest",
        "benchmarks",
        "--benchmark-only",
        "--benchmark-autosave",
        "--benchmark-columns=min,median,mean,stddev,rounds",
        *session.posargs,
    )


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    if session.venv_backend != "none":  # the site needs mkdocs-material only, not tlbench or torch
        session.install("mkdocs-material>=9.5")
    session.run("mkdocs", "build", "--strict", *session.posargs)  # into site/ (mkdocs.yml)
