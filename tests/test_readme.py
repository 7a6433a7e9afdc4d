"""Every Python example a user reads runs on MicroPython: those of the README's "Using it" section and all of
docs/usage.md, with URL, PATH, SHA, SERVER (the server's root) and WS_URL (a websocket echo server) filled in."""
import re
from pathlib import Path

import pytest

from tools.testservers import sha256_of

ROOT = Path(__file__).resolve().parent.parent


def examples(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


README = (ROOT / "README.md").read_text()
USING = README[README.index("## Using it"):]
USING = USING[:USING.index("\n## ")]  # up to the next section
README_EXAMPLES = examples(USING)
USAGE_EXAMPLES = examples((ROOT / "docs" / "usage.md").read_text())
EXAMPLES = README_EXAMPLES + USAGE_EXAMPLES
SIZE = 100000
# after the example: let tasks it created run to their end (the event loop is MicroPythonOS's own on a device)
SETTLE = """
import asyncio
from mpos import TaskManager
async def _settle():
    while any(not t.done() for t in TaskManager.task_list):
        await asyncio.sleep_ms(20)
asyncio.run(_settle())
result(done=True)
"""


def test_the_docs_have_their_examples():
    # the README: the three modes, options, errors, resume, the HTTP client, websockets; usage.md: priorities,
    # segments, a downloads screen, everyday extras, the HTTP client
    assert len(README_EXAMPLES) >= 6 and len(USAGE_EXAMPLES) >= 5, (len(README_EXAMPLES), len(USAGE_EXAMPLES))


@pytest.mark.parametrize("code", EXAMPLES, ids=[c.splitlines()[-1][:40] for c in EXAMPLES])
def test_example_runs(mpy, fault, files, ws_aiohttp, code):
    path = files / ("readme-%d.bin" % EXAMPLES.index(code))
    screen = "DownloadManager.downloads()" in code  # it shows downloads in flight: its body must take a while
    r = mpy.run(code + SETTLE,
                URL=fault.url("/bytes/%d%s" % (SIZE, "?rate=200000" if screen else "")), PATH=str(path),
                SHA=sha256_of(SIZE), SERVER=fault.url("/"), WS_URL=ws_aiohttp.url("/echo"))
    assert r.value == {"done": True}
    assert "Traceback" not in r.stdout + r.stderr
    if screen:
        assert re.search(r"/bytes/%d\S* (queued|connecting|downloading) \d+ " % SIZE, r.stdout), r.stdout
    if "PATH" in code and "fail=" not in code:
        assert sha256_file_of(path) == sha256_of(SIZE)


def sha256_file_of(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
