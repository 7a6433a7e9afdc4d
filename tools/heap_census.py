"""What the frozen library holds in the heap, by kind of object: `make heap-census`.

MicroPython's own heap dump (micropython.mem_info(1)) marks each block with a letter, and knows a handful of types.
This builds the unix port once more (build/census, the library frozen in as `make frozen` does) from a copy of
MicroPython's source whose py/gc.c also lists every object with its type's name and its size in blocks, then runs a
3 MB download to a file with the code frozen and reports, at the first read of the response's head (where the
smallest heap runs out), half way through the download and once it is over, how many objects of each kind the heap
holds and what they take. Objects whose first word is not a type (dictionary tables, instance
attribute tables, buffers, coroutine frames) are summed as "no type"; the tables of modules and classes among them
are estimated from their sizes (a table holds at least as many 16-byte slots as entries, growing through 17, 23,
29, 37 ... slots: py/map.c). Usage: heap_census.py MICROPYTHON_SOURCE MPY_CROSS"""
import hashlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import mpy  # noqa: E402
from tools.testservers import FaultServer, sha256_of  # noqa: E402

SIZE = 3 * 1024 * 1024

# Added to py/gc.c: called at the end of gc_dump_alloc_table, one line per object
LISTING = r"""
static void census_list_objects(const mp_print_t *print) {
    mp_print_str(print, "@@OBJECTS\n");
    for (mp_state_mem_area_t *area = &MP_STATE_MEM(area); area != NULL; area = NEXT_AREA(area)) {
        size_t blocks = area->gc_alloc_table_byte_len * BLOCKS_PER_ATB;
        uintptr_t heap_start = (uintptr_t)area->gc_pool_start, heap_end = (uintptr_t)area->gc_pool_end;
        uintptr_t static_type = (uintptr_t)&mp_type_type;
        for (size_t block = 0; block < blocks; block++) {
            if (ATB_GET_KIND(area, block) != AT_HEAD) {
                continue;
            }
            size_t length = 1;
            while (block + length < blocks && ATB_GET_KIND(area, block + length) == AT_TAIL) {
                length++;
            }
            // A first word that points at a type (in the heap: a class; near mp_type_type: a built-in one) names it
            uintptr_t first = *(uintptr_t *)(area->gc_pool_start + block * BYTES_PER_BLOCK);
            int in_heap = first >= heap_start && first + sizeof(mp_obj_type_t) <= heap_end;
            int built_in = first + 0x100000 >= static_type && first <= static_type + 0x100000;
            const char *name = "-";
            if ((first & (sizeof(mp_uint_t) - 1)) == 0 && (in_heap || built_in)
                && ((const mp_obj_base_t *)first)->type == &mp_type_type) {
                name = qstr_str(((const mp_obj_type_t *)first)->name);
            }
            mp_printf(print, "@@OBJ %s %u\n", name, (unsigned)(length * BYTES_PER_BLOCK));
        }
    }
}
"""

PROGRAM = """
import gc, sys, micropython
gc.collect()
start = gc.mem_alloc()
import asyncio
gc.collect()
print("@@BASE", start, gc.mem_alloc() - start)
from mpos import DownloadManager
SLOTS = (0, 2, 4, 6, 8, 10, 12, 17, 23, 29, 37, 47, 59, 73, 97, 127, 167, 223, 293)
def table_bytes(space):
    for slots in SLOTS:
        if slots >= len(space):
            return (slots * 16 + 31) // 32 * 32
    return len(space) * 16
def tables():
    # -> bytes the tables of every module's and class's dictionary take, from their sizes (see the docstring)
    total = 0
    for module in sys.modules.values():
        total += table_bytes(module.__dict__)
        for value in module.__dict__.values():
            if type(value) is type and getattr(value, "__module__", None) == module.__name__:
                total += table_bytes(value.__dict__)
    return total
def census(when):
    # (its own garbage collected first: the dump counts what is alive)
    print("@@WHEN", when, tables())
    gc.collect()
    micropython.mem_info(1)
said = []
import aiohttp.connection
fill = aiohttp.connection.Connection.fill
def first_fill(conn):
    # the first read of the response's head: the request's chain of coroutines is at its deepest
    if not said:
        said.append(0)
        census("at the first read of the response head")
    return (yield from fill(conn))
aiohttp.connection.Connection.fill = first_fill
def progress(percent):
    if percent >= 50 and len(said) == 1:
        said.append(percent)
        census("half way through a 3 MB download to a file")
ok = DownloadManager.download_url(URL, outfile=OUT, progress_callback=progress)
census("once it is over")
print("@@OK", ok)
"""

