"""The harness itself: MicroPython runs the code, failures surface verbatim, the firmware side builds."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, MicroPythonFailed, compile_lib
from tools.mpy import LIB, library_files, mpy_cross
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


def test_every_module_is_python_that_cpython_tools_can_read():
    # A comment in the first two lines naming "...coding: x" is an encoding declaration to CPython (PEP 263), which
    # then refuses the file: MicroPython ignores it, linters and editors do not.
    refused = []
    for name in library_files():
        try:
            compile((LIB / name).read_bytes(), name, "exec", dont_inherit=True)
        except SyntaxError as e:
            refused.append("%s: %s" % (name, e.msg))
    assert refused == []


def test_the_benchmarks_micropython_programs_compile(tmp_path):
    programs = sorted((ROOT / "tools" / "bench_programs").glob("*.py"))
    assert len(programs) >= 10
    for program in programs:
        p = subprocess.run([mpy_cross(), "-o", str(tmp_path / "x.mpy"), str(program)], capture_output=True, text=True)
        assert p.returncode == 0, (program.name, p.stderr)


def micropython_source():
    """MicroPython's source tree, where `make frozen` finds it (MICROPYTHON_SRC, else the shared tarball, unpacked
    once into build/)."""
    make = subprocess.run(["make", "-s", "--no-print-directory", "micropython-source"], cwd=ROOT,
                          capture_output=True, text=True)
    assert make.returncode == 0, make.stdout + make.stderr
    return Path(make.stdout.split()[-1])


# port -> (its top manifest here, the port's folder, the board's, mpy-cross flags), as the port's build passes them
PORTS = {
    "unix": ("manifests/unix.py", "ports/unix", "", ""),
    "esp32": ("manifests/esp32.py", "ports/esp32", "ports/esp32/boards/ESP32_GENERIC", "-march=xtensawin"),
}


def frozen_by(port, build):
    """Run MicroPython's own tools/makemanifest.py on the port's top manifest, as the port's build does (minus
    compiling the C it writes): -> the files it froze, in order, as named in the firmware."""
    manifest, port_dir, board_dir, flags = PORTS[port]
    src = micropython_source()
    # The firmware's qstrs come from compiling its C sources; the freezer needs only these two settings from that
    # header (and then puts every name the modules use into the frozen pool).
    (build / "genhdr").mkdir(parents=True)
    (build / "genhdr" / "qstrdefs.preprocessed.h").write_text("QCFG(BYTES_IN_LEN, (1))\nQCFG(BYTES_IN_HASH, (1))\n")
    out = build / "frozen_content.c"
    variables = {"MPY_DIR": src, "MPY_LIB_DIR": src / "lib" / "micropython-lib", "PORT_DIR": src / port_dir,
                 "BOARD_DIR": src / board_dir if board_dir else ""}
    cmd = [sys.executable, str(src / "tools" / "makemanifest.py"), "-o", str(out), "-b", str(build),
           "--mpy-cross-flags=" + flags, str(ROOT / manifest)]
    for name, value in variables.items():
        cmd[-1:-1] = ["-v", "%s=%s" % (name, value)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MICROPY_MPYCROSS=mpy_cross()))
    assert p.returncode == 0, p.stdout + p.stderr
    names = out.read_text().split("const char mp_frozen_names[] = {")[1].split("};")[0]
    return re.findall(r'^\s*"(.+)\\0"$', names, re.M)


@pytest.mark.parametrize("port", PORTS)
def test_the_manifest_freezes_the_library_once_on_top_of_the_ports_own_set(port, tmp_path):
    frozen = frozen_by(port, tmp_path)
    assert len(frozen) == len(set(frozen)), frozen  # nothing frozen twice
    assert sorted(f for f in frozen if f.startswith(("mpos/", "aiohttp/"))) == library_files()
    assert "asyncio/__init__.py" in frozen  # the port's own set stays (the library needs asyncio)
    assert not [f for f in frozen if f.startswith(("tests/", "tools/", "testlib", "conftest"))]
