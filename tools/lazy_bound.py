"""How far lazy loading could lower the smallest frozen heap: `make heap-census` runs this after the census.

Plain downloads to a file run with every function of a copy of the library noting that it was called (from source,
on the pinned unix port): 3 MB in a large heap and in a small one, and a body that comes slowly enough for reads
to wait (which paths run depends on how the bytes arrive). A second copy then loses each function that was never
called and that no module names while it loads (as an attribute, in a `from ... import`, or by name in its own
module): what lazy loading could leave out at best, without the modules it would add. That copy is frozen into the
unix port as `make frozen` does, and both builds are measured the same way: the heap held once the download is
over (the least of three runs), and the smallest heap that downloads the file with the right bytes (1 KB steps,
then 256-byte steps below the first that was enough). Usage: lazy_bound.py MICROPYTHON_SOURCE MPY_CROSS FROZEN_MICROPYTHON"""
import ast
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import mpy  # noqa: E402
from tools.testservers import FaultServer, sha256_of  # noqa: E402

SIZE = 3 * 1024 * 1024
LIB = ROOT / "internal_filesystem" / "lib"
SMALL_HEAP = (ROOT / "tools" / "bench_programs" / "small_heap.py").read_text()  # make bench's program

# A try that fails (a read timeout on a loaded machine, a MemoryError in a small heap) goes through these even in a
# plain download: without them the copy's run dies on its first retry instead of measuring it
ALWAYS_KEPT = ("_retry_wait", "_failed", "log")

NOTE_CALLS = """
import json
import calls_noted
from mpos import DownloadManager
DownloadManager.download_url(URL, outfile=OUT)
print("@@RESULT " + json.dumps(sorted(calls_noted.CALLED)))
"""

HELD_AFTER = """
import gc
from mpos import DownloadManager
DownloadManager.download_url(URL, outfile=OUT)
gc.collect()
print('@@RESULT {"held": %d}' % gc.mem_alloc())
"""


def functions(tree, module):
    # -> [(qualified name, node, what holds it: a Module, ClassDef or function node)], nested functions included
    found = []

    def walk(node, names):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, names + [child.name])
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((".".join([module] + names + [child.name]), child, node))
                walk(child, names + [child.name])

    walk(tree, [])
    return found


def modules(lib):
    # -> [(path, module name, its syntax tree)] of every module of a library copy
    found = []
    for path in sorted(lib.rglob("*.py")):
        name = ".".join(path.relative_to(lib).with_suffix("").parts)
        found.append((path, name, ast.parse(path.read_text())))
    return found


def noting_copy(dst):
    # A copy whose every function first adds its name to calls_noted.CALLED
    shutil.copytree(LIB, dst)
    for path, module, tree in modules(dst):
        for name, node, _ in functions(tree, module):
            note = ast.parse("__import__('calls_noted').CALLED.add(%r)" % name).body[0]
            node.body.insert(0, note)
        path.write_text(ast.unparse(tree))
    (dst / "calls_noted.py").write_text("CALLED = set()\n")


def _class_body_names(cls):
    # -> the names the statements of a class body use outside its functions
    names = set()
    for statement in cls.body:
        if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.update(node.id for node in ast.walk(statement) if isinstance(node, ast.Name))
    return names


