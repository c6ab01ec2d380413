"""docs/architecture.md is generated from the imports and the package rules hold (issue 14).

The repository's own check, then the checker itself on small fake repositories, so that a
checker that passes everything fails here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "architecture.py"
STALE = "docs/architecture.md is out of date: run python docs/architecture.py"


def architecture(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_the_repository_follows_its_architecture():
    done = architecture("--check")
    assert done.returncode == 0, done.stdout + done.stderr


# A fake repository that follows every rule: the five packages and allowed imports only.
CLEAN = {
    "accounting/__init__.py": '''
        """Privacy accounting for the fake tree.

        A second paragraph that is not in the document."""
        from accounting.core import epsilon

        __all__ = ["epsilon"]
    ''',
    "accounting/core.py": '''
        """The core of accounting."""
        def epsilon():
            return 1.0
    ''',
    "spaces/__init__.py": '''
        """Spaces for the fake tree."""
        __all__ = ["get_space"]
        def get_space(name):
            return name
    ''',
    "trainers/__init__.py": '''
        """Trainers for the fake tree."""
        from trainers.loop import train

        __all__ = ["train"]
    ''',
    "trainers/loop.py": '''
        """The loop."""
        import accounting
        from . import helpers

        def train():
            from accounting import epsilon
            return accounting.epsilon() + epsilon() + helpers.ONE
    ''',
    "trainers/helpers.py": "ONE = 1\n",
    "trainers/__main__.py": '''
        """The command line."""
        import spaces
        from trainers import train

        spaces.get_space("x")
    ''',
    "results/__init__.py": '''
        """Results for the fake tree."""
        from accounting import *  # noqa: F403

        __all__ = ["build_report"]
        def build_report():
            return epsilon()  # noqa: F405
    ''',
    "search/__init__.py": '''
        """Search for the fake tree."""
        __all__ = []
    ''',
    "search/run.py": '''
        """The search's command line."""
        import accounting as acc
        import spaces
        from results import build_report
        from trainers import train

        def run():
            return acc.epsilon(), spaces.get_space("x"), build_report(), train()
    ''',
    "search/summary.py": '''
        """Shadowed names are not packages."""
        import results

        def summary(results):
            return results.anything  # the parameter, not the package
    ''',
}


def fake_repository(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return root


def test_a_clean_tree_generates_its_document_and_passes(tmp_path):
    root = fake_repository(tmp_path, CLEAN)
    assert architecture("--check", "--root", str(root)).returncode == 1  # no document yet
    written = architecture("--root", str(root))
    assert written.returncode == 0, written.stdout + written.stderr
    done = architecture("--check", "--root", str(root))
    assert done.returncode == 0, done.stdout + done.stderr

    document = (root / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert "```mermaid\ngraph LR\n" in document
    assert "    search --> results\n" in document
    assert '    trainers -- "only trainers/__main__.py" --> spaces\n' in document
    assert "trainers   -> accounting, spaces\n" in document
    assert "accounting -> (nothing)\n" in document
    assert "search     -> accounting, spaces, trainers, results\n" in document
    assert "Privacy accounting for the fake tree.\n" in document
    assert "second paragraph" not in document
    assert "- `accounting/core.py`: The core of accounting.\n" in document
    assert "- `trainers/helpers.py`: (no docstring)\n" in document


def test_a_stale_document_fails_in_one_sentence(tmp_path):
    root = fake_repository(tmp_path, CLEAN)
    assert architecture("--root", str(root)).returncode == 0
    fake_repository(root, {"spaces/extra.py": '"""A new space."""\n'})
    done = architecture("--check", "--root", str(root))
    assert done.returncode == 1
    assert done.stderr.strip() == STALE


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param(
            {"search/x.py": "from accounting.core import epsilon\n"},
            "search/x.py:1: imports the submodule accounting.core; import from accounting",
            id="from-a-submodule",
        ),
        pytest.param(
            {"results/x.py": "import accounting.core\n"},
            "results/x.py:1: imports the submodule accounting.core",
            id="import-a-submodule",
        ),
        pytest.param(
            {"search/x.py": "def f():\n    from accounting import core\n"},
            "search/x.py:2: uses accounting.core, which is not in accounting.__all__",
            id="a-name-outside-all",
        ),
        pytest.param(
            {"search/x.py": "import accounting\n\nprint(accounting.core.epsilon())\n"},
            "search/x.py:3: uses accounting.core, which is not in accounting.__all__",
            id="an-attribute-outside-all",
        ),
        pytest.param(
            {"results/x.py": "from search import run\n"},
            "results/x.py:1: uses search.run, which is not in search.__all__",
            id="an-empty-all",
        ),
        pytest.param(
            {"spaces/__init__.py": "def get_space(name):\n    return name\n"},
            "spaces/__init__.py:1: has no docstring",
            id="a-package-without-docstring",
        ),
        pytest.param(
            {
                "spaces/__init__.py": '"""Spaces."""\n',
                "search/x.py": "from spaces import get_space\n",
            },
            "search/x.py:1: uses spaces.get_space, but spaces/__init__.py defines no __all__",
            id="no-all",
        ),
        pytest.param(
            {"accounting/x.py": "import trainers\n"},
            "accounting/x.py:1: accounting must not import trainers "
            "(accounting may import no other package)",
            id="against-the-direction",
        ),
        pytest.param(
            {"trainers/x.py": "def f():\n    from results import build_report\n"},
            "trainers/x.py:2: trainers must not import results "
            "(trainers may import accounting, spaces)",
            id="inside-a-function",
        ),
        pytest.param(
            {
                "search/x.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from trainers.loop import train\n"
                )
            },
            "search/x.py:3: imports the submodule trainers.loop",
            id="under-type-checking",
        ),
        pytest.param(
            {"trainers/smoke.py": "import spaces\n"},
            "trainers/smoke.py:1: trainers may import spaces only in trainers/__main__.py",
            id="trainers-spaces-outside-the-command-line",
        ),
        pytest.param(
            {"results/x.py": "import search\n"},
            "packages import each other in a cycle: results -> search -> results",
            id="a-cycle",
        ),
    ],
)
def test_a_broken_rule_fails_the_check(tmp_path, files, expected):
    root = fake_repository(tmp_path, CLEAN)
    fake_repository(root, files)
    written = architecture("--root", str(root))  # writes the document, reports the violation
    assert written.returncode == 1
    assert (root / "docs" / "architecture.md").is_file()

    done = architecture("--check", "--root", str(root))
    assert done.returncode == 1
    assert STALE not in done.stderr  # the document is current: the rule alone fails
    assert expected in done.stderr, done.stderr
