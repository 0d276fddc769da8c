"""The code sandbox stops what it claims to stop, and the HumanEval/MBPP runners score real problems."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from danlu.errors import ConfigError
from danlu.eval import sandbox as S
from danlu.eval import sandbox_cgroup

FAST = S.SandboxConfig(timeout_s=3.0, memory_mb=512)
needs_unshare = pytest.mark.skipif(not S.unshare_available(), reason="unshare --user --net unavailable here")


def test_correct_solution_passes_and_wrong_one_fails():
    good = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n"
    res = S.run_python(good, FAST)
    assert res.status == S.PASSED and res.passed and res.returncode == 0
    assert res.stdout_tail.strip() == "ok"
    bad = good.replace("a + b", "a - b")
    res = S.run_python(bad, FAST)
    assert res.status == S.FAILED and "AssertionError" in res.stderr_tail
    res = S.run_python("def f(:\n", FAST)
    assert res.status == S.ERROR and "SyntaxError" in res.stderr_tail
    res = S.run_python("raise ValueError('boom')", FAST)
    assert res.status == S.ERROR and "ValueError: boom" in res.stderr_tail


def test_infinite_loop_is_stopped_by_wall_clock_timeout():
    t0 = time.monotonic()
    res = S.run_python("while True:\n    pass\n", S.SandboxConfig(timeout_s=1.0))
    assert res.status == S.TIMEOUT
    assert time.monotonic() - t0 < 6


def test_sleeping_process_is_killed_at_timeout_not_cpu_limit():
    res = S.run_python("import time\ntime.sleep(60)\n", S.SandboxConfig(timeout_s=1.0))
    assert res.status == S.TIMEOUT and res.duration_s < 5


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    res = S.run_python("while True:\n    pass\n", S.SandboxConfig(timeout_s=30.0, cpu_s=1))
    assert res.status == S.TIMEOUT and res.duration_s < 10


@pytest.mark.parametrize(
    "bomb",
    ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append(bytearray(10**6))"],
    ids=["bytearray", "list-growth"],
)
def test_memory_bomb_is_stopped(bomb):
    res = S.run_python(bomb, S.SandboxConfig(timeout_s=20.0, memory_mb=256))
    assert res.status == S.ERROR
    assert "MemoryError" in res.stderr_tail
    assert res.duration_s < 15


@pytest.mark.parametrize("how", ["open", "pathlib", "os.open", "os.rename"])
def test_write_outside_temp_dir_fails_and_leaves_no_file(how):
    target = Path(f"/tmp/outside-{uuid.uuid4().hex}")
    code = {
        "open": f"open({str(target)!r}, 'w').write('x')",
        "pathlib": f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        "os.open": f"import os\nos.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))",
        "os.rename": f"open('inside.txt', 'w').write('x')\nimport os\nos.rename('inside.txt', {str(target)!r})",
    }[how]
    try:
        res = S.run_python(code, FAST)
        assert res.status == S.ERROR and "PermissionError" in res.stderr_tail
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_writes_inside_temp_dir_and_home_work():
    code = (
        "import os, pathlib, tempfile\n"
        "pathlib.Path('a.txt').write_text('hi')\n"
        "os.makedirs('sub/dir')\n"
        "with tempfile.NamedTemporaryFile('w') as f: f.write('x')\n"
        "assert open(os.path.expanduser('~/a.txt')).read() == 'hi'\n"
        "assert os.getcwd() == os.environ['HOME']\n"
        "assert not any('proxy' in k.lower() for k in os.environ)\n"
    )
    os.environ["HTTP_PROXY"] = "http://leak.invalid:1"
    try:
        res = S.run_python(code, FAST)
    finally:
        del os.environ["HTTP_PROXY"]
    assert res.status == S.PASSED, res.stderr_tail


def test_file_size_limit():
    res = S.run_python("open('big', 'wb').write(b'x' * 3 * 2**20)", S.SandboxConfig(timeout_s=5, file_mb=1))
    assert res.status == S.ERROR


CONNECT = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n"


def test_network_connect_fails_with_preamble_only():
    res = S.run_python(CONNECT, S.SandboxConfig(timeout_s=5, isolate=False, guard=True))
    assert res.status == S.ERROR and "network access is disabled" in res.stderr_tail
    assert not res.isolated


@needs_unshare
def test_network_connect_fails_in_network_namespace_without_preamble():
    raw = "import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\n"
    for code in (CONNECT, raw):
        res = S.run_python(code, S.SandboxConfig(timeout_s=5, isolate=True, guard=False))
        assert res.isolated
        assert res.status == S.ERROR and "OSError" in res.stderr_tail, res.stderr_tail
        assert "unreachable" in res.stderr_tail.lower()


@needs_unshare
def test_detached_grandchild_dies_with_the_sandbox():
    token = uuid.uuid4().hex
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # leaves the process group: only the PID namespace can reach it
        f"    os.execv('/bin/sleep', ['sleep', '300', '{token}'])\n"
        "time.sleep(0.5)\n"
    )
    res = S.run_python(code, S.SandboxConfig(timeout_s=10, isolate=True))
    assert res.status == S.PASSED
    time.sleep(0.3)
    alive = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if token.encode() in (p / "cmdline").read_bytes():
                    alive.append(p.name)
            except OSError:
                continue
    assert alive == []


@pytest.mark.skipif(
    os.geteuid() == 0 and not sandbox_cgroup.available(),
    reason="root is exempt from RLIMIT_NPROC and no pids cgroup can be made here",
)
def test_fork_bomb_is_limited_by_nproc_or_a_pids_cgroup():
    code = (
        "import os, time\nn = 0\n"
        "try:\n"
        "    for _ in range(500):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(2)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    print('limited at', n)\n"
    )
    res = S.run_python(code, S.SandboxConfig(timeout_s=10, max_procs=20))
    assert "limited at" in res.stdout_tail
    assert int(res.stdout_tail.split()[-1]) <= 20


def test_isolate_required_but_missing_is_a_config_error(monkeypatch):
    monkeypatch.setattr(S, "unshare_available", lambda: False)
    with pytest.raises(ConfigError, match="unshare"):
        S.run_python("pass", S.SandboxConfig(isolate=True))
    with pytest.raises(ConfigError, match="timeout_s"):
        S.SandboxConfig(timeout_s=0)


def test_run_many_keeps_order():
    progs = [f"assert {i} % 2 == 0" for i in range(6)]
    got = [r.status for r in S.run_many(progs, FAST, workers=3)]
    assert got == [S.PASSED, S.FAILED] * 3


# --- HumanEval / MBPP runners on the real offline problems -----------------------------------------


@pytest.fixture(scope="module")
def code_problems():
    from danlu.eval.code import load_problems

    return {kind: load_problems(kind, limit=3) for kind in ("humaneval", "mbpp")}


def _wrong(prob) -> str:
    if prob.kind == "humaneval":
        return "    return None\n"
    return f"def {prob.entry_point}(*args):\n    return None\n"


@pytest.mark.needs_data
@pytest.mark.parametrize("kind", ["humaneval", "mbpp"])
def test_canonical_solutions_pass_and_wrong_ones_fail(code_problems, kind):
    from danlu.eval.code import evaluate_code

    probs = code_problems[kind]
    assert len(probs) == 3 and len({p.task_id for p in probs}) == 3
    seen = []

    def generate(prompt: str, n: int, temperature: float) -> list[str]:
        prob = next(p for p in probs if p.prompt == prompt)
        seen.append((prob.task_id, n, temperature))
        # correct, wrong, correct with trailing junk the stop sequences must cut, wrong
        return [
            prob.reference,
            _wrong(prob),
            prob.reference + "\nprint('junk')\nraise SystemExit(1)",
            _wrong(prob),
        ]

    res = evaluate_code(probs, generate, n=4, ks=(1, 2, 4), temperature=0.8, sandbox=FAST, workers=2)
    assert seen == [(p.task_id, 4, 0.8) for p in probs]
    for p in res.per_problem:
        assert p["statuses"] == [S.PASSED, S.FAILED, S.PASSED, S.FAILED]
        assert p["correct"] == 2
    assert res.metrics["pass@1"] == pytest.approx(0.5)
    assert res.metrics["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert res.metrics["pass@4"] == 1.0
    assert res.metrics["pass@1_stderr"] == 0.0


def test_truncate_at_stop_and_bad_generate():
    from danlu.errors import DataError
    from danlu.eval.code import HUMANEVAL_STOP, CodeProblem, evaluate_code, truncate_at_stop

    text = "    return x\n\ndef other():\n    pass\nif __name__ == '__main__':\n"
    assert truncate_at_stop(text, HUMANEVAL_STOP) == "    return x\n"
    assert truncate_at_stop("    return 1", HUMANEVAL_STOP) == "    return 1"
    prob = CodeProblem(
        "t/0", "humaneval", "def f():\n", "def check(c):\n    assert c() == 1\n", "f", "    return 1\n"
    )
    res = evaluate_code(
        [prob], lambda p, n, t: ["    return 1\n", "    return 2\n"], n=2, ks=(1,), sandbox=FAST
    )
    assert res.metrics["pass@1"] == 0.5
    with pytest.raises(DataError, match="expected 2"):
        evaluate_code([prob], lambda p, n, t: ["    return 1\n"], n=2, sandbox=FAST)
    with pytest.raises(ConfigError, match="k="):
        evaluate_code([prob], lambda p, n, t: ["x"], n=1, ks=(2,))


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.parametrize("kind", ["humaneval", "mbpp"])
def test_every_canonical_solution_passes(kind):
    """All 164 HumanEval and 500 MBPP reference solutions pass their tests in the sandbox (~70 s)."""
    from danlu.eval.code import load_problems

    probs = load_problems(kind)
    assert len(probs) == {"humaneval": 164, "mbpp": 500}[kind]
    results = S.run_many([p.program(p.reference) for p in probs], S.SandboxConfig(timeout_s=20), workers=2)
    assert [p.task_id for p, r in zip(probs, results, strict=True) if not r.passed] == []
