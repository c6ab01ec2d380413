"""docs/user-paths.md keeps up with the README (issue 17: "every command verbatim, each
tested"): every command of the README's bash blocks and its notebook block is in it, every test
it names exists, and the README points at nothing outside the repository."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from tests.helpers import ROOT

README = ROOT / "README.md"
USER_PATHS = ROOT / "docs" / "user-paths.md"

# Commands the README tells a user to run in its prose (inline code), whitespace-normalised.
PROSE_COMMANDS = (
    'python -c "import trainers; help(trainers.TrainConfig)"',
    "search/privacy.py --ledger DIR",
    "python search/run.py --name fmnist_quick-20261122-221500 --resume",
    "--set epochs=2 batch_size=64",
    "--set dataset=synthetic --set synthetic_groups=3",
    "Authorization: Bearer $(cat ~/.ray/auth_token)",
    "apt-get install -y prometheus",
    "chmod 600 ~/.ray/auth_token",
    "ray job logs -f JOB_ID",
    "ray job stop JOB_ID",
    ".venv/bin/python -m trainers --space wrn_cifar10 --smoke --out /tmp/smoke",
    "python docs/architecture.py",
    "pip install -e .",
    'pytest -m "not slow"',
)

# The repository's top-level folders: a path the README gives under one of them must exist.
REPO_FOLDERS = ("accounting", "benchmarks", "docs", "results", "search", "spaces", "tests",
                "trainers")  # fmt: skip


def normalised(text: str) -> str:
    return " ".join(text.split())


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def readme_bash_commands(text: str | None = None) -> list[str]:
    """Every command of the README's ```bash blocks, in order: `\\` continuations joined,
    comments (whole lines, and trailing ones after whitespace) dropped, whitespace
    normalised."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands = []
    for block in code_blocks(text, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = normalised(re.sub(r"\s+#.*", "", line))
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def readme_notebook() -> str:
    """The README's one ```python block (the notebook example)."""
    (block,) = code_blocks(README.read_text(encoding="utf-8"), "python")
    return block


def readme_quickstart() -> str:
    """The README's first command (set up and run the quickstart)."""
    return readme_bash_commands()[0]


def user_paths_text() -> str:
    """docs/user-paths.md, whitespace-normalised, with Markdown tables' escaped pipes (`\\|`,
    how a `|` is written inside a table cell) read as the `|` they render."""
    return normalised(USER_PATHS.read_text(encoding="utf-8").replace("\\|", "|"))


def test_the_readme_has_commands_to_check():
    commands = readme_bash_commands()
    assert len(commands) >= 30, commands
    assert "search/run.py" in readme_quickstart()
    assert commands[1].endswith(".venv/bin/python -m pytest -q")  # the test suite


def test_every_readme_command_is_in_user_paths():
    doc = user_paths_text()
    missing = [command for command in readme_bash_commands() if command not in doc]
    assert not missing, "commands of README.md missing from docs/user-paths.md:\n" + "\n".join(
        missing
    )


def test_the_notebook_block_is_in_user_paths():
    doc = user_paths_text()
    lines = [normalised(line) for line in readme_notebook().splitlines() if line.strip()]
    assert lines and all(line in doc for line in lines), lines


def test_the_prose_commands_are_the_readmes_and_in_user_paths():
    readme, doc = normalised(README.read_text(encoding="utf-8")), user_paths_text()
    for command in PROSE_COMMANDS:
        assert command in readme, f"README.md no longer says {command!r}: update PROSE_COMMANDS"
        assert command in doc, f"docs/user-paths.md does not list {command!r}"


def test_the_readme_test_command_is_what_ci_runs():
    # docs/user-paths.md says .ci/run runs the README's test command as written.
    ci = [normalised(line) for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_bash_commands()[1] in ci


# --- the tests the document names exist ----------------------------------------------------


@cache
def definitions(path: Path) -> dict[str, set[str]]:
    """A test module's top-level functions and classes, each with its methods ('' for the
    module's own functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[""].add(node.name)
        elif isinstance(node, ast.ClassDef):
            found[node.name] = {
                item.name
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return found


NODE_ID = re.compile(r"(tests/[\w/]+\.py)((?:::\w+(?:\[[^\]\s`]*\])?)*)")


def test_every_named_test_exists():
    text = USER_PATHS.read_text(encoding="utf-8")
    ids = NODE_ID.findall(text)
    assert len(ids) >= 20, ids
    for path, node in ids:
        assert (ROOT / path).is_file(), path
        parts = [re.sub(r"\[.*\]$", "", part) for part in node.split("::")[1:]]
        if not parts:
            continue
        names = definitions(ROOT / path)
        if len(parts) == 1:
            assert parts[0] in names[""] or parts[0] in names, f"{path}::{parts[0]}"
        else:
            assert len(parts) == 2 and parts[1] in names.get(parts[0], ()), path + node


def test_every_test_named_without_its_file_exists():
    # Table cells may name a test of the file given above them by its name alone.
    text = USER_PATHS.read_text(encoding="utf-8")
    known = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for members in definitions(path).values():
            known |= members
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", text))
    assert named and not named - known, sorted(named - known)


# --- the README stays inside the repository --------------------------------------------------


def test_the_readme_points_only_inside_the_repository():
    readme = README.read_text(encoding="utf-8")
    assert "../" not in readme
    assert not re.search(r"(?<![\w.~])/(work|home|root|Users)/", readme)
    for target in re.findall(r"\]\(([^)]+)\)", readme):  # Markdown links
        assert target.startswith(("http://", "https://", "#")) or (ROOT / target).exists(), target


def test_every_repository_path_in_the_readme_exists():
    readme = README.read_text(encoding="utf-8")
    folders = "|".join(REPO_FOLDERS)
    paths = set(re.findall(rf"(?<![\w/.~$-])((?:{folders})/[\w./-]*)", readme))
    assert any(path.startswith("docs/") for path in paths), paths
    missing = sorted(p for p in paths if not (ROOT / p.rstrip(".,:;")).exists())
    assert not missing, missing
