"""The websocket client driven the way MicroPythonOS drives it: its uaiowebsocket.WebSocketApp (Nostr relays, the
Lightning wallet) and its multi-websocket tests. The snippets are ours; the calls are the ones that code makes:
ClientSession(headers=...), ws_connect(url, ssl=<an ssl.SSLContext with CERT_NONE>), `if not ws`, `async for`,
msg.type against WSMsgType and the raw opcodes, ws.ws.closed, ws.pong(), ws.exception(), send_str/send_bytes,
close() from another task, session.__aexit__(None, None, None), and a reconnect loop with backoff; and
WebSocketApp's own shape: a session per connection left unclosed, len(msg.data) of every message, send() as a task."""
import pytest

from tools.wsservers import frame

# A relay client shaped like uaiowebsocket.WebSocketApp: one session per connection, messages to callbacks, and
# a reconnect loop whose wait starts at MIN_WAIT after a connection that ended normally and triples (up to
# MAX_WAIT) after one that failed.
RELAY = """
import asyncio, aiohttp, ssl
from aiohttp import WSMsgType

class RelayClosed(Exception):
    pass

class Relay:
    def __init__(self, url):
        self.url = url
        self.ws = self.session = None
        self.running = True
        self.opened = 0
        self.messages = []
        self.errors = []
        self.waits = []

    async def _connect_and_run(self):
        context = None
        if self.url.startswith("wss://"):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.verify_mode = ssl.CERT_NONE
        self.session = aiohttp.ClientSession(headers={"X-Relay-Client": "test"})
        async with self.session.ws_connect(self.url, ssl=context) as ws:
            if not ws:
                raise RuntimeError("ws_connect gave no websocket")
            self.ws = ws
            self.opened += 1
            await ws.send_str('["REQ","feed",{}]')
            async for msg in ws:
                self.keep(ws, msg)
                if msg.type == 9:  # a ping (only seen with autoping off; a pong, 10, is let be)
                    await ws.pong(msg.data)

    def keep(self, ws, msg):
        if msg.type == WSMsgType.TEXT:
            self.messages.append(msg.data)
        elif msg.type == WSMsgType.BINARY:
            self.messages.append("%d bytes" % len(msg.data))
        elif msg.type == WSMsgType.ERROR or ws.ws.closed:
            raise RelayClosed("websocket error or closed")

    async def run_forever(self):
        wait = MIN_WAIT
        while self.running:
            ended_normally = False
            try:
                await self._connect_and_run()
                ended_normally = True
            except Exception as e:
                self.errors.append(type(e).__name__)
            finally:
                await self.session.__aexit__(None, None, None)
            if not self.running:
                break
            wait = MIN_WAIT if ended_normally else min(wait * 3, MAX_WAIT)
            self.waits.append(wait)
            await asyncio.sleep(wait)

    async def close(self):
        self.running = False
        if self.ws and not self.ws.ws.closed:
            await self.ws.close()

def start(url):
    relay = Relay(url)
    return relay, asyncio.create_task(relay.run_forever())
"""
UNTIL = """
async def until(done):
    while not done():
        await asyncio.sleep_ms(10)
"""
RELAY += UNTIL


def test_a_relay_that_ends_each_connection_is_reconnected_at_the_shortest_wait(mpy, ws_script):
    srv = ws_script({"/relay": ["read", frame(1, b'["EVENT",1]'), frame(2, b"\x01\x02"), "fin"]})
    r = mpy.run(RELAY + """
async def main():
    fds = fd_count()
    relay, task = start(URL)
    await until(lambda: relay.opened >= 3 and len(relay.messages) >= 6)
    await relay.close()
    await task
    result(messages=relay.messages[:6], errors=relay.errors, waits=relay.waits[:2], fds=fd_count() - fds)
run(main())
""", timeout=30, URL=srv.url("/relay"), MIN_WAIT=0.05, MAX_WAIT=0.5)
    assert r.value["messages"] == ['["EVENT",1]', "2 bytes"] * 3
    assert r.value["errors"] == [] and r.value["waits"] == [0.05, 0.05] and r.value["fds"] == 0
    assert [p for _, op, p in srv.frames if op == 1][:3] == [b'["REQ","feed",{}]'] * 3


