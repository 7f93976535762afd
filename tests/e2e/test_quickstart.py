"""The README's quickstart, run command by command against the stack `make run` starts: a command
that stops working (a renamed flag, a changed exit code) fails here before it fails a new user."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Bounds: the stack's start (conftest, 180 s) + health + the quickstart, and then some.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(540)]
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Quickstart lines this test does not run, and why. Each must be in the quickstart as written (its
# comment aside), so a line changed in the README fails the test until it is listed again here.
NOT_RUN = {
    "make run": "the test starts the same stack itself (python -m deploy.local.devstack, on free ports)",
}
# Quickstart lines that run until stopped, and the output that says they are running: each is
# started, then stopped with SIGTERM once it says so, and must exit 0.
DAEMONS = {
    "certbus agent --cert web2/cert.pem --key web2/key.pem --exec 'systemctl reload nginx'": "connected to NATS",
}
COMMAND_TIMEOUT_S = 60.0  # one command (a daemon: until it says it is running)
QUICKSTART_TIMEOUT_S = 240.0  # every command, from the first to the last (about 45 s on 2 busy cores)
HEALTH_TIMEOUT_S = 60.0  # after the stack's ready line, until `certbus health` exits 0
EXPECTED_EXIT = re.compile(r"\(exit (\d+)\)")
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")


@dataclass(frozen=True)
class Command:
    """One command of the quickstart: what bash runs, and what the README says of it."""

    code: str  # as written, continuation lines included, without the trailing comment
    comment: str

    @property
    def line(self) -> str:
        """The command on one line, as NOT_RUN and DAEMONS name it."""
        return " ".join(part.strip().removesuffix("\\").strip() for part in self.code.splitlines())

    @property
    def expected_exit(self) -> int:
        """0, or the code the comment names: `# revoked (exit 1)`."""
        found = EXPECTED_EXIT.search(self.comment)
        return int(found[1]) if found else 0

    @property
    def assigns(self) -> list[str]:
        """The shell variables it sets (`T=$(...)`), kept for the commands after it."""
        found = ASSIGNMENT.match(self.code)
        return [found[1]] if found else []


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's code and its trailing comment (a `#` starting a word outside quotes)."""
    quote = ""
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def quickstart_commands(readme: str) -> list[Command]:
    """Every command of the `sh` blocks of the README's Quickstart section, in order."""
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.DOTALL | re.MULTILINE):
        pending: list[str] = []
        for raw in block.splitlines():
            code, comment = split_comment(raw)
            if not code.strip() and not pending:
                continue
            pending.append(code)
            if code.endswith("\\"):
                continue
            commands.append(Command("\n".join(pending), comment))
            pending = []
        assert not pending, f"a quickstart command ends with a line continuation: {pending}"
    return commands


def test_the_lines_the_quickstart_test_skips_are_in_the_readme() -> None:
    lines = [c.line for c in quickstart_commands(README.read_text())]
    assert len(lines) > 20, lines
    gone = sorted((NOT_RUN.keys() | DAEMONS.keys()) - set(lines))
    assert not gone, f"listed in the quickstart test but no longer in the README's quickstart: {gone}"


def test_a_comment_is_split_from_its_command_outside_quotes_only() -> None:
    assert split_comment("certbus validate web/cert.pem   # revoked (exit 1)") == (
        "certbus validate web/cert.pem",
        "revoked (exit 1)",
    )
    assert split_comment("echo '# not a comment' \"#\" a#b") == ("echo '# not a comment' \"#\" a#b", "")
    assert Command("certbus validate x", "revoked (exit 1)").expected_exit == 1
    assert Command("T=$(certbus token create)", "").assigns == ["T"]


def test_the_readme_quickstart_runs_command_by_command(make_run: dict[str, str], tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix) or not (venv / "bin" / "activate").exists():
        pytest.skip("the quickstart sources .venv/bin/activate: run the tests from the checkout's .venv (make test)")
    commands = quickstart_commands(README.read_text())
    # A directory of its own (the quickstart writes ./web, ./web2, x.crl...) whose .venv is the
    # interpreter's; a PATH without it, so that only `source .venv/bin/activate` puts `certbus` on it.
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(venv)
    env = {k: v for k, v in make_run.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != venv / "bin")
    _wait_until_healthy(env)
    state = tmp_path / "state.sh"
    state.write_text("")
    transcript: list[str] = []
    variables: list[str] = []  # what the commands so far assigned, as a shell keeps them
    deadline = time.monotonic() + QUICKSTART_TIMEOUT_S
    for command in commands:
        if command.line in NOT_RUN:
            transcript.append(f"not run: {command.line} ({NOT_RUN[command.line]})")
            continue
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the quickstart took too long:\n" + "\n".join(transcript)
        started = time.monotonic()
        if command.line in DAEMONS:
            code, output = _run_daemon(
                command, DAEMONS[command.line], env, workdir, state, min(remaining, COMMAND_TIMEOUT_S)
            )
        else:
            variables += [name for name in command.assigns if name not in variables]
            code, output = _run(command, variables, env, workdir, state, min(remaining, COMMAND_TIMEOUT_S))
        transcript.append(f"{time.monotonic() - started:6.2f} s  exit {code}  {command.line}")
        assert code == command.expected_exit, (
            f"`{command.line}` exited {code}, the README says {command.expected_exit}:\n{output[-3000:]}\n"
            "so far:\n" + "\n".join(transcript)
        )
    print("\n".join(transcript))


def _wait_until_healthy(env: dict[str, str]) -> None:
    """Until `certbus health` exits 0: every service answers (and, once health says so, is ready)."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        health = subprocess.run(
            [sys.executable, "-m", "shared.client.cli.main", "health", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
        if health.returncode == 0:
            return
        assert time.monotonic() < deadline, f"certbus health never exited 0:\n{health.stdout}{health.stderr}"
        time.sleep(0.1)


def _run(
    command: Command, variables: list[str], env: dict[str, str], cwd: Path, state: Path, timeout: float
) -> tuple[int, str]:
    """Run one command in bash with the exports and `variables` the ones before it left; keep them."""
    checks = "".join(
        f'[ -n "${name}" ] || {{ echo "quickstart: {name} is empty" >&2; [ $rc -ne 0 ] || rc=1; }}\n'
        for name in command.assigns
    )
    saved = f"declare -p {' '.join(variables)} 2>/dev/null; " if variables else ""
    script = (
        f"source {shlex.quote(str(state))}\nset -o pipefail\n{command.code}\nrc=$?\n{checks}"
        f"{{ export -p; {saved}true; }} > {shlex.quote(f'{state}.new')} && mv {shlex.quote(f'{state}.new')} "
        f"{shlex.quote(str(state))}\nexit $rc\n"
    )
    # A session of its own, so that a command that hangs is killed with everything it started.
    proc = subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return -1, f"timed out after {timeout:.0f} s:\n{output}"
    return proc.returncode, output


def _run_daemon(
    command: Command, running: str, env: dict[str, str], cwd: Path, state: Path, timeout: float
) -> tuple[int, str]:
    """Start a command that runs until stopped; once its output says `running`, SIGTERM it."""
    log = cwd.parent / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f"source {shlex.quote(str(state))}\nexec {command.code}\n"],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while running not in log.read_text(errors="replace"):
                if proc.poll() is not None:
                    return proc.returncode, "it stopped by itself:\n" + log.read_text(errors="replace")
                if time.monotonic() > deadline:
                    return -1, f"it never said {running!r}:\n" + log.read_text(errors="replace")
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=30), log.read_text(errors="replace")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
