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


def proper_head():
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n" % wsfuzz.ACCEPT)


def _verdict(wire, ending="close", **kw):
    # the oracle on a proper handshake answer (for the key "k") followed by wire
    case = wsfuzz.Case("oracle", 0, ending=ending, head=proper_head(), **kw)
    return wsfuzz.expect(case, case.head_for("k") + wire, "k")


def test_the_oracle_lets_a_client_fail_bad_utf8_as_soon_as_no_text_can_continue_it():
    # "caf\xc3" can still become text; "\x28" after it can't: a client may fail there, or at the message's end
    F = wsfuzz.Frame
    wire = b"".join(F(*f).encode() for f in [(1, b"caf\xc3", False), (9, b"p"), (0, b"(", False), (9, b"q"),
                                             (0, b"!")])
    v = _verdict(wire)
    assert (v.main.end.kind, v.main.end.codes, v.main.pings) == ("fail", {1007}, [b"p", b"q"])
    assert [(o.end.codes, o.pings) for o in v.others] == [({1007}, [b"p"]), ({1007}, [b"p", b"q"])]


def test_the_oracle_reads_the_answer_after_an_interim_one():
    # A 100 Continue head, then frames (seed wsfuzz, an early version; seed 1351943f case 3668 a 105 by a bit flip):
    # the client waits for the real answer, which the frames never make; a timeout or the connection's end, not a
    # WSServerHandshakeError, ends the handshake. The oracle once took the 1xx for the answer.
    frames = wsfuzz.Frame(1, b"hi").encode() + wsfuzz.Frame(8, b"\x03\xe8").encode()
    for interim in (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 105 Switching Protocols\r\n\r\n"):
        assert wsfuzz.handshake_verdict(interim + frames, "k", [])[::2] == ("fail", None)
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + wsfuzz.Case("oracle", 0, head=proper_head()).head_for("k")
    assert wsfuzz.handshake_verdict(answer + frames, "k", [])[::2] == ("ok", len(answer))


def test_the_oracle_lets_a_message_the_heap_cannot_hold_be_refused():
    # a frame announcing 3 MB (under max_msg_size) that never comes: a stall, or 1009 at once
    v = _verdict(wsfuzz.Frame(2, b"", announce=3 << 20).encode(), ending="stall")
    assert v.main.end.kind == "stall" and [o.end.codes for o in v.others] == [{1009}]


def test_the_server_answers_our_close_after_a_stall_only_between_frames():
    # Seed 80fda265 case 892: the wire stalls one byte into a frame ("x"); the server once answered the client's
    # Close all the same, and the client read "x" and that Close as one masked frame (1002), where the oracle says
    # the stream stops at "x"
    case = wsfuzz.make_case("80fda265", 892)
    record = wsfuzz.Record("k")
    record.head = case.head_for("k") + case.wire
    assert case.wire.endswith(b"x") and case.ending == "stall"
    assert wsfuzz._stalled_inside_a_frame(case, record)
    record.head = record.head[:-1]  # the same stall after the last whole frame: the server's Close may follow
    assert not wsfuzz._stalled_inside_a_frame(case, record)
