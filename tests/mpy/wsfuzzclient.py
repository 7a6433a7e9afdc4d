# The MicroPython side of the websocket fuzzer (tools/wsfuzz.py): one case per JSON line on stdin, one result() line
# per case. Each case runs on a fresh session: ws_connect, every message until the end (`async for`, or
# receive(timeout=) alone, echoing beside a sending task, or beside a sending task and a closing one), close(), then
# a clean websocket on the same session; then the session is closed and the process's file descriptors counted.
import asyncio
import json
import sys
from time import ticks_diff, ticks_ms

import aiohttp
from aiohttp import WSMsgType
from testlib import described, fd_count, result, sha256, traceback_of

_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
_MOST = 200  # messages a case may deliver (the longest well-formed sequence has under 100)


def _seen(msg, notes):
    # a message as the oracle writes it: [type, bytes, sha256 prefix] for data, [type, hex] for pings and pongs,
    # [8, code, reason], [258, error class, its code, whether it is a ClientError], [256], [257]
    t = msg.type
    if t == WSMsgType.TEXT or t == WSMsgType.BINARY:
        want = str if t == WSMsgType.TEXT else bytes
        if not isinstance(msg.data, want):
            notes.append("message of type %d with data of %s" % (t, type(msg.data).__name__))
            return [t, None, None]
        raw = msg.data.encode() if t == WSMsgType.TEXT else msg.data
        return [t, len(raw), sha256(raw)[:16], raw[:16].hex()]
    if t == WSMsgType.PING or t == WSMsgType.PONG:
        return [t, bytes(msg.data).hex()]
    if t == WSMsgType.CLOSE:
        return [t, msg.data, msg.extra]
    if t == WSMsgType.ERROR:
        e = msg.data
        if not isinstance(e, (aiohttp.ClientError, aiohttp.WebSocketError)):
            notes.append("an ERROR message carries a foreign %s" % described(e))
        return [t, type(e).__name__, getattr(e, "code", None), isinstance(e, aiohttp.ClientError), str(e)[:80]]
    return [t]


async def ws_case(job, session, out):
    kw = {"autoping": job["autoping"], "autoclose": job["autoclose"],
          "timeout": aiohttp.ClientWSTimeout(ws_close=job["close_timeout"])}
    if job["api"] == "iter":
        kw["receive_timeout"] = job["read_timeout"]
    if job["protocols"]:
        kw["protocols"] = tuple(job["protocols"])
    if job["heartbeat"]:
        kw["heartbeat"] = job["heartbeat"]
    if job["max"] is not None:
        kw["max_msg_size"] = job["max"]
    try:
        ws = await session.ws_connect(job["url"], **kw)
    except aiohttp.ClientError as e:
        out.update(handshake="refused", error=described(e), error_type=type(e).__name__, client_error=True)
        return
    out["handshake"] = "ok"
    seen, notes = out["messages"], out["notes"]
    end = "stop"
    chatter = closing = None
    try:
        if job["api"] == "iter":
            async for msg in ws:
                seen.append(_seen(msg, notes))
                if len(seen) > _MOST:
                    end = "too many"
                    break
        else:
            chatter = asyncio.create_task(_chatter(ws, notes)) if job["api"] in ("echo", "closer") else None
            while len(seen) <= _MOST:
                if closing is None and job["api"] == "closer" and len(seen) >= job["close_after"]:
                    closing = asyncio.create_task(ws.close())  # it runs once this task's receive() waits
                msg = await ws.receive(timeout=job["read_timeout"])
                seen.append(_seen(msg, notes))
                if msg.type in _ENDS:
                    break
                if job["api"] == "echo":
                    await _echo(ws, msg, notes)
            else:
                end = "too many"
    except asyncio.TimeoutError:
        end = "timeout"
    if closing is not None:
        out["closer"] = await closing
    exc = ws.exception()
    out.update(end=end, close_code=ws.close_code, exception=described(exc) if exc else None)
    if exc is not None and not isinstance(exc, (aiohttp.ClientError, aiohttp.WebSocketError, asyncio.TimeoutError)):
        notes.append("exception() is a foreign %s" % described(exc))
    if job["api"] != "iter" and end != "timeout":
        out["after"] = (await ws.receive(timeout=job["read_timeout"])).type
    closed = await ws.close()
    if chatter is not None:
        await chatter
    if ws.close_code is None or not ws.closed:
        notes.append("after close(): closed %r, close_code %r" % (ws.closed, ws.close_code))
    out["close_returned"] = closed


async def _chatter(ws, notes):
    # "echo", "closer": a second task sends text messages while the first reads, until the websocket closes
    k = 0
    try:
        while not ws.closed:
            await ws.send_str("\x00chat %d" % k)
            k += 1
            await asyncio.sleep_ms(3)
    except aiohttp.ClientConnectionResetError:
        pass  # the websocket closed while the send waited its turn
    except Exception as e:
        notes.append("chatter's send_str: " + described(e))


async def _echo(ws, msg, notes):
    try:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    except aiohttp.ClientConnectionResetError:
        pass  # the server reset the connection
    except Exception as e:
        notes.append("echo: " + described(e))


async def ws_next(job, session):
    try:
        async with session.ws_connect(job["good_url"], timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
            await ws.send_str("next")
            got = await ws.receive_str(timeout=2)
            end = await ws.receive(timeout=2)
    except Exception as e:
        return described(e)
    return "ok" if got == "next" and end.type == WSMsgType.CLOSE and end.data == 1000 else "got %r, %r" % (got, end)


async def run_case(job, out):
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=job["answer_timeout"]))
    try:
        t0 = ticks_ms()
        await ws_case(job, session, out)
        out["ms"] = ticks_diff(ticks_ms(), t0)
        out["next"] = await ws_next(job, session)
    finally:
        await session.close()


async def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        job = json.loads(line)
        out = {"i": job["i"], "outcome": "ok", "messages": [], "notes": [], "end": None, "close_code": None,
               "after": None, "next": None, "ms": None, "client_error": False, "error_type": None, "error": None,
               "trace": None}
        base = fd_count()
        t0 = ticks_ms()
        try:
            await asyncio.wait_for(run_case(job, out), 2 * job["deadline"] + 2)
        except asyncio.TimeoutError:
            out.update(outcome="hang", error="not done after %d s" % (2 * job["deadline"] + 2))
        except BaseException as e:  # the foreign exceptions the fuzzer looks for (CancelledError too)
            out.update(outcome="foreign", error=described(e), trace=traceback_of(e))
        if out["ms"] is None:
            out["ms"] = ticks_diff(ticks_ms(), t0)
        await asyncio.sleep_ms(1)
        out["fds"] = fd_count() - base
        result(**out)


asyncio.run(main())
