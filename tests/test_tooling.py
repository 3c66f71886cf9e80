"""The checks that run outside the suite (pre-commit, CI) run what the Makefile and ``.ci/run`` run."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from .helpers import ROOT


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def make_variable(name: str) -> str:
    match = re.search(rf"^{name} \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"{name} not in the Makefile"
    return match.group(1)


def pre_commit_repos() -> dict[str, dict]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return {repo["repo"].rsplit("/", 1)[-1]: repo for repo in config["repos"]}


def test_pre_commit_runs_the_tools_of_make_lint() -> None:
    # `$(VENV)/bin/ruff format --check .` -> the hook `ruff-format`
    tools = ["-".join(line.removeprefix("$(VENV)/bin/").split()[:2]) for line in make_recipe("lint")]
    ruff = pre_commit_repos()["ruff-pre-commit"]
    assert sorted(hook["id"] for hook in ruff["hooks"]) == sorted(tools) == ["ruff-check", "ruff-format"]
    assert not any(hook.get("args") for hook in ruff["hooks"])  # settings come from pyproject.toml, as for make
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    dev = [Requirement(line) for line in setup["options.extras_require"]["dev"].split("\n") if line]
    ruff_spec = next(r.specifier for r in dev if r.name == "ruff")
    assert ruff["rev"].removeprefix("v") in ruff_spec


def test_nbstripout_covers_every_notebook() -> None:
    (hook,) = pre_commit_repos()["nbstripout"]["hooks"]
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks and all(re.search(hook["files"], path) for path in notebooks)


def test_ci_runs_the_readme_test_command_with_the_makefile_torch() -> None:
    assert make_recipe("test")[0].startswith("$(PY) -m pytest")
    assert [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("make")] == [
        "make install",
        "make test",
    ]
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert {"push", "pull_request"} <= set(workflow[True])  # YAML 1.1 reads the key `on` as true
    steps = workflow["jobs"]["test"]["steps"]
    python = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11"
    (run,) = [step for step in steps if "run" in step]
    assert run["run"] == ".ci/run"
    pins = make_variable("TORCH_SPEC").split()
    assert run["env"]["TORCH_SPEC"].split()[: len(pins)] == pins


# The oldest release that has each API the package uses: a lower bound below it installs and then fails at run time.
NEEDED = {
    "pytorch-lightning": "2.6",  # callbacks.EMAWeightAveraging; ModelCheckpoint(save_on_exception=...)
    "jsonargparse": "4.39",  # what pytorch-lightning 2.6's LightningCLI requires
    "torch": "2.11",
}


def test_declared_lower_bounds_admit_no_release_without_the_apis_used() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [line for line in setup["options"]["install_requires"].split("\n") if line]
    requirements = {r.name: r for r in map(Requirement, lines)}
    for name, oldest in NEEDED.items():
        lower = [spec.version for spec in requirements[name].specifier if spec.operator == ">="]
        assert lower and Version(lower[0]) >= Version(oldest), (name, lower)


def test_gitignore_covers_what_the_readme_commands_write() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for folder in ("/runs/", "/exports/", "/data/"):
        assert folder in ignored, folder


def test_the_digits_grid_states_the_documented_measured_time() -> None:
    text = (ROOT / "docs" / "ablations.md").read_text()
    measured = re.search(r"took (\d+ min \d+ s) on this project's 2-core machine", text)
    assert measured, "the documented CPU grid time"
    header = (ROOT / "configs" / "ablation" / "digits.yaml").read_text().split("\nname:")[0]
    assert f"took {measured.group(1)}" in header and "minutes" not in header


def imported_modules(path: Path) -> set[str]:
    """The dotted names ``path`` (a module of resnest_pl) imports, relative imports resolved; ``from X import y``
    counts as both ``X`` and ``X.y``."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return names


def test_no_module_below_the_cli_imports_it() -> None:
    # The CLI's own module, and the launcher with which the ablation and tune runners (above the CLI) drive it.
    drivers = {"resnest_pl.cli", "resnest_pl.launch"}
    importers = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "resnest_pl").rglob("*.py")
        if any(name == "resnest_pl.cli" or name.startswith("resnest_pl.cli.") for name in imported_modules(path))
    )
    assert set(importers) <= drivers, importers