KINDS = (  # (label, type names)
    ("functions (def: bytecode function objects)", ("function",)),
    ("async def functions, and coroutines running", ("generator",)),
    ("classes (type objects)", ("type",)),
    ("dict objects (of modules, classes, instances)", ("dict",)),
    ("modules", ("module",)),
)


def build(source, mpy_cross):
    copy = ROOT / "build" / "census-src"
    if not (copy / "py" / "gc.c").exists():
        shutil.copytree(source, copy, symlinks=True)
    gc_c = copy / "py" / "gc.c"
    text = gc_c.read_text()
    if "census_list_objects" not in text:
        head = "void gc_dump_alloc_table(const mp_print_t *print) {"
        start = text.index(head)
        end = text.index("\n}\n", start)
        text = text[:start] + LISTING + text[start:end] + "\n    census_list_objects(print);" + text[end:]
        gc_c.write_text(text)
    return mpy.build_unix(copy, mpy_cross, ROOT / "manifests" / "unix.py", ROOT / "build" / "census")


def main(argv):
    source, mpy_cross = argv[1], argv[2]
    binary = build(source, mpy_cross)
    work = Path(tempfile.mkdtemp())
    with FaultServer() as server:
        proc, _ = mpy.run(PROGRAM, work, heapsize="256k", timeout=120, bare=True, binary=str(binary),
                          path=".frozen:%s" % mpy.TESTLIB, URL=server.url("/bytes/%d" % SIZE),
                          OUT=str(work / "out.bin"))
    out = work / "out.bin"
    if "@@OK True" not in proc.stdout or hashlib.sha256(out.read_bytes()).hexdigest() != sha256_of(SIZE):
        sys.exit("the census download failed:\n%s\n%s" % (proc.stdout[-2000:], proc.stderr[-2000:]))
    print("The frozen library's heap, by kind of object (unix port, 64-bit: 32-byte blocks)")
    start, asyncio = re.search(r"^@@BASE (\d+) (\d+)$", proc.stdout, re.M).groups()
    print("not the library's: %s bytes before any import (the port, this program), %s more for asyncio"
          % (start, asyncio))
    for section in proc.stdout.split("@@WHEN ")[1:]:
        when, tables = section.split("\n", 1)[0].rsplit(" ", 1)
        objects = {}
        for name, size in re.findall(r"^@@OBJ (\S+) (\d+)$", section, re.M):
            count, total = objects.get(name, (0, 0))
            objects[name] = (count + 1, total + int(size))
        used = sum(total for _, total in objects.values())
        print("\n%s: %d bytes in %d objects" % (when, used, sum(count for count, _ in objects.values())))
        for label, names in KINDS:
            count = sum(objects.get(name, (0, 0))[0] for name in names)
            total = sum(objects.get(name, (0, 0))[1] for name in names)
            print("  %-52s %4d %7d bytes" % (label, count, total))
        count, total = objects.get("-", (0, 0))
        print("  %-52s %4d %7d bytes" % ("no type (tables, buffers, frames)", count, total))
        print("  %-52s %4s %7d bytes" % ("  of which the tables of modules' and classes' dicts", "", int(tables)))
        named = set(name for _, names in KINDS for name in names) | {"-"}
        rest = sorted(((total, count, name) for name, (count, total) in objects.items() if name not in named),
                      reverse=True)
        print("  %-52s %4d %7d bytes (%s)" % ("everything else", sum(r[1] for r in rest), sum(r[0] for r in rest),
                                                 ", ".join("%s %d" % (r[2], r[0]) for r in rest[:6])))


if __name__ == "__main__":
    main(sys.argv)
