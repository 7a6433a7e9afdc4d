"""Fuzzing the websocket client: every mutated handshake and frame sequence ends in exactly the messages RFC 6455
lets through, then a clean end.

tools/wsfuzz.py makes the cases (a handshake answer and a well-formed frame sequence, mutated at random from a
seed), serves them, and judges each result with an RFC 6455 reader of its own; tests/mpy/wsfuzzclient.py runs them
on MicroPython through aiohttp's API (`async for`, receive(timeout=), close()) in one long-lived process.

    .venv/bin/python -m pytest tests/test_wsfuzz.py                     # seed "wsfuzz", for about 30 s
    FUZZ_SEED=random FUZZ_SECONDS=600 ...                                # a fresh seed (printed with any failure)
    FUZZ_SEED=S FUZZ_CASE=I ...                                          # case I of seed S alone
    .venv/bin/python tools/wsfuzz.py S I                                 # its bytes and the oracle's verdict
"""
import os
import random
import time

from tools import wsfuzz

SEED = os.environ.get("FUZZ_SEED", "wsfuzz")
SECONDS = float(os.environ.get("FUZZ_SECONDS", "30"))
ONLY = os.environ.get("FUZZ_CASE")
MAX_DEFECTS = 10  # a run stops early once it has this many to show
RERUN = ".venv/bin/python -m pytest -q tests/test_wsfuzz.py"


def run_case(server, client, case):
    """-> (the oracle's verdict, the result MicroPython reported, what was wrong with it)"""
    ident, url, good_url = server.add(case)
    result = client.run(wsfuzz.job(case, url, good_url))
    record = server.record(ident)
    verdict = wsfuzz.expect(case, record.head, record.key)
    return verdict, result, wsfuzz.judge(case, verdict, result, record)


def _outcome(verdict, result):
    if result.get("handshake") != "ok":
        return "refused"
    return verdict.main.end.kind if verdict.main else "?"


def test_every_mutated_websocket_gives_exact_messages_then_a_clean_end(tmp_path):
    seed = "%08x" % random.getrandbits(32) if SEED == "random" else SEED
    indexes = [int(ONLY)] if ONLY else range(10 ** 9)
    end = time.monotonic() + SECONDS
    outcomes = {}
    defects = []
    with wsfuzz.WSFuzzServer() as server, wsfuzz.Client(tmp_path) as client:
        for i in indexes:
            if time.monotonic() > end or len(defects) >= MAX_DEFECTS:
                break
            case = wsfuzz.make_case(seed, i)
            verdict, result, problems = run_case(server, client, case)
            kind = _outcome(verdict, result)
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if problems:
                defects.append("%s\n  %s\n  client saw: %s\n  repro: FUZZ_SEED=%s FUZZ_CASE=%d %s" % (
                    "\n".join("- " + p for p in problems), wsfuzz.describe(case, verdict),
                    wsfuzz._short(result.get("messages") or [], 12), seed, i, RERUN))
    ran = sum(outcomes.values())
    assert not defects, "seed %s: %d of %d cases went wrong (outcomes %s):\n\n%s" % (
        seed, len(defects), ran, outcomes, "\n\n".join(defects))
    # the cases reach every end: refused handshakes, the server's Close, failures, TCP ends
    assert ONLY or all(outcomes.get(k, 0) > ran // 30 for k in ("refused", "close", "fail")), outcomes
