"""`vllm-gateway check` run as a subprocess against a real simulator process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Process, free_port, run_simulator

SECRET = "secret-xyz"
WRONG_KEY = "wrong-key-abc"


def check(*args: str, key_env: str | None = None, stdin: str = "") -> tuple[int, str]:
    """Run the command; return its exit code and stdout+stderr together."""
    # The developer's own OPENAI_API_KEY must not leak into what the tests send.
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    if key_env is not None:
        env["OPENAI_API_KEY"] = key_env
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return done.returncode, done.stdout + done.stderr


# `sim` (no key) comes from conftest.py.
@pytest.fixture(scope="module")
def keyed_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--api-key", SECRET) as process:
        yield process


@pytest.mark.parametrize("suffix", ["", "/v1/"])
def test_all_passes(sim: Process, suffix: str) -> None:
    code, output = check("--url", sim.url + suffix, "--test", "all")
    assert code == 0, output
    lines = output.splitlines()
    assert [line.split(":")[0] for line in lines] == ["PASS health", "PASS completion", "PASS chat"]
    assert "sim-model" in lines[0]
    assert "[DONE]" in lines[1]


def test_embeddings_pass(sim: Process) -> None:
    code, output = check("--url", sim.url, "--test", "embeddings", "--model", "sim-model")
    assert code == 0, output
    assert output.startswith("PASS embeddings: a vector of ")


def test_unlisted_model_fails_health(sim: Process) -> None:
    code, output = check("--url", sim.url, "--test", "health", "--model", "no-such-model")
    assert code == 1
    assert output.startswith("FAIL health: model 'no-such-model' is not listed"), output


def test_wrong_key_fails_without_showing_either_key(keyed_sim: Process) -> None:
    code, output = check("--url", keyed_sim.url, "--test", "all", "--api-key", WRONG_KEY)
    assert code == 1
    lines = output.splitlines()
    assert len(lines) == 3, output
    assert all(line.startswith("FAIL ") and "HTTP 401" in line for line in lines), output
    assert WRONG_KEY not in output
    assert SECRET not in output


def test_missing_key_fails(keyed_sim: Process) -> None:
    code, output = check("--url", keyed_sim.url, "--test", "health")
    assert code == 1
    assert output.startswith("FAIL health: HTTP 401 Unauthorized"), output


@pytest.mark.parametrize("via", ["flag", "env"])
def test_right_key_passes(keyed_sim: Process, via: str) -> None:
    args = ["--url", keyed_sim.url, "--test", "all"]
    if via == "flag":
        code, output = check(*args, "--api-key", SECRET)
    else:
        code, output = check(*args, key_env=SECRET)
    assert code == 0, output
    assert output.count("PASS ") == 3
    assert SECRET not in output


def test_nothing_listening_fails_to_connect() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, output = check("--url", url, "--test", "health")
    assert code == 1
    assert output == f"FAIL health: cannot connect to {url}/v1/models (connection refused)\n"


def test_interactive_streams_one_answer_per_line(keyed_sim: Process) -> None:
    code, output = check(
        "--url",
        keyed_sim.url,
        "--interactive",
        "--api-key",
        SECRET,
        stdin="Hello there\nAnd again\n",
    )
    assert code == 0, output
    answers = output.splitlines()
    assert len(answers) == 2, output
    assert all(answer.strip() for answer in answers)


def test_interactive_stops_at_empty_line(sim: Process) -> None:
    code, output = check("--url", sim.url, "--interactive", stdin="Hi\n\nnot sent\n")
    assert code == 0, output
    assert len(output.splitlines()) == 1, output


def test_interactive_reports_an_error_and_exits_1(keyed_sim: Process) -> None:
    code, output = check("--url", keyed_sim.url, "--interactive", stdin="Hi\n")
    assert code == 1
    assert output.startswith("error: HTTP 401"), output


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "http://127.0.0.1:1"],
        ["--url", "http://127.0.0.1:1", "--test", "health", "--interactive"],
        ["--url", "ftp://example.com", "--test", "health"],
        ["--url", "http://127.0.0.1:1", "--test", "health", "--timeout", "0"],
        ["--url", "http://127.0.0.1:1", "--test", "health", "--insecure", "--cacert", "x"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    code, output = check(*args)
    assert code == 2, output
    assert "Traceback" not in output


def test_unreadable_ca_bundle_is_a_usage_error(tmp_path: Path) -> None:
    code, output = check(
        "--url",
        "https://127.0.0.1:1",
        "--test",
        "health",
        "--cacert",
        str(tmp_path / "missing.pem"),
        "--api-key",
        SECRET,
    )
    assert code == 2
    assert "cannot load the CA bundle" in output
    assert SECRET not in output


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (["--fail-status", "503"], "HTTP 503 Service Unavailable: "),
        (["--drop-after", "3"], "the connection to "),
        (["--stall-ms", "3000"], "timed out waiting for "),
    ],
)
def test_generation_faults_fail_after_health_passes(
    tmp_path: Path, fault: list[str], reason: str
) -> None:
    with run_simulator(tmp_path, *fault) as faulty:
        code, output = check("--url", faulty.url, "--test", "all", "--timeout", "1")
    assert code == 1
    health, completion, chat = output.splitlines()
    assert health.startswith("PASS health: ")
    assert completion.startswith(f"FAIL completion: {reason}"), output
    assert chat.startswith(f"FAIL chat: {reason}"), output
