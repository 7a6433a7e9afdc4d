"""Instructions per MB of a download to a file, ours against micropython-lib's requests reading into one 1 KB buffer
(the floor for Python code), function by function: `make callgrind` (needs valgrind: apt-get install valgrind).

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

# A file download of SIZE bytes, or (BIG False) only what surrounds it
OURS = """
import asyncio
from mpos import DownloadManager
async def main():
    DownloadManager.session_idle_ms = 0
    assert await DownloadManager.download_url(BASE + "/bytes/1000", outfile=OUT + ".warm")
    if BIG:
        assert await DownloadManager.download_url(BASE + "/bytes/%d" % SIZE, outfile=OUT)
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
        ours = per_mb(work, srv.base, OURS)
        floor = per_mb(work, srv.base, FLOOR)
    total_ours, total_floor = sum(ours.values()), sum(floor.values())
    print("instructions per MB, a %d MB download to a file, 1 KB chunks (%s)" % (SIZE // 2**20, mpy.micropython()))
    print("%-34s %12s %12s" % ("", "ours", "requests"))
    print("%-34s %11.2fM %11.2fM   (%.2fx)" % ("total", total_ours / 1e6, total_floor / 1e6, total_floor / total_ours))
    for name in sorted(ours, key=lambda n: -ours[n])[:15]:
        print("%-34s %11.0fK %11.0fK" % (name[:34], ours[name] / 1e3, floor.get(name, 0) / 1e3))


if __name__ == "__main__":
    main()