def test_a_relay_that_drops_and_then_refuses_is_retried_with_growing_waits(mpy, ws_script):
    srv = ws_script({"/relay": ["read", frame(1, b'["EVENT",1]'), 0.05, "drop"]})
    r = mpy.run(RELAY + """
async def main():
    fds = fd_count()
    relay, task = start(URL)
    await until(lambda: relay.messages)
    relay.url = DEAD  # the relay goes away: connections are refused from now on
    await until(lambda: len(relay.waits) >= 4)  # (each error's wait comes after the session's close, an await)
    await relay.close()
    await task
    result(errors=relay.errors[:4], waits=relay.waits[:4], fds=fd_count() - fds)
run(main())
""", timeout=30, URL=srv.url("/relay"), DEAD="ws://127.0.0.1:9/relay", MIN_WAIT=0.02, MAX_WAIT=0.5)
    # the dropped connection is an ERROR message (RelayClosed above), each refusal a ClientConnectorError
    assert r.value["errors"] == ["RelayClosed"] + ["ClientConnectorError"] * 3
    assert r.value["waits"] == [0.06, 0.18, 0.5, 0.5] and r.value["fds"] == 0


def test_closing_from_another_task_ends_the_relays_loop(mpy, ws_aiohttp_tls):
    r = mpy.run(RELAY + """
async def main():
    fds = fd_count()
    relay, task = start(URL)
    await until(lambda: relay.messages)
    await relay.close()  # while the relay's task waits in `async for`
    await task
    result(messages=relay.messages, opened=relay.opened, closed=relay.ws.ws.closed, errors=relay.errors,
           fds=fd_count() - fds)
run(main())
""", timeout=30, URL=ws_aiohttp_tls.url("/echo?relay"), MIN_WAIT=0.05, MAX_WAIT=0.5)
    assert r.value == {"messages": ['["REQ","feed",{}]'], "opened": 1, "closed": True, "errors": [], "fds": 0}
    assert ws_aiohttp_tls.close_codes("/echo?relay") == [1000]


# MicroPythonOS's test_multi_connect.py and test_multi_websocket_with_bad_ones.py: workers on one session, each
# sending a couple of messages then answering what comes back, in an event loop on a thread of its own
WORKERS = """
import asyncio, aiohttp, _thread, time
from aiohttp import WSMsgType

connected = []
log = []
done = []

async def worker(session, url, i):
    try:
        async with session.ws_connect(url) as ws:
            connected.append(i)
            for k in range(2):
                await ws.send_str("hello from %d, message %d" % (i, k + 1))
                await asyncio.sleep(0.05)
            count = 0
            async for msg in ws:
                count += 1
                if count > 6:
                    await ws.close()
                    break
                if msg.type == WSMsgType.TEXT:
                    log.append((i, msg.data))
                    await ws.send_str(msg.data + " / answer")
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                elif msg.type == WSMsgType.ERROR:
                    log.append((i, "error: %r" % ws.exception()))
                    break
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.append((i, type(e).__name__))

async def main():
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*[asyncio.create_task(worker(session, url, i)) for i, url in enumerate(URLS)],
                             return_exceptions=True)
    done.append(True)

fds = fd_count()
_thread.start_new_thread(lambda: asyncio.run(main()), ())
for i in range(300):
    if done:
        break
    time.sleep(0.05)
result(done=bool(done), connected=sorted(connected), log=sorted(log), fds=fd_count() - fds)
"""


