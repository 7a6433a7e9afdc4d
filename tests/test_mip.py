"""mip, the way MicroPython users install libraries: package.json at the repository's root installs the library,
and so does the .mpy package `make mpy-package` writes. The unix port's own mip installs it from a loopback HTTP
server into an empty folder; a download then runs with only that folder (and the frozen modules) on the path."""
import functools
import hashlib
import http.server
import json
import threading
from contextlib import contextmanager

import pytest

from conftest import LIB, ROOT
from tools.bench import SMALL_HEAP
from tools.mpy import library_files
from tools.package import write_mpy_package
from tools.testservers import sha256_of

INSTALL = """
import mip
mip.install(URL, target=TARGET)
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serving(folder):
    """A plain HTTP server for the files under folder: -> its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield "http://127.0.0.1:%d" % server.server_address[1]
        finally:
            server.shutdown()


def test_package_json_lists_every_module_of_the_library():
    package = json.loads((ROOT / "package.json").read_text())
    assert sorted(target for target, _ in package["urls"]) == library_files()
    assert all(source == "internal_filesystem/lib/" + target for target, source in package["urls"])
    # the package's version is the library's
    assert '__version__ = "%s"' % package["version"] in (LIB / "aiohttp" / "__init__.py").read_text()


@pytest.mark.parametrize("variant", ["py", "mpy"])
def test_mip_installs_the_library_and_a_download_runs_from_it(mpy, fault, tmp_path, variant):
    if variant == "py":
        served, suffix = ROOT, ".py"  # the repository as GitHub serves it: mip.install("github:owner/repo")
    else:
        served, suffix = tmp_path / "www", ".mpy"
        assert write_mpy_package(served) == []
    lib = tmp_path / "lib"
    with serving(served) as url:
        mpy.run(INSTALL, bare=True, URL=url, TARGET=str(lib))  # mip asks for URL/package.json
    installed = sorted(str(f.relative_to(lib)) for f in lib.rglob("*") if f.is_file())
    assert installed == [f[:-3] + suffix for f in library_files()]
    if variant == "py":
        assert all((lib / f).read_bytes() == (LIB / f).read_bytes() for f in library_files())
    out = tmp_path / "big.bin"
    # the installed folder first: a build with the library frozen in must not run its frozen copy instead
    v = mpy.run(SMALL_HEAP, bare=True, path="%s:.frozen" % lib, URL=fault.url("/bytes/300000"), OUT=str(out)).value
    assert v == {"ok": True, "file": str(lib / "mpos" / "net" / ("download_manager" + suffix))}
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha256_of(300000)
