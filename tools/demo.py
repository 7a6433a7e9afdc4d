"""`make demo`: the main job, on the MicroPython unix port, with nothing but loopback.

Starts a local server, downloads an .mpk-sized file (4 MB) with a text progress bar and speed, through a
connection that the server drops halfway (the download resumes with a Range request), verifies the sha256
and says where the file went. `make download URL=... OUT=...` does the same for any URL.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import mpy  # noqa: E402
from tools.testservers import FaultServer, sha256_of  # noqa: E402

DEMO = """
import asyncio, sys, time
from mpos import DownloadManager

state = {"pct": 0, "speed": 0, "t0": time.ticks_ms()}

def bar():
    n = state["pct"] * 30 // 100
    sys.stdout.write("\\r[%s%s] %3d%%  %6.1f KB/s " % ("#" * n, "." * (30 - n), state["pct"], state["speed"] / 1024))

async def progress(pct):
    state["pct"] = pct
    bar()

async def speed(bps):
    state["speed"] = bps
    bar()

async def main():
    ok = await DownloadManager.download_url(URL, outfile=OUT, progress_callback=progress, speed_callback=speed,
                                            sha256=SHA, raise_errors=True)
    dt = time.ticks_diff(time.ticks_ms(), state["t0"]) / 1000
    sys.stdout.write("\\n")
    result(ok=ok, seconds=dt, sha=sha256_file(OUT))

asyncio.run(main())
"""


# A device-sized heap. On the unix port it also holds the library's bytecode (about 61 KB, which frozen firmware
# keeps in flash) and, for https, mbedTLS's buffers.
HEAP = "256k"


def run(url, out, sha):
    with tempfile.TemporaryDirectory() as work:
        lib = Path(work) / "lib"
        errors = mpy.compile_lib(lib)  # as frozen firmware runs it: bytecode, not source compiled in the heap
        if errors:
            sys.exit("\n".join(errors))
        proc, res = mpy.run(DEMO, work, lib=lib, heapsize=HEAP, echo=True, URL=url, OUT=out, SHA=sha)
    if proc.returncode or not res or res[-1]["ok"] is not True:
        sys.stderr.write(proc.stderr)
        sys.exit("download failed")
    return res[-1]


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.url:
        out = a.out or Path(a.url.split("?")[0].rstrip("/").split("/")[-1] or "download.bin").name
        out = str(Path(out).resolve())
        print("Downloading %s on MicroPython (%s)" % (a.url, mpy.micropython()))
        r = run(a.url, out, None)
        print("Done in %.1f s: %s (sha256 %s)" % (r["seconds"], out, r["sha"]))
        return
    size = 4 * 1024 * 1024
    with FaultServer() as srv:
        # the server resets the connection after 1.5 MB, once; the download resumes from there
        url = srv.url("/bytes/%d?drop=1572864&key=demo&rate=1500000" % size)  # Wi-Fi-like
        out = str(Path(tempfile.gettempdir()) / "demo-app.mpk")
        print("MicroPythonOS DownloadManager demo (MicroPython unix port, %s KB heap, library built with mpy-cross)" % HEAP[:-1])
        print("Server: %s  (drops the connection once, after 1.5 MB)" % srv.base)
        r = run(url, out, sha256_of(size))
        print("Connections used: %d (the second one resumed with Range: bytes=1572864-)" % srv.connections)
        print("Verified sha256 %s" % r["sha"])
        print("Saved %d bytes to %s in %.1f s" % (size, out, r["seconds"]))


if __name__ == "__main__":
    main(sys.argv[1:])
