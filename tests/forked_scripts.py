"""The repository's scripts run as new processes forked from one that has already imported torch.

Starting `python train.py` costs 4-8 s on the 2-core machines before the script's first line runs
(importing torch, torchvision and the libraries under them), and the suite starts scripts about a hundred
times. Here one server process per pytest worker imports them once; each script then runs in a child
forked from it: a process of its own, with its own argv, folder, environment, stdin (/dev/null), stdout
and stderr, exit status and process id, which runs the script's file as `__main__` from its first line,
as `python script.py` would. What it does not share with `python script.py` is what an interpreter
decides when it starts: the server starts with the scripts' environment (helpers.script_env), and a
run whose environment differs from it in one of those variables (PYTHON*, LD_*, *_NUM_THREADS) runs in
a real subprocess instead, as does every run when ALEXNET_TEST_SUBPROCESS=1 is set. What the server
printed while importing (a library's import-time warning) is put at the head of each child's stderr,
as a new interpreter would print it.

Tests that need a real interpreter (torchrun, signals, a script's own imports) start one themselves.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the scripts import: at the top, and matplotlib where they draw (so nothing is imported here that a
# script would not import itself). matplotlib's first figure alone costs ~1.5 s: it loads the font list.
PRELOAD = (
    "train",
    "inference",
    "bench",
    "export",
    "acceptance",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)


def decided_at_start(name: str) -> bool:
    """Whether an environment variable is read when an interpreter (or a library it imports) starts."""
    return name.startswith(("PYTHON", "LD_")) or name.endswith("_NUM_THREADS")


def exit_status(error: BaseException | None) -> int:
    """The exit status Python gives a script that ended with `error` (None: it returned), printing what
    Python prints for it."""
    if error is None:
        return 0
    if isinstance(error, SystemExit):
        if error.code is None:
            return 0
        if isinstance(error.code, int):
            return error.code
        print(error.code, file=sys.stderr)
        return 1
    traceback.print_exception(error)
    return 1


def child(request: dict) -> None:
    """In the forked child: become `python SCRIPT ARGS` in its folder, run it, and exit as it would."""
    import atexit
    import runpy

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in (signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    files = ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY), (2, request["stderr"], os.O_WRONLY))
    for fd, path, mode in files:
        opened = os.open(path, mode | (os.O_APPEND if fd else 0))
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the process's own descriptors, as at start-up)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(script).resolve().parent)
    error = None
    try:
        runpy.run_path(script, run_name="__main__")
    except BaseException as raised:  # noqa: BLE001  (every way a script ends becomes its exit status)
        error = raised
    if isinstance(error, KeyboardInterrupt):
        traceback.print_exception(error)
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as Python ends on an uncaught KeyboardInterrupt
    status = exit_status(error)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve() -> None:
    """The server: import the scripts' libraries, then fork one child per request read from stdin (one JSON
    line each), answering with one JSON line once the child has ended: its wait status, or that it ran past
    its timeout and was killed (as subprocess.run kills it)."""
    sys.path[0] = str(ROOT)  # (this folder's place): the scripts' folder, as for `python train.py`
    for name in PRELOAD:
        __import__(name)
    if sys.modules["torch"].cuda.is_initialized():  # a forked child cannot use a CUDA its parent started
        raise RuntimeError("importing the scripts started CUDA: the forked scripts could not use the GPU")
    sys.stderr.flush()
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing printed here reaches the answers
    print("ready", file=answers, flush=True)
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                answers.close()
                child(request)
            finally:
                os._exit(1)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:  # killed, as subprocess.run kills a process past its timeout
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.005)
        print(json.dumps({"status": status}), file=answers, flush=True)


class ScriptServer:
    """The client side (in a pytest worker): start the server once, then run scripts through it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.folder = Path(tempfile.mkdtemp(prefix="forked-scripts-"))
        self.preload_stderr = self.folder / "preload.err"
        with open(self.preload_stderr, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, __file__],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the script server did not start: {self.preload_stderr.read_text()}")

    def can_run(self, env: dict[str, str]) -> bool:
        names = set(env) | set(self.env)
        return self.process.poll() is None and not any(
            decided_at_start(name) and env.get(name) != self.env.get(name) for name in names
        )

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        stdout, stderr = self.folder / "stdout", self.folder / "stderr"
        stdout.write_bytes(b"")
        stderr.write_bytes(self.preload_stderr.read_bytes())
        request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        self.process.stdin.write(json.dumps({**request, "timeout": timeout}) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the script server ended: {self.preload_stderr.read_text()}")
        status = json.loads(answer)["status"]
        if status is None:
            raise subprocess.TimeoutExpired(argv, timeout, stdout.read_text(), stderr.read_text())
        code = os.waitstatus_to_exitcode(status)
        return subprocess.CompletedProcess(argv, code, stdout.read_text(), stderr.read_text())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    serve()
