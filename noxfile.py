"""Developer sessions. `./dev SESSION` runs them in the shared .venv (fast); plain `nox -s SESSION`
builds a fresh virtualenv per session instead.

- tests: the test suite (CI runs this through `.ci/run`)
- lint: ruff check and ruff format --check
- demo: `tlbench demo`, the README's main job
- bench: the pytest-benchmark suite, off by default; saves JSON for --benchmark-compare
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_venv = "yes"


def _install(session: nox.Session) -> None:
    if session.venv_backend == "none":  # ./dev: .venv already holds everything
        return
    session.install("-r", "requirements-torch.txt")
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("python", "-m", "pytest", *(session.posargs or ["-q", "--durations=15"]))


@nox.session
def lint(session: nox.Session) -> None:
    if session.venv_backend != "none":
        session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


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
