"""The harness itself: MicroPython runs the code, failures surface verbatim, the firmware side builds."""
import ast
import re

import pytest

from conftest import LIB, ROOT, MicroPythonFailed, compile_lib
from tools.testservers import sha256_of

DOWNLOAD = """
import asyncio, aiohttp
async def main():
    async with aiohttp.ClientSession(ssl=aiohttp.tls_context(CA) if CA else None) as s:
        async with s.get(URL) as r:
            result(status=r.status, sha=sha256(await r.read()))
run(main())
"""


def test_runs_on_micropython(mpy):
    r = mpy.run("import sys\nresult(impl=sys.implementation.name, n=N + 1)", N=41)
    assert r.value == {"impl": "micropython", "n": 42}


def test_failing_micropython_assertion_fails_pytest(mpy):
    with pytest.raises(MicroPythonFailed) as e:
        mpy.run("def check():\n    assert 1 + 1 == 3, 'arithmetic is broken'\ncheck()\n")
    # MicroPython's own traceback, verbatim, in the failure message
    assert "AssertionError: arithmetic is broken" in str(e.value)
    assert re.search(r'File ".*\.py", line 3, in check', str(e.value))


def test_download_over_tcp_exact_bytes(mpy, fault):
    r = mpy.run(DOWNLOAD, URL=fault.url("/bytes/300000"), CA=None)
    assert r.value == {"status": 200, "sha": sha256_of(300000)}


def test_download_over_tls_exact_bytes(mpy, fault_tls, certs):
    r = mpy.run(DOWNLOAD, URL=fault_tls.url("/bytes/300000"), CA=certs.ca_der_path)
    assert r.value == {"status": 200, "sha": sha256_of(300000)}


@pytest.mark.parametrize("arch", [None, "xtensawin"])  # (xtensawin: the ESP32's, as a frozen build compiles it)
def test_every_module_compiles_with_mpy_cross(tmp_path, arch):
    assert compile_lib(tmp_path, arch) == []


def _frozen_by_manifest():
    """Evaluate manifest.py with recording stand-ins for the manifest functions."""
    frozen, includes = set(), []

    def package(name, files=None, base_path=".", opt=None):
        for f in (ROOT / base_path / name).rglob("*.py"):
            mod = str(f.relative_to(ROOT / base_path).with_suffix("")).replace("/", ".")
            frozen.add(mod[: -len(".__init__")] if mod.endswith(".__init__") else mod)

    def module(name, base_path=".", opt=None):
        frozen.add(name[:-3].replace("/", "."))

    exec((ROOT / "manifest.py").read_text(), {"package": package, "module": module,
                                              "include": includes.append, "require": lambda *a, **k: None})
    return frozen, includes


def _imports(modname, seen):
    """Every project module that modname imports, directly or not (stdlib/frozen ones are skipped)."""
    if modname in seen:
        return
    path = LIB / (modname.replace(".", "/") + ".py")
    if not path.exists():
        path = LIB / modname.replace(".", "/") / "__init__.py"
    if not path.exists():
        return
    seen.add(modname)
    pkg = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [base + "." + a.name for a in node.names]
        for n in names:
            _imports(n, seen)


def test_manifest_freezes_everything_download_manager_needs():
    frozen, includes = _frozen_by_manifest()
    needed = set()
    _imports("mpos.net.download_manager", needed)
    assert {"mpos.net.download_manager", "aiohttp", "mpos.task_manager"} <= needed
    assert needed - frozen == set()
    assert not [m for m in frozen if m.startswith(("tests", "tools", "testlib", "conftest"))]
    assert includes == ["$(PORT_DIR)/boards/manifest.py"]
