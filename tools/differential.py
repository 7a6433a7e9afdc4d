"""One snippet of client code, run on CPython's aiohttp and on ours (MicroPython), for tests/test_differential.py.

The snippet is written once, for both: it imports aiohttp and reports with testlib's result(), usually through
tests/mpy/aiodiff.py, which reduces responses and failures to plain data. CPython runs it in a subprocess of this
interpreter with tests/mpy on its path, so `import aiohttp` is CPython's aiohttp; MicroPython runs it through the
`mpy` fixture. With a FaultServer, each side's requests as the server received them are kept too.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

from tools.mpy import TESTLIB

# What the two clients send differently on purpose (docs/decisions.md): each one's own User-Agent, and the
# Accept-Encoding aiohttp sends on every request (ours decodes gzip and deflate but asks for them only when told to).
UNCOMPARED_FIELDS = ("user-agent", "accept-encoding", "accept")


def received(server):
    # what a FaultServer received since its reset: each request's method, target, header fields (but those above)
    # and body (length and sha256)
    return [[req.method, req.target,
             [[name, value] for name, value in req.raw_headers if name.lower() not in UNCOMPARED_FIELDS],
             [len(req.body), hashlib.sha256(req.body).hexdigest()]] for req in server.log]


class Differential:
    def __init__(self, mpy, tmpdir):
        self.mpy = mpy
        self.tmpdir = tmpdir

    def cpython(self, code, timeout=60, **values):
        head = "from testlib import *\n" + "".join("%s = %r\n" % kv for kv in values.items())
        fd, script = tempfile.mkstemp(suffix=".py", dir=self.tmpdir)
        with os.fdopen(fd, "w") as f:
            f.write(head + code)
        proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=timeout,
                              cwd=self.tmpdir, env=dict(os.environ, PYTHONPATH=str(TESTLIB)))
        assert proc.returncode == 0, "CPython exited with %d\n--- stdout\n%s--- stderr\n%s" % (
            proc.returncode, proc.stdout, proc.stderr)
        return [json.loads(line[9:]) for line in proc.stdout.splitlines()
                if line.startswith("@@RESULT ")]

    def run(self, code, server=None, timeout=60, **values):
        """-> (CPython's results, ours): each a list of result() dicts; with server (a FaultServer), each side's
        list ends with {"received": received(server)}."""
        sides = []
        for run in (lambda: self.cpython(code, timeout, **values),
                    lambda: self.mpy.run(code, timeout=timeout, **values).results):
            if server is not None:
                server.reset()
            results = run()
            if server is not None:
                results.append({"received": received(server)})
            sides.append(results)
        return sides[0], sides[1]
