"""The commands the README gives a first visit work as shown: the Quick start's test command is the one CI
runs, and its offline commands run from a clone."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def shell_lines(section: str) -> list[str]:
    """The lines of the ```sh blocks of one `## ` section of the README, comments and blanks left out."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.DOTALL)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_quick_starts_test_command_is_the_one_ci_runs() -> None:
    (command,) = [line for line in shell_lines("Quick start") if line.endswith(".venv/bin/pytest")]
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


OFFLINE = [line for line in shell_lines("Quick start") if line.startswith(".venv/bin/sidecar-webhook review")]


def test_the_quick_start_shows_the_review_and_how_to_read_its_patch() -> None:
    assert [shlex.split(line, comments=True)[1:3] for line in OFFLINE] == [
        ["review", "-f"],
        ["review", "--patch"],
    ]


@pytest.mark.parametrize("line", OFFLINE)
def test_the_quick_starts_offline_commands_run_from_a_clone(line: str) -> None:
    # The console script of the interpreter running the tests stands for the clone's .venv/bin/.
    program, *args = shlex.split(line, comments=True)
    script = Path(sys.executable).parent / Path(program).name
    ran = subprocess.run([script, *args], cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == b""
    assert b'"op": "add"' in ran.stdout or b'"patchType": "JSONPatch"' in ran.stdout
