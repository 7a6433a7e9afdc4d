"""Random interleavings of public API calls in one MicroPython process (tests/mpy/apiseq.py).

From a seed, a plan: two to five actors on one event loop, each doing random steps (downloads in the three modes
with random documented keywords, several to the same outfile; cancels after some loop turns or from a callback;
close_session, post_url, downloads(), is_session_active(), tunables changed between steps; TaskManager tasks; an
aiohttp request or a websocket beside) against FaultServer, with faults injected per request. At the end: every
outfile is its old bytes or a download's exact bytes, a success had the exact bytes, no empty or foreign .part,
nothing listed, no slot, task, fd or lock held, the session closed once idle, no hang, and one log line per failure
at most.

    make test                                   # the fixed seeds, a few seconds each
    FUZZ_SEED=random FUZZ_SECONDS=600 ...       # fresh seeds (printed with any failure), for 10 minutes
    FUZZ_SEED=S ...                             # seed S alone
"""
import os
import random
import time

import pytest

from tools.testservers import payload, text_payload

SEED = os.environ.get("FUZZ_SEED")
SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))
FIXED = ["seq%d" % i for i in range(12)]
SEEDS = [SEED] if SEED else FIXED  # FUZZ_SEED=random: fresh ones for FUZZ_SECONDS
RERUN = ".venv/bin/python -m pytest -q tests/test_api_sequences.py"
HANG_S = 40  # a sequence that has not ended by then hangs

SIZES = [700, 3000, 20000, 45000, 70000, 120000]  # bytes of the resources a sequence picks from
OUTFILES = ["a.bin", "b.bin", "c.bin"]

SNIPPET = """
import apiseq
seq = apiseq.run(PLAN)
result(log=seq.log, problems=seq.problems, failures=seq.failures + seq.stops, calls=seq.calls)
"""


def resources(rnd):
    # three resources of the sequence: (name of its truth file, path on the server, size, payload seed or "text")
    made = []
    for n in rnd.sample(SIZES, 3):
        tls = "tls:" if rnd.random() < 0.25 else ""  # (served by the TLS server: see make_plan)
        if rnd.random() < 0.2:  # compressible, for gzip
            made.append(("t%d.res" % n, tls + "/bytes/%d?text=1" % n, n, "text"))
        else:
            s = rnd.randrange(3)
            made.append(("r%d_%d.res" % (n, s), tls + "/bytes/%d?seed=%d" % (n, s), n, s))
    return made


def body(resource):
    # the bytes the server sends for it (decoded)
    name, path, n, seed = resource
    return text_payload(n)[:n] if seed == "text" else payload(n, seed)


def sha(resource):
    import hashlib

    return hashlib.sha256(body(resource)).hexdigest()


def fault(rnd, key, n, text):
    # -> (query, recoverable: a download with the default tries gets the bytes)
    k = rnd.randrange(1, n)
    kinds = [("", True), ("drop=%d&key=%s&times=1" % (k, key), True), ("truncate=%d&key=%s&times=1" % (k, key), True),
             ("stall=%d&stall_s=1&key=%s&times=1" % (k, key), True), ("fail=503&key=%s&times=1" % key, True),
             ("trickle=1", True), ("chunked=1", True), ("fail=404", False), ("truncate=%d&norange=1" % k, False),
             ("norange=1", True), ("rate=200000", True)]
    if text:
        kinds.append(("gzip=1", True))
    query, ok = rnd.choice(kinds)
    return query, ok