def test_websockets_from_one_session_on_a_thread_some_of_them_bad(mpy, ws_aiohttp):
    good = ws_aiohttp.url("/echo?multi")
    r = mpy.run(WORKERS, timeout=60, URLS=[good, "ws://127.0.0.1:9/", good, ws_aiohttp.url("/status/404"), good])
    assert r.value["done"] and r.value["connected"] == [0, 2, 4] and r.value["fds"] == 0
    log = r.value["log"]
    for i in (0, 2, 4):
        said = [text for who, text in log if who == i]
        # the first message back, then what came back of each answer: the chain grows one " / answer" a turn
        assert said[:2] == ["hello from %d, message 1" % i, "hello from %d, message 1 / answer" % i], said
    assert [1, "ClientConnectorError"] in log and [3, "WSServerHandshakeError"] in log


# uaiowebsocket.WebSocketApp as it is, beside the relay above: a new session for each connection and only the last
# one closed (by close(), from a task of its own); every message logged before it is looked at, its len(msg.data)
# and str(msg.data)[:180] made whatever its type; send() a plain method that schedules the write as a task.
APP = RELAY + """
class App(Relay):
    def __init__(self, url):
        super().__init__(url)
        self.logged = []

    def send(self, text):
        asyncio.create_task(self.ws.send_str(text))

    async def close(self):
        self.running = False
        asyncio.create_task(self._close())

    async def _close(self):
        if self.ws and not self.ws.ws.closed:
            await self.ws.close()
        if self.session:
            await self.session.__aexit__(None, None, None)

    async def _connect_and_run(self):
        self.session = aiohttp.ClientSession(headers={"User-Agent": "relay-app"})
        async with self.session.ws_connect(self.url, ssl=None) as ws:
            if not ws:
                return
            self.ws = ws
            self.opened += 1
            self.send('["REQ","feed",{}]')
            async for msg in ws:
                self.logged.append("type=%s, length: %d and data=%s" % (msg.type, len(msg.data), str(msg.data)[:180]))
                if not self.running:
                    break
                self.keep(ws, msg)

    async def run_forever(self):
        while self.running:
            try:
                await self._connect_and_run()
            except Exception as e:
                self.errors.append(type(e).__name__)
            if self.running:
                await asyncio.sleep(0.02)
"""


@pytest.mark.parametrize("link", ["ends each connection", "drops each connection"])
def test_a_relay_app_with_a_session_per_connection_reconnects_and_holds_no_socket(mpy, ws_script, link):
    # On a drop, the ERROR message's data is the exception, as in CPython's aiohttp: the app's log line raises
    # TypeError on its len() (MicroPythonOS's own client raised the socket's error out of `async for` instead);
    # either way the app's except reports it and connects again
    end = ["fin"] if link == "ends each connection" else [0.05, "drop"]
    srv = ws_script({"/relay": ["read", frame(1, b'["EVENT",1]'), frame(2, b"\x01\x02")] + end})
    r = mpy.run(APP + """
async def main():
    fds = fd_count()
    app = App(URL)
    task = asyncio.create_task(app.run_forever())
    await until(lambda: app.opened >= 4)  # (three connections over, each with what it got)
    await app.close()
    await task
    await until(lambda: app.session.closed)  # (close() left it to a task)
    result(messages=app.messages[:4], logged=app.logged[:2], errors=app.errors[:2], fds=fd_count() - fds)
run(main())
""", timeout=30, URL=srv.url("/relay"))
    assert r.value["messages"] == ['["EVENT",1]', "2 bytes"] * 2
    assert r.value["logged"] == ['type=1, length: 11 and data=["EVENT",1]', "type=2, length: 2 and data=b'\\x01\\x02'"]
    assert r.value["errors"] == ([] if link == "ends each connection" else ["TypeError"] * 2)
    assert r.value["fds"] == 0
    assert [p for _, op, p in srv.frames if op == 1][:4] == [b'["REQ","feed",{}]'] * 4
