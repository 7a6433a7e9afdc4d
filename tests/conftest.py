"""pytest side of the harness: every test runs its code on MicroPython in a subprocess.

`mpy.run(code, heapsize=HEAP, timeout=60, compiled=False, **values)` writes `code` to a file, prefixes it with
`NAME = repr(value)` for each keyword, runs it on the unix port and returns a `Run` with the parsed `result(...)`
lines. A non-zero exit fails the test with MicroPython's own traceback, verbatim.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import testservers, wsservers  # noqa: E402
from tools.mpy import HEAP, LIB, ROOT, compile_lib, micropython, micropypath  # noqa: E402,F401
from tools import mpy as _mpy  # noqa: E402


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


# What a snippet runs first on asyncio's public API only (aiohttp/poll.py): the client may then not touch asyncio's
# internals at all, and a test fails loudly if it does.
PUBLIC_ASYNCIO = """
import aiohttp.poll as _poll
_poll.internals = False
def _internals(*args):
    raise AssertionError("asyncio's internals used on the public path")
_poll.register = _internals
"""


class MicroPython:
    def __init__(self, tmpdir, asyncio_path="internals"):
        self.tmpdir = Path(tmpdir)
        self._compiled = None
        self.asyncio_path = asyncio_path

    def lib(self, compiled=False):
        if not compiled:
            return LIB
        if self._compiled is None:
            self._compiled = self.tmpdir / "mpy-lib"
            errors = compile_lib(self._compiled)
            assert not errors, "\n".join(errors)
        return self._compiled

    def run(self, code, heapsize=HEAP, timeout=60, compiled=False, check=True, args=(), fds=None, **values):
        if not os.path.exists(micropython()):
            pytest.fail("MicroPython interpreter not found at %s (set MICROPYTHON=...)" % micropython())
        if self.asyncio_path == "public":
            code = PUBLIC_ASYNCIO + code
        try:
            proc, results = _mpy.run(code, self.tmpdir, lib=self.lib(compiled), heapsize=heapsize,
                                     timeout=timeout, args=args, fds=fds, **values)
        except subprocess.TimeoutExpired as e:
            raise MicroPythonFailed("MicroPython timed out after %ss\n--- stdout\n%s\n--- stderr\n%s" % (
                timeout, e.stdout, e.stderr))
        run = Run(proc, results)
        if check and proc.returncode != 0:
            raise MicroPythonFailed("MicroPython exited with %d\n--- stdout\n%s--- stderr\n%s" % (
                proc.returncode, proc.stdout, proc.stderr))
        return run


@pytest.fixture
def mpy(tmp_path, request):
    return MicroPython(tmp_path, getattr(request, "param", "internals"))


def pytest_generate_tests(metafunc):
    # Modules marked asyncio_paths run each test both ways the client can wait (aiohttp/poll.py)
    if "mpy" in metafunc.fixturenames and metafunc.definition.get_closest_marker("asyncio_paths"):
        metafunc.parametrize("mpy", ["internals", "public"], indirect=True)


@pytest.fixture(scope="session")
def library_frozen():
    """Whether the interpreter has the library frozen in (a `make frozen` build): it imports it with nothing but its
    frozen modules on the path."""
    probe = subprocess.run([micropython(), "-c", "import aiohttp, mpos.net.download_manager"], capture_output=True,
                           env=dict(os.environ, MICROPYPATH=".frozen"))
    return probe.returncode == 0


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


# --- websocket servers (tools/wsservers.py): aiohttp.web's handler and the websockets package's, plain and TLS


def _ws_server(cls, certs=None):
    with cls(certs=certs) as srv:
        srv.ca = certs.ca_der_path if certs else None  # what a client's tls_context() needs
        yield srv


@pytest.fixture(scope="session")
def ws_aiohttp():
    yield from _ws_server(wsservers.AiohttpWSServer)


@pytest.fixture(scope="session")
def ws_aiohttp_tls(certs):
    yield from _ws_server(wsservers.AiohttpWSServer, certs)


@pytest.fixture(scope="session")
def ws_websockets():
    yield from _ws_server(wsservers.WebsocketsServer)


@pytest.fixture(scope="session")
def ws_websockets_tls(certs):
    yield from _ws_server(wsservers.WebsocketsServer, certs)


WS_SERVERS = ["ws_aiohttp", "ws_aiohttp_tls", "ws_websockets", "ws_websockets_tls"]


@pytest.fixture(params=WS_SERVERS)
def ws_server(request):
    """Each of the four websocket servers in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def ws_script():
    """ws_script(scripts, answers=None, rcvbuf=None, certs=None) -> a ScriptWSServer (tools/wsservers.py), closed after
    the test; with certs (the suite's) it serves wss://."""
    made = []

    def start(scripts, answers=None, rcvbuf=None, certs=None):
        made.append(wsservers.ScriptWSServer(scripts, answers, rcvbuf, certs))
        return made[-1]

    yield start
    for srv in made:
        srv.close()


@pytest.fixture
def both(mpy, tmp_path):
    """both.run(code, server=None, **values) -> (CPython aiohttp's results, ours): tools/differential.py."""
    from tools.differential import Differential

    return Differential(mpy, tmp_path)
