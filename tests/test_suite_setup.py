"""The suite's own setup (conftest.py, helpers.py): the environment the scripts run in, the fsync it skips."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import THREADS, run

import atomic_files

# Prints the variables named on its command line, as the script sees them (null where unset).
PRINT_ENV = "import json, os, sys\nprint(json.dumps({name: os.environ.get(name) for name in sys.argv[1:]}))\n"


@pytest.mark.slow
def test_the_scripts_see_the_parents_environment_less_what_would_change_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU machine's driver is found through the parent's variables: the scripts must see them. torchrun's
    variables would make a script join a job, and the terminal's and the locale change what it prints."""
    inherited = {"CUDA_VISIBLE_DEVICES": "1,0", "LD_LIBRARY_PATH": str(tmp_path / "lib"), "ALEXNET_TEST_VAR": "x"}
    dropped = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "job", "LC_ALL": "C"}
    dropped |= {"PYTHONWARNINGS": "error", "COLUMNS": "40", "PYTEST_ADDOPTS": "-x"}
    for name, value in {**inherited, **dropped, "OMP_NUM_THREADS": "64"}.items():
        monkeypatch.setenv(name, value)
    script = tmp_path / "print_env.py"
    script.write_text(PRINT_ENV)
    names = [*inherited, *dropped, "OMP_NUM_THREADS", "PYTHONHASHSEED", "MPLBACKEND", "ALEXNET_SKIP_FSYNC", "PATH"]
    seen = json.loads(run(str(script), *names, cwd=tmp_path).stdout)  # (ROOT / an absolute path is that path)
    assert {name: seen[name] for name in inherited} == inherited
    assert {name: seen[name] for name in dropped} == dict.fromkeys(dropped)
    assert (seen["OMP_NUM_THREADS"], seen["PYTHONHASHSEED"], seen["MPLBACKEND"]) == (THREADS, "0", "Agg")
    assert seen["ALEXNET_SKIP_FSYNC"] == os.environ["ALEXNET_SKIP_FSYNC"] and seen["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("skip", [None, "1"])
def test_files_are_flushed_to_disk_unless_the_suite_says_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skip: str | None
) -> None:
    """The suite runs with ALEXNET_SKIP_FSYNC=1 (conftest): outside it, every atomic write is fsynced."""
    synced = []
    monkeypatch.setattr(atomic_files.os, "fsync", synced.append)
    if skip is None:
        monkeypatch.delenv("ALEXNET_SKIP_FSYNC", raising=False)
    else:
        monkeypatch.setenv("ALEXNET_SKIP_FSYNC", skip)
    atomic_files.write_atomically(tmp_path / "f.bin", lambda f: f.write(b"data"))
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert len(synced) == (1 if skip is None else 0)


# Ends in each way a script can end; prints its folder, its argv and whether a global set by an earlier run
# of the same file is still there (each run starts from a fresh __main__ in a new process).
ENDINGS = """import os, sys, time
print(os.getcwd(), sys.argv[1:], "seen" if globals().get("SEEN") else "fresh", os.getpid())
SEEN = True
how = sys.argv[1]
if how == "message":
    sys.exit("error: a message")
if how == "code":
    sys.exit(3)
if how == "raise":
    raise ValueError("raised")
if how == "sleep":
    time.sleep(30)
"""


@pytest.mark.slow
def test_a_forked_script_ends_as_a_new_interpreter_would(tmp_path: Path) -> None:
    """helpers.run forks the scripts from a process that imported torch (forked_scripts.py): each must
    still end as `python script.py` does: exit status, stdout, stderr, folder, a process of its own."""
    script = tmp_path / "endings.py"
    script.write_text(ENDINGS)
    seen = {}
    for how, code in (("return", 0), ("message", 1), ("code", 3), ("raise", 1)):
        result = run(str(script), how, cwd=tmp_path, check=False)
        seen[how] = result
        assert result.returncode == code, (how, result.stderr)
        folder, argv, fresh, pid = result.stdout.split(maxsplit=3)
        assert (folder, fresh) == (str(tmp_path), "fresh") and int(pid) != os.getpid()
    assert seen["message"].stderr.strip().splitlines()[-1] == "error: a message"
    assert seen["raise"].stderr.strip().splitlines()[-1] == "ValueError: raised"
    assert "Traceback" in seen["raise"].stderr and "Traceback" not in seen["message"].stderr
    pids = {result.stdout.split()[-1] for result in seen.values()}
    assert len(pids) == len(seen)  # a new process each time
    with pytest.raises(subprocess.TimeoutExpired):
        run(str(script), "sleep", cwd=tmp_path, timeout=2)
