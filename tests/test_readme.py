"""README's two commands are the contract with newcomers and CI: keep them true."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_opens_with_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("edgefleet demo")
    assert "pytest" in cmds[1]


def test_ci_runs_readmes_test_command():
    test_cmd = _readme_commands()[1]
    install_and_test = test_cmd.split(" && ", 2)[2]  # after venv creation and activation
    assert install_and_test in (ROOT / ".ci" / "run").read_text()
