"""Instructions per MB of a download to a file, ours against micropython-lib's requests reading into one 1 KB buffer
(the floor for Python code), function by function: `make callgrind` (needs valgrind: apt-get install valgrind).
Then stream mode, where every chunk is a bytes object of its own: ours against requests doing the same
(r.raw.read(1024)) and against its readinto loop handing out slices of one buffer.

Unlike wall time on a shared machine, callgrind's counts repeat exactly. Each side runs twice under callgrind: once
doing everything but the big download (imports, a small warm-up download, the server's start) and once with it; the
difference is the big download's own cost. Kernel time (the recv and write system calls) is not counted: the floor
spends most of its wall time there, which is why the instruction ratio is far below the wall-time one."""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import mpy  # noqa: E402
from tools.testservers import FaultServer  # noqa: E402

SIZE = 4 * 1024 * 1024

# A download of SIZE bytes, or (BIG False) only what surrounds it: to a file, or (STREAM) to a chunk callback that
# does nothing
OURS = """
import asyncio
from mpos import DownloadManager
async def take(chunk):
    pass
def sink(path):
    return {"chunk_callback": take} if STREAM else {"outfile": path}
async def main():
    DownloadManager.session_idle_ms = 0
    assert await DownloadManager.download_url(BASE + "/bytes/1000", **sink(OUT + ".warm"))
    if BIG:
        assert await DownloadManager.download_url(BASE + "/bytes/%d" % SIZE, **sink(OUT))
asyncio.run(main())
"""

FLOOR = OURS.replace("    if BIG:\n", "    if False:\n") + """
import requests
buf = bytearray(1024)
view = memoryview(buf)
if BIG:
    r = requests.get(BASE + "/bytes/%d" % SIZE)
    got = 0
    with open(OUT, "wb") as f:
        while True:
            n = r.raw.readinto(buf)
            if not n:
                break
            f.write(view[:n])
            got += n
    r.close()
    assert got == SIZE
"""

# requests, each chunk a bytes object of its own (what stream mode must hand out) or a slice of one buffer
PEER_STREAM = OURS.replace("    if BIG:\n", "    if False:\n") + """
import requests
buf = bytearray(1024)
view = memoryview(buf)
def take(chunk):
    pass
if BIG:
    r = requests.get(BASE + "/bytes/%d" % SIZE)
    got = 0
    while True:
        if BYTES:
            chunk = r.raw.read(1024)
            n = len(chunk)
        else:
            n = r.raw.readinto(buf)
            chunk = view[:n]
        if not n:
            break
        take(chunk)
        got += n
    r.close()
    assert got == SIZE
"""


def profile(code, work, name):
    # -> {function: instructions} of one run under callgrind
    path = Path(work) / (name + ".py")
    path.write_text(code)
    out = Path(work) / ("callgrind." + name)
    env = dict(os.environ, MICROPYPATH="%s:.frozen" % mpy.LIB)
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % out, mpy.micropython(),
                           "-X", "heapsize=4M", str(path)], env=env, capture_output=True, text=True, cwd=work)
    if proc.returncode:
        raise SystemExit("%s failed:\n%s" % (name, proc.stderr[-2000:]))
    listing = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)], capture_output=True,
                             text=True).stdout
    counts = {}
    for line in listing.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S*:(\S+)", line)
        if m:
            name = re.sub(r"('\d+|@@.*)$", "", m.group(2))  # a recursion level or a symbol version is the same function
            counts[name] = counts.get(name, 0) + int(m.group(1).replace(",", ""))
    return counts


def per_mb(work, base, code):
    # -> {function: instructions per MB} of the big download alone
    values = dict(BASE=base, OUT=str(Path(work) / "out.bin"), SIZE=SIZE)
    prelude = "".join("%s = %r\n" % kv for kv in values.items())
    without = profile(prelude + "BIG = False\n" + code, work, "without")
    with_it = profile(prelude + "BIG = True\n" + code, work, "with")
    mb = SIZE / 2**20
    return {name: (with_it.get(name, 0) - without.get(name, 0)) / mb for name in set(without) | set(with_it)}


def main():
    if subprocess.run(["which", "valgrind"], capture_output=True).returncode:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as work, FaultServer() as srv:
        table("a %d MB download to a file, 1 KB chunks" % (SIZE // 2**20),
              [("ours", per_mb(work, srv.base, "STREAM = False\n" + OURS)),
               ("requests", per_mb(work, srv.base, "STREAM = False\n" + FLOOR))])
        print()
        table("stream mode, %d MB in 1 KB chunks, a callback that does nothing" % (SIZE // 2**20),
              [("ours", per_mb(work, srv.base, "STREAM = True\n" + OURS)),
               ("req. bytes", per_mb(work, srv.base, "STREAM = True\nBYTES = True\n" + PEER_STREAM)),
               ("req. slices", per_mb(work, srv.base, "STREAM = True\nBYTES = False\n" + PEER_STREAM))])


def table(title, sides):
    # The top functions of the first side, each side's count beside them
    print("instructions per MB, %s (%s)" % (title, mpy.micropython()))
    print("%-34s" % "" + "".join("%13s" % name for name, _ in sides))
    totals = [sum(counts.values()) for _, counts in sides]
    print("%-34s" % "total" + "".join("%12.2fM" % (t / 1e6) for t in totals)
          + "   (" + ", ".join("%.2fx" % (t / totals[0]) for t in totals[1:]) + " of ours)")
    first = sides[0][1]
    for name in sorted(first, key=lambda n: -first[n])[:15]:
        print("%-34s" % name[:34] + "".join("%12.0fK" % (counts.get(name, 0) / 1e3) for _, counts in sides))


if __name__ == "__main__":
    main()