def stripped_copy(dst, called):
    # A copy without the functions never called that nothing names while the modules load; -> how many went
    shutil.copytree(LIB, dst)
    named = set()
    parsed = modules(dst)
    for _, _, tree in parsed:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                named.add(node.attr)
            elif isinstance(node, ast.ImportFrom):
                named.update(alias.name for alias in node.names)
    gone = 0
    for path, module, tree in parsed:
        if not any(name.startswith(module + ".") for name in called):
            continue  # a module the download never loads takes no heap either way
        own_names = set(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
        lines = path.read_text().splitlines(True)
        spans = []
        for name, node, holder in functions(tree, module):
            if name in called or node.name in ALWAYS_KEPT or node.name.startswith("__") \
                    or not isinstance(holder, (ast.Module, ast.ClassDef)):
                continue  # (a nested def runs with the function that holds it)
            if isinstance(holder, ast.Module) and (node.name in named or node.name in own_names):
                continue
            if isinstance(holder, ast.ClassDef) and node.name in _class_body_names(holder):
                continue  # (an alias made while the class is: `__next__ = send`)
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            spans.append((first, node.end_lineno, node.col_offset))
        for first, last, indent in sorted(spans, reverse=True):
            lines[first - 1 : last] = [" " * indent + "pass\n"]  # (a class body may hold nothing else)
        path.write_text("".join(lines))
        gone += len(spans)
    return gone


def build(source, mpy_cross, lib, out):
    # The unix port with `lib` frozen in, as make frozen builds it -> the interpreter
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.py"
    manifest.write_text('include("$(PORT_DIR)/variants/standard/manifest.py")\n'
                        'package("mpos", base_path="%s")\npackage("aiohttp", base_path="%s")\n' % (lib, lib))
    return mpy.build_unix(source, mpy_cross, manifest, out)


def downloads_in(binary, heap, work, url):
    out = work / "out.bin"
    mpy.no_download_at(out)
    proc, res = mpy.run(SMALL_HEAP, work, heapsize=str(heap), timeout=120, bare=True, binary=str(binary),
                        path=".frozen:%s" % mpy.TESTLIB, URL=url, OUT=str(out))
    return (proc.returncode == 0 and bool(res) and res[-1]["ok"] is True and out.exists()
            and hashlib.sha256(out.read_bytes()).hexdigest() == sha256_of(SIZE))


def smallest_heap(binary, work, url):
    # -> the smallest heap in bytes (1 KB steps up from 24 KB, then 256-byte steps in the KB below)
    kb = 24
    while not downloads_in(binary, kb * 1024, work, url):
        kb += 1
        if kb > 128:
            sys.exit("%s does not download 3 MB in 128 KB of heap" % binary)
    for heap in range((kb - 1) * 1024 + 256, kb * 1024, 256):
        if downloads_in(binary, heap, work, url):
            return heap
    return kb * 1024


def held_after(binary, work, url):
    # -> the least of three runs: a word left on the stack may keep a dead object alive (the collector can't tell)
    held = []
    for _ in range(3):
        mpy.no_download_at(work / "out.bin")
        proc, res = mpy.run(HELD_AFTER, work, heapsize="256k", timeout=120, bare=True, binary=str(binary),
                            path=".frozen:%s" % mpy.TESTLIB, URL=url, OUT=str(work / "out.bin"))
        if not res:
            # (MicroPython prints a traceback on stdout)
            sys.exit("the download failed:\n%s" % (proc.stdout + proc.stderr)[-2000:])
        held.append(res[-1]["held"])
    return min(held)


def main(argv):
    source, mpy_cross, frozen = argv[1], argv[2], Path(argv[3]).resolve()
    work = Path(tempfile.mkdtemp())
    noting, stripped = work / "noting", work / "stripped"
    noting_copy(noting)
    with FaultServer() as server:
        url = server.url("/bytes/%d" % SIZE)
        called = set()
        # (one at 300 KB/s, a second: its reads wait, as the measured download's may on a busy machine; one in pieces
        # of a few bytes: body bytes come with the head and reads fall short, as they may for the measured download)
        for noted_url, heap in ((url, "4M"), (url, "256k"), (server.url("/bytes/300000?rate=300000"), "4M"),
                                (server.url("/bytes/30000?trickle=1"), "4M")):
            mpy.no_download_at(work / "out.bin")
            proc, res = mpy.run(NOTE_CALLS, work, lib=noting, heapsize=heap, timeout=120, bare=True, URL=noted_url,
                                OUT=str(work / "out.bin"))
            if not res:
                sys.exit("the noted download failed:\n%s" % (proc.stdout + proc.stderr)[-2000:])
            called.update(res[-1])
        gone = stripped_copy(stripped, called)
        bound = build(source, mpy_cross, stripped, ROOT / "build" / "lazy-bound")
        print("The bound of lazy loading: %d functions that a plain download never calls, in the modules it loads, left "
              "out of a copy of the library (frozen, 64-bit)" % gone)
        for label, binary in (("the library", frozen), ("without them", bound)):
            print("  %-14s held once the download is over %6d bytes, smallest heap %6d bytes"
                  % (label, held_after(binary, work, url), smallest_heap(binary, work, url)))
    shutil.rmtree(work)


if __name__ == "__main__":
    main(sys.argv)