def download_step(rnd, i, seq, res):
    resource = rnd.choice(res)
    name, path, n, text = resource
    text = text == "text"
    mode = rnd.choice(["file", "file", "memory", "stream"])
    key = "%s_%d" % (seq, i)
    query, recoverable = fault(rnd, key, n, text)
    tls = path[:4] if path.startswith("tls:") else ""
    url = path[len(tls):] + ("&" + query if query else "")
    if rnd.random() < 0.1:
        url = "/chain/2" + url
    url = tls + url
    step = {"op": "dl", "id": i, "res": name, "url": url, "mode": mode, "kw": {}, "spawn": rnd.random() < 0.6}
    kw = step["kw"]
    must_fail = None if recoverable else "fault " + query
    expect_ok = recoverable
    if mode == "file":
        step["outfile"] = rnd.choice(OUTFILES)
        if rnd.random() < 0.3:
            step["recipe"] = True
        elif rnd.random() < 0.3:
            kw["segments"] = rnd.randint(2, 4)
    if rnd.random() < 0.15 and not step.get("recipe"):
        first = rnd.randrange(n)
        last = rnd.choice([None, min(n - 1, first + rnd.randrange(1, 5000))])
        step["headers"] = {"Range": "bytes=%d-%s" % (first, "" if last is None else last)}
        if query.startswith("gzip"):
            expect_ok = False  # (a coded body cut after its range: decisions.md)
    if rnd.random() < 0.2:
        step["headers"] = dict(step.get("headers") or {}, **{"X-App": "seq"})
    if rnd.random() < 0.3:
        kw["total_size"] = rnd.choice([n, n // 2, 2 * n])
    if rnd.random() < 0.4:
        step["progress"] = True
        r = rnd.random()
        if rnd.random() < 0.2:
            other = rnd.choice(res)
            step["nested"] = [other[1], sha(other)]
            step["async_cb"] = True
        if r < 0.15:
            step["progress_raise"] = rnd.randrange(0, 101)
        elif r < 0.3:
            step["progress_cancel"] = rnd.randrange(0, 100)
    if mode == "stream" and rnd.random() < 0.15:
        step["chunk_raise"] = rnd.randrange(0, 8)
    if rnd.random() < 0.3 or step.get("nested"):
        step["async_cb"] = True
    if rnd.random() < 0.2:
        right = sha(resource)
        kw["sha256"] = right if rnd.random() < 0.7 else "0" * 64
        if step.get("headers", {}).get("Range") or kw["sha256"] != right:
            must_fail = must_fail or "wrong sha256"
    if rnd.random() < 0.15:
        kw["max_size"] = rnd.choice([n, n - 1, n // 2, 10 * n])
        if kw["max_size"] < n and not step.get("headers", {}).get("Range"):
            must_fail = must_fail or "max_size"
        if kw["max_size"] < n:
            expect_ok = False  # (a range may be larger too)
    if rnd.random() < 0.2:
        kw["raise_errors"] = True
    if rnd.random() < 0.2:
        kw["tries"] = rnd.randint(1, 4)
        expect_ok = expect_ok and kw["tries"] >= 3
    if rnd.random() < 0.2:
        kw["timeout"] = rnd.choice([0.3, 1, 5])
    if rnd.random() < 0.2:
        kw["priority"] = rnd.randint(-2, 5)
    if rnd.random() < 0.1:
        kw["chunk_size"] = rnd.choice([64, 256, 1000, 4096])
    if rnd.random() < 0.05:
        kw["deadline"] = rnd.choice([0.05, 0.5, 3])
        expect_ok = False
    if rnd.random() < 0.05:
        kw["redact_url"] = True
    if rnd.random() < 0.1:
        step["wait_for"] = rnd.choice([0.001, 0.02, 0.2, 5])
        expect_ok = expect_ok and step["wait_for"] >= 5
    if must_fail or step.get("progress_raise") is not None or step.get("chunk_raise") is not None:
        expect_ok = False
    if step.get("progress_cancel") is not None:
        expect_ok = False
    if must_fail and not step.get("headers"):
        step["must_fail"] = must_fail
    if expect_ok and not step.get("recipe"):
        step["expect_ok"] = True
    return step


def make_plan(seed, server, ws, tls_server=None):
    rnd = random.Random(seed)
    res = resources(rnd)
    plan = {"seed": seed, "hang_s": HANG_S, "idle_ms": rnd.choice([0, 5, 50, 200]),
            "outfiles": {out: (b"old %s\n" % out.encode()) * rnd.randrange(1, 40) if rnd.random() < 0.7 else None
                         for out in OUTFILES},
            "resources": [r[0] for r in res], "actors": []}
    i = 0
    for _ in range(rnd.randint(2, 5)):
        steps = []
        for _ in range(rnd.randint(3, 12)):
            i += 1
            r = rnd.random()
            if r < 0.55:
                steps.append(download_step(rnd, i, seed, res))
            elif r < 0.68:
                turns = rnd.choice([0, 1, 2, 3, 5, 8, 13, 40])
                steps.append({"op": "cancel", "turns": turns, "pick": rnd.randrange(100)})
            elif r < 0.72:
                steps.append({"op": "close"})
            elif r < 0.76:
                steps.append({"op": "post", "url": "/echo", "data": b"installed %d" % i})
            elif r < 0.80:
                steps.append({"op": rnd.choice(["list", "active"])})
            elif r < 0.85:
                name = rnd.choice(["max_connections", "session_idle_ms"])
                value = rnd.choice([0, 1, 1, 2, 4]) if name == "max_connections" else rnd.choice([0, 5, 50, 200])
                steps.append({"op": "tune", "name": name, "value": value})
            elif r < 0.89:
                resource = rnd.choice(res)
                step = {"op": "tm", "turns": rnd.randrange(20), "cancel": rnd.choice([None, rnd.randrange(30)])}
                if rnd.random() < 0.5:
                    step.update(url=resource[1], sha=sha(resource))
                steps.append(step)
            elif r < 0.93:
                resource = rnd.choice(res)
                steps.append({"op": "http", "url": resource[1], "sha": sha(resource)})
            elif r < 0.95:
                steps.append({"op": rnd.choice(["ws", "wsheld", "wsheld"]), "url": ws, "n": i})
            elif r < 0.97:
                steps.append({"op": "resume", "outfile": rnd.choice(OUTFILES)})
            else:
                steps.append({"op": "sleep", "turns": rnd.randrange(30), "ms": rnd.choice([0, 0, 5, 30])})
        plan["actors"].append(steps)
    def address(path):
        return tls_server + path[4:] if path.startswith("tls:") else server + path

    for steps in plan["actors"]:  # the servers' addresses last: a plan reads the same whatever ports they got
        for step in steps:
            if "url" in step and step["op"] not in ("ws", "wsheld"):
                step["url"] = address(step["url"])
            if step.get("nested"):
                step["nested"][0] = address(step["nested"][0])
    return plan, res


def run_sequence(mpy, fault, fault_tls, ws, tmp_path, seed):
    """-> [] or the problems of the sequence of this seed, with its step log"""
    plan, res = make_plan(seed, fault.url(""), ws, fault_tls.url(""))
    for resource in res:
        (tmp_path / resource[0]).write_bytes(body(resource))
    try:
        r = mpy.run(SNIPPET, PLAN=plan, timeout=HANG_S + 20, heapsize="8M")
    except AssertionError as e:  # (it crashed or hung: MicroPythonFailed)
        return ["seed %s: %s\n  plan: %r\n  repro: FUZZ_SEED=%s %s" % (seed, e, plan["actors"], seed, RERUN)]
    v = r.value
    problems = list(v["problems"])
    failures = v["failures"]
    logged = [line for line in r.stderr.splitlines() if line.strip()]
    if len(logged) > failures:
        problems.append("%d lines logged for %d failures:\n    %s" % (len(logged), failures, "\n    ".join(logged)))
    for url, calls in v["calls"].items():  # one line per failed call at most
        lines = [line for line in logged if (url + " ") in line]
        if len(lines) > calls:
            problems.append("%d lines logged about %d calls of %s:\n    %s" % (len(lines), calls, url,
                                                                             "\n    ".join(lines)))
    if problems:
        return ["seed %s: %s\n  log:\n    %s\n  plan: %r\n  repro: FUZZ_SEED=%s %s" % (
            seed, "\n  ".join(problems), "\n    ".join(v["log"]), plan["actors"], seed, RERUN)]
    return []


@pytest.mark.parametrize("seed", SEEDS)
def test_random_api_sequences_keep_every_invariant(mpy, fault, fault_tls, ws_aiohttp, tmp_path, seed):
    ws = ws_aiohttp.url("/echo")
    if seed != "random":
        defects = run_sequence(mpy, fault, fault_tls, ws, tmp_path, seed)
        assert not defects, defects[0]
        return
    defects = []
    end = time.monotonic() + SECONDS
    ran = 0
    while time.monotonic() < end and len(defects) < 5:
        fault.reset()
        fault_tls.reset()
        defects += run_sequence(mpy, fault, fault_tls, ws, tmp_path, "%08x" % random.getrandbits(32))
        ran += 1
    assert not defects, "%d of %d sequences went wrong:\n\n%s" % (len(defects), ran, "\n\n".join(defects))


def test_the_fixed_seeds_take_every_kind_of_step():
    steps = [step for seed in FIXED for steps in make_plan(seed, "http://h", "ws://h", "https://h")[0]["actors"] for step in steps]
    kinds = {step["op"] for step in steps} | {step["mode"] for step in steps if step["op"] == "dl"}
    assert kinds >= {"dl", "cancel", "close", "post", "list", "active", "tune", "tm", "http", "ws", "wsheld", "resume",
                     "sleep", "file", "memory", "stream"}, kinds
    assert any(step["url"].startswith("https:") for step in steps if step["op"] == "dl")
    downloads = [step for step in steps if step["op"] == "dl"]
    for what in ("segments", "sha256", "max_size", "raise_errors", "tries", "timeout", "priority", "total_size"):
        assert any(what in step["kw"] for step in downloads), what
    for what in ("recipe", "headers", "progress_raise", "progress_cancel", "chunk_raise", "nested", "wait_for"):
        assert any(what in step for step in downloads), what
    outfiles = [step["outfile"] for step in downloads if step["mode"] == "file" and step["spawn"]]
    assert len(outfiles) > len(set(outfiles))  # several at once to the same outfile
