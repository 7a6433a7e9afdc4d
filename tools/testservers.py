"""HTTP test servers for the DownloadManager test suite (CPython only).

FaultServer: a hand-written HTTP/1.1 server on raw asyncio streams that misbehaves on request, chosen per request by
the path and query string (the table below). RealServer: aiohttp.web, a well-behaved real-world HTTP/1.1 server.
ScriptServer: answers byte for byte by script, for what no server would send.

Each server runs its own event loop in a daemon thread, so synchronous code (pytest fixtures, benchmark scripts) can
start and stop it. Run this file as a script to serve from a separate process (see main()).

FaultServer's resources and query options. /bytes/N is N pseudo-random bytes (payload(N, seed)) with an ETag, a
Last-Modified and Range/If-Range support; /json/N a JSON list of N items. Options apply to /bytes and /json unless
the table says otherwise; several combine, e.g. /bytes/100000?drop=30000&key=a&newer=2&ifrange=ignore.

| option | meaning | example |
|---|---|---|
| /echo | a JSON account of the request: method, target, headers, body length and sha256 | /echo?a=1 |
| /status/N | answers status N with a short body (retry_after=S adds Retry-After) | /status/503?retry_after=2 |
| /redirect | one redirect, code= (default 302) to to= (pad= pads its head too) | /redirect?code=301&to=/bytes/10 |
| /chain/K/PATH | K+1 redirects in a row (/chain/K-1/PATH .. /chain/0/PATH), then /PATH (code=, abs=1: absolute Locations, delay=S: each S s late) | /chain/3/bytes/10?abs=1 |
| /loop | redirects to itself, for ever | /loop |
| /stats | JSON {connections, requests} as the server counted them | /stats |
| /file/NAME | the bytes FaultServer.files[NAME] (ETag "NAME"), with the options of /bytes/N | /file/a.mpk |
| key, skip, times | faults hit only the key's requests skip+1 .. skip+times (default: its first); newer=, churn= count by key | drop=1000&key=a&times=2 |
| delay=S | wait S seconds before answering (even a fail=) | delay=0.5 |
| fail=CODE | answer status CODE instead (retry_after=S adds Retry-After) | fail=503&retry_after=1 |
| seed=S | other bytes (and ETag "N-S") for the same N | seed=3 |
| text=1 | compressible text instead of random bytes | text=1&gzip=1 |
| etag=V | the ETag is V, for every version of the resource (etag= empty: an empty ETag) | etag="fixed" |
| weak=1 | the ETag is weak, W/"N-S" (apache's for a file changed within the last second; Express's always); weak=first: only for the key's first request (apache's a second later) | weak=first&key=a |
| novalidator=1 | neither ETag nor Last-Modified (a generated page): a resume can send no If-Range | novalidator=1 |
| gzip=1, deflate=1 | Content-Encoding gzip / deflate (zlib; deflate=raw: a bare deflate stream, as IIS sent it); a Range then counts coded bytes | gzip=1 |
| gzip=ranges | gzip only for a request with a Range, identity without (two backends behind one name) | gzip=ranges |
| gztrunc=1 | gzip-coded, but the gzip stream stops halfway (the framing is complete) | gztrunc=1 |
| ce=V | Content-Encoding: V, its codings applied in order; names we can't code (br, ...) flip every bit | ce=identity, gzip |
| bomb=MB | a gzip body that inflates to MB megabytes of zeros (about 1 KB per MB on the wire) | bomb=200 |
| norange=1 | Range is ignored: always 200 and the whole resource | norange=1 |
| rangemax=K | a 206 carries at most K bytes of the range asked (its Content-Range says so: a short 206) | rangemax=20000 |
| nototal=1 | a 206 of more than one byte names no size (`bytes A-B/*`); a probe's `bytes=0-0` still learns it | rangemax=30000&nototal=1 |
| ifrange=ignore | Range served whatever If-Range says (h2o, twisted): a 206 with the current validator | ifrange=ignore |
| bare416=1 | a 416 without Content-Range (as apache 2.4 sends it) | bare416=1 |
| newer=N | from the key's N-th request on, the next version: other bytes (seed+1), ETag, Last-Modified | key=a&newer=2 |
| churn=1 | every request with the key sees a newer version than the one before | churn=1&key=a&drop=30000 |
| grow=D | each version is D bytes longer than the one before (the Content-Range total changes) | newer=2&grow=5000 |
| tagonly=1 | a new version changes the ETag and Last-Modified, not the bytes (as behind a load balancer) | newer=2&tagonly=1 |
| unasked=A-B | a request without Range gets a 206 for bytes A-B (B empty: to the end) | unasked=0-999 |
| crange=V | a 206's Content-Range header says V instead (the body is unchanged) | crange=bytes 0-99/4611686018427387904 |
| length=V | Content-Length: V whatever the body, then a close; with chunked=1 or te= beside it, kept alive | length=4611686018427387904 |
| chunked=1 | Transfer-Encoding: chunked; chunks=a,b,.. sizes the chunks in turn (default 1000) | chunked=1&chunks=1,7,300 |
| trailer=1, ext=1 | with chunked=1: an X-Checksum trailer; extensions on every size line (ext=pad: spaces after each size, to four characters, as ESPAsyncWebServer sends) | chunked=1&ext=1 |
| nolast=1 | with chunked=1: no last chunk, the connection just closes | chunked=1&nolast=1 |
| te=V | a chunked body under Transfer-Encoding: V, coded first as ce= does (CR LF SP in V folds the line) | te=gzip, chunked |
| cl=0 | no Content-Length: the body ends when the connection closes | cl=0 |
| close=1 | Connection: close after this response | close=1 |
| closeafter=1 | a normal keep-alive response, then the server closes the idle connection 50 ms later | closeafter=1 |
| truncate=K | send K bytes of the body (after Range), then close (FIN) | truncate=7000&norange=1 |
| drop=K | send K bytes of the body, then reset (RST); without key= on every answer: a flapping link | drop=1024 |
| stall=K | send K bytes of the body, then nothing for stall_s seconds (default 30), then close | stall=3000&stall_s=2 |
| rate=B | send the body at B bytes per second | rate=100000 |
| trickle=1 | (any path) the response goes out in pieces of 1, 2, 3, 5 ... 1500 bytes, 1 ms apart | trickle=1&chunked=1 |
| drip=MS | (any path) the response head goes out one byte at a time, MS ms apart; the body as usual | drip=30 |
| pad=K | K more header fields of padlen= bytes each (default 300) | pad=99&padlen=300 |
| lower=1 | (any path) header names in lower case | lower=1 |

Beside the options: FaultServer.force (options forced on every /bytes and /json request: the resource changes, its
URL does not), .files (what /file/NAME serves), .connections and .requests (counts), .served (body bytes set out
to send) and .log (each request: when, on which connection, its target and headers).
"""

import asyncio
import datetime
import email.utils
import functools
import gzip
import hashlib
import ipaddress
import json
import os
import random
import signal
import select
import socket
import ssl
import stat
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import trustme
from aiohttp import web

HOST = "127.0.0.1"
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"  # fixed, so If-Range tests can use it


def refused_url(path="/x"):
    """An http URL on a loopback port nothing listens on: a connection there is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d%s" % (s.getsockname()[1], path)


# ---------------------------------------------------------------- payloads

@functools.lru_cache(maxsize=8)  # tests fetch the same 20 MB body many times
def payload(n, seed=0):
    """n deterministic pseudo-random (incompressible) bytes."""
    return random.Random(seed).randbytes(n)


@functools.lru_cache(maxsize=8)
def text_payload(n):
    """n bytes of compressible text, for the gzip/deflate endpoints."""
    parts, size, i = [], 0, 0
    while size < n:
        line = b"line %d of the payload\n" % i
        parts.append(line)
        size += len(line)
        i += 1
    return b"".join(parts)[:n]


def payload_sha256(n, seed=0):
    return hashlib.sha256(payload(n, seed)).hexdigest()


def sha256_of(n, seed=0, text=False):
    """sha256 hex of what /bytes/N sends (decoded, before any Range)."""
    return hashlib.sha256(text_payload(n) if text else payload(n, seed)).hexdigest()


# ---------------------------------------------------------------- TLS

@dataclass
class Certs:
    ca_der: bytes
    ca_pem: str
    ca_der_path: str
    ca_pem_path: str
    other_ca_der_path: str  # an unrelated CA: verifying against it must fail
    other_ca_pem_path: str
    _server_cert: object = None
    _leaves: dict = None  # kind -> a function that loads that certificate into a server context (see LEAVES)

    def server_ctx(self, leaf="good"):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if leaf == "good":
            self._server_cert.configure_cert(ctx)
        else:
            self._leaves[leaf](ctx)
        return ctx

    def client_ctx(self):
        """A CPython client context that trusts our CA (handy in tests)."""
        return ssl.create_default_context(cadata=self.ca_pem)


# The certificates a FaultServer(certs, leaf=...) can present besides the good one, each failing one check of a
# client that trusts our CA: the name, the dates, the signature.
LEAVES = ("wrong_host", "expired", "self_signed")


def make_certs(dirpath, key_type=trustme.KeyType.ECDSA):
    """Make a CA, a server cert for localhost/127.0.0.1, an unrelated CA and the LEAVES that must not verify."""
    os.makedirs(dirpath, exist_ok=True)
    ca, other = trustme.CA(key_type=key_type), trustme.CA(key_type=key_type)
    leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=key_type)
    now = datetime.datetime.now(datetime.timezone.utc)
    leaves = {
        "wrong_host": ca.issue_cert("wrong.example", key_type=key_type).configure_cert,
        "expired": ca.issue_cert("localhost", "127.0.0.1", key_type=key_type, not_before=now - _DAY * 30,
                                 not_after=now - _DAY).configure_cert,
    }

    def write(name, data):
        path = os.path.join(dirpath, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    self_signed = write("self_signed.pem", _self_signed("localhost", "127.0.0.1"))
    leaves["self_signed"] = lambda ctx: ctx.load_cert_chain(self_signed)
    ca_pem = ca.cert_pem.bytes().decode()
    ca_der = ssl.PEM_cert_to_DER_cert(ca_pem)
    other_pem = other.cert_pem.bytes().decode()
    return Certs(
        ca_der=ca_der, ca_pem=ca_pem,
        ca_der_path=write("ca.der", ca_der),
        ca_pem_path=write("ca.pem", ca_pem.encode()),
        other_ca_der_path=write("other_ca.der", ssl.PEM_cert_to_DER_cert(other_pem)),
        other_ca_pem_path=write("other_ca.pem", other_pem.encode()),
        _server_cert=leaf, _leaves=leaves,
    )


_DAY = datetime.timedelta(days=1)


def _self_signed(*names):
    """PEM of a private key and a server certificate for names that the key signed itself (no CA at all)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _DAY)
            .not_valid_after(now + _DAY * 365).add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------- thread host

class _LoopThread:
    """Runs a server on a private event loop in a daemon thread.

    Subclasses implement _astart() (must set self.port) and _astop(); both run
    on the server's loop. start()/stop() are the synchronous entry points.
    """

    def __init__(self, certs=None):
        self.certs = certs
        self.port = None
        self._loop = self._thread = None

    def start(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=type(self).__name__)
        self._thread.start()
        # Returns only once the socket listens, so callers can connect at once.
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(10)
        return self

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Cancel leftovers (e.g. a TLS handshake still in progress) so the loop
        # closes without "Task was destroyed but it is pending" noise.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def stop(self):
        if self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def base(self):
        return "%s://%s:%d" % ("https" if self.certs else "http", HOST, self.port)

    def url(self, path):
        return self.base + path

    def _ssl(self):
        return self.certs.server_ctx() if self.certs else None


# ---------------------------------------------------------------- FaultServer

class _Request:
    def __init__(self, method, target, version, headers, body):
        self.method, self.target, self.version = method, target, version
        self.raw_headers = headers  # [(name, value)] as received, in order
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        parts = urlsplit(target)
        self.path = parts.path
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.rawquery = parts.query

    def q(self, name, default=None, conv=str):
        v = self.query.get(name)
        return default if v is None else conv(v)


class _Close(Exception):
    """Raised by a handler when the connection must end after this response."""

    def __init__(self, abort=False):
        self.abort = abort


class FaultServer(_LoopThread):
    """Hand-written HTTP/1.1 server whose misbehaviour is chosen per request (path + query string: the table in
    the module docstring). With certs, it speaks TLS with the certificate `leaf` names ("good" or one of LEAVES)."""

    def __init__(self, certs=None, leaf="good"):
        super().__init__(certs)
        self.leaf = leaf
        self.connections = self.requests = 0
        self._keys = {}  # fault key -> number of requests seen with it
        self.served = 0  # body bytes /bytes and /json responses set out to send (after Range and cut faults)
        self.force = {}  # query options forced on /bytes and /json: the resource changes, its URL does not
        self.log = []  # every request (a _Request, with .t the time.monotonic() it came and .connection its number)
        self.files = {}  # name -> the bytes /file/<name> serves
        self._era = 0  # reset()s so far: a request from before the last one (a delay= outliving its test) adds nothing

    def reset(self):
        self._era += 1
        self.connections = self.requests = 0
        self._keys.clear()
        self.served = 0
        self.force = {}
        self.log = []
        self.files = {}

    def _ssl(self):
        return self.certs.server_ctx(self.leaf) if self.certs else None

    # -- lifecycle (on the loop)

    async def _astart(self):
        self._tasks = set()

        def protocol():  # what start_server() does, plus counting at TCP accept
            # time (start_server's callback would only run after a TLS handshake)
            self.connections += 1
            number = self.connections
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(1 << 20),
                                                lambda r, w: self._client(r, w, number))
        self._server = await asyncio.get_running_loop().create_server(
            protocol, HOST, 0, ssl=self._ssl())
        self.port = self._server.sockets[0].getsockname()[1]

    async def _astop(self):
        self._server.close()
        # Cancelling the handlers also ends stalls/delays at once; abort() the
        # transports so clients see the connection go away right now.
        for task, writer in list(self._tasks):
            _reset(writer)
            task.cancel()
        await asyncio.gather(*(t for t, _ in self._tasks), return_exceptions=True)

    # -- connection loop

    async def _client(self, reader, writer, number):
        entry = (asyncio.current_task(), writer)
        self._tasks.add(entry)
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    break
                self.requests += 1
                req.t, req.connection, req.era = time.monotonic(), number, self._era
                self.log.append(req)
                keep = (req.version == "HTTP/1.1"
                        and req.headers.get("connection", "").lower() != "close")
                out = writer
                if "trickle" in req.query:
                    out = _Trickle(writer)
                elif "drip" in req.query:
                    out = _Drip(writer, req.q("drip", conv=float) / 1000)
                try:
                    await self._dispatch(req, out, keep)
                    await out.drain()
                except _Close as c:
                    if out is not writer:
                        await out.flush()  # what was kept, before the close
                    if c.abort:
                        _reset(writer)
                    break
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # stop(); ending normally avoids a spurious error log on 3.11
        except ValueError:  # malformed request
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        finally:
            self._tasks.discard(entry)
            if not writer.transport.is_closing():
                writer.close()

    async def _read_request(self, reader):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # clean close between requests (keep-alive idle end)
        except asyncio.LimitOverrunError:
            raise ValueError("header too large")
        lines = head.decode("latin-1").split("\r\n")[:-2]
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("bad header line")
            headers.append((name, value.strip()))
        h = {k.lower(): v for k, v in headers}
        body = b""
        if "chunked" in h.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        elif "content-length" in h:
            body = await reader.readexactly(int(h["content-length"]))
        return _Request(method, target, version, headers, body)

    @staticmethod
    async def _read_chunked(reader):
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # skip trailers
            pass
        return b"".join(parts)

    # -- response helpers

    def _head(self, writer, req, status, headers, keep=True):
        if not keep:
            headers = list(headers) + [("Connection", "close")]
        if req.q("lower") == "1":
            headers = [(k.lower(), v) for k, v in headers]
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        lines += ["%s: %s" % kv for kv in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _simple(self, writer, req, status, body=b"", ctype="text/plain", extra=(), keep=True):
        headers = list(extra)
        has_body = status >= 200 and status not in (204, 304)  # these never have one
        if has_body:
            headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))] + headers
        self._head(writer, req, status, headers, keep)
        if has_body and req.method != "HEAD":
            writer.write(body)
        if not keep:
            raise _Close()

    def _json(self, writer, req, obj, keep):
        self._simple(writer, req, 200, json.dumps(obj).encode(), "application/json", keep=keep)

    def _redirect(self, writer, req, code, location, keep):
        padding = _padding(req.q("pad", 0, int), req.q("padlen", 300, int))
        self._simple(writer, req, code, extra=[("Location", location)] + padding, keep=keep)

    def _faulty(self, req):
        """Do the fault options apply to this request? (key/times gating) Also numbers it: req.nth, 1 for the
        key's first request (0 without a key)."""
        key = req.q("key")
        req.nth = 0
        if key is None:
            return True
        self._keys[key] = req.nth = self._keys.get(key, 0) + 1
        k = req.nth - req.q("skip", 0, int)  # skip=K: the key's first K requests are served normally
        return 0 < k <= req.q("times", 1, int)

    @staticmethod
    def _version(req):
        """Which version of the resource this request sees (newer=, churn=): 0 is the original."""
        if req.q("churn") == "1":
            return max(req.nth - 1, 0)
        newer = req.q("newer", conv=int)
        return 1 if newer is not None and 0 < newer <= req.nth else 0

    # -- routing

    async def _dispatch(self, req, writer, keep):
        parts = req.path.strip("/").split("/")
        route, args = parts[0], parts[1:]
        if route in ("bytes", "json") and len(args) == 1 and args[0].isdigit():
            await self._entity(req, writer, keep, route, int(args[0]))
        elif route == "file" and len(args) == 1 and args[0] in self.files:
            await self._entity(req, writer, keep, route, args[0])
        elif route == "echo":
            self._json(writer, req, {
                "method": req.method, "path": req.target,
                "headers": [list(kv) for kv in req.raw_headers],
                "body_len": len(req.body),
                "body_sha256": hashlib.sha256(req.body).hexdigest()}, keep)
        elif route == "status" and len(args) == 1 and args[0].isdigit():
            code = int(args[0])
            extra = [("Retry-After", req.q("retry_after"))] if "retry_after" in req.query else []
            if "length" in req.query and code in (204, 304):  # a stray length on an answer that has no body
                extra.append(("Content-Length", req.q("length")))
            self._simple(writer, req, code, b"status %d" % code, extra=extra, keep=keep)
        elif route == "redirect":
            self._redirect(writer, req, req.q("code", 302, int), req.q("to", "/"), keep)
        elif route == "chain" and args and args[0].isdigit():
            if "delay" in req.query:
                await asyncio.sleep(req.q("delay", conv=float))
            k, rest = int(args[0]), "/".join(args[1:])
            loc = ("/chain/%d/%s" % (k - 1, rest)) if k > 0 else "/" + rest
            if req.rawquery:
                loc += "?" + req.rawquery
            if req.q("abs") == "1":
                loc = self.base + loc
            self._redirect(writer, req, req.q("code", 302, int), loc, keep)
        elif route == "loop":
            self._redirect(writer, req, 302, "/loop", keep)
        elif route == "stats":
            self._json(writer, req, {"connections": self.connections,
                                     "requests": self.requests}, keep)
        else:
            self._simple(writer, req, 404, b"not found", keep=keep)

    async def _entity(self, req, writer, keep, kind, n):
        """/bytes/N, /json/N and /file/NAME (n is the name), with all fault options."""
        if self.force:
            req.query = dict(req.query, **self.force)
        q = req.q
        if "delay" in req.query:  # before anything, so even fail= answers are late
            await asyncio.sleep(q("delay", conv=float))
        faulty = self._faulty(req)
        if faulty and "fail" in req.query:
            extra = [("Retry-After", q("retry_after"))] if "retry_after" in req.query else []
            code = q("fail", conv=int)
            return self._simple(writer, req, code, b"status %d" % code, extra=extra, keep=keep)

        status = 200
        if kind == "json":
            body = json.dumps([{"id": i, "name": "item %d" % i} for i in range(n)]).encode()
            headers = [("Content-Type", "application/json")]
        else:
            if kind == "file":  # one version: the test's bytes
                body, etag, last_modified = self.files[n], q("etag", '"%s"' % n), _http_date(0)
            else:
                version = self._version(req)
                tagonly = q("tagonly") == "1"
                size = n if tagonly else n + version * q("grow", 0, int)
                seed = q("seed", 0, int)
                body = text_payload(size) if q("text") == "1" else payload(size, seed if tagonly else seed + version)
                weak = q("weak") == "1" or q("weak") == "first" and req.nth <= 1
                etag = q("etag", ('W/"%d-%d"' if weak else '"%d-%d"') % (size, seed + version))
                last_modified = _http_date(version)
            headers = [("Content-Type", "application/octet-stream"), ("ETag", etag),
                       ("Last-Modified", last_modified)]
            if q("novalidator") == "1":  # nothing an If-Range could name: none matches
                etag = last_modified = None
                headers = headers[:1]
        headers += _padding(q("pad", 0, int), q("padlen", 300, int))
        # Content coding first: a Range then addresses the encoded bytes, as in HTTP.
        if q("gzip") == "1" or q("gztrunc") == "1" or q("gzip") == "ranges" and req.headers.get("range"):
            body = gzip.compress(body, mtime=0)
            if q("gztrunc") == "1":
                body = body[:len(body) // 2]  # a gzip stream that never ends
            headers.append(("Content-Encoding", "gzip"))
        elif q("deflate") in ("1", "raw"):
            body = zlib.compress(body) if q("deflate") == "1" else _raw_deflate(body)
            headers.append(("Content-Encoding", "deflate"))
        elif "ce" in req.query:
            body = _encode(body, q("ce"))
            headers.append(("Content-Encoding", q("ce")))
        elif "bomb" in req.query:
            body = gzip_bomb(q("bomb", conv=int))
            headers.append(("Content-Encoding", "gzip"))

        if kind != "json" and q("norange") != "1":
            headers.append(("Accept-Ranges", "bytes"))
            rng = req.headers.get("range")
            if_range = req.headers.get("if-range")
            if rng is None and "unasked" in req.query:
                rng = "bytes=" + q("unasked")
            # a strong comparison (RFC 9110 13.1.5): a weak ETag matches no If-Range
            matches = if_range is not None and not if_range.startswith("W/") and if_range in (etag, last_modified)
            if rng and (if_range is None or matches or q("ifrange") == "ignore"):
                span = _parse_range(rng, len(body))
                if span == "unsatisfiable":
                    extra = [] if q("bare416") == "1" else [("Content-Range", "bytes */%d" % len(body))]
                    return self._simple(writer, req, 416, b"<html>416 Requested Range Not Satisfiable</html>\n",
                                        "text/html", extra, keep)
                if span:
                    a, b = span
                    if "rangemax" in req.query:  # rangemax=K: 206 parts of at most K bytes (a server may send less)
                        b = min(b, a + q("rangemax", conv=int) - 1)
                    total = "*" if q("nototal") == "1" and b > a else len(body)
                    headers.append(("Content-Range", q("crange", "bytes %d-%d/%s" % (a, b, total))))
                    body, status = body[a:b + 1], 206

        # Framing: chunked, close-delimited, or Content-Length (the default).
        te = q("te")
        chunked = q("chunked") == "1" or te is not None
        if chunked:
            headers.append(("Transfer-Encoding", te or "chunked"))
            if te:
                body = _encode(body, te)  # transfer codings apply to what this message carries
            if q("trailer") == "1":
                headers.append(("Trailer", "X-Checksum"))
            if "length" in req.query:
                headers.append(("Content-Length", q("length")))
        elif q("cl") == "0":
            keep = False  # the close is what ends the body
        else:
            headers.append(("Content-Length", q("length", str(len(body)))))
            if "length" in req.query:
                keep = False  # what the length says is no frame: the close ends the body
        if q("close") == "1":
            keep = False

        # Faults that cut the body short: send only `limit` bytes, then end.
        # (All parsing happens before the head goes out: a bad value is a 400.)
        cut = None
        if faulty:
            cut = next((f for f in ("drop", "stall", "truncate") if f in req.query), None)
        limit = q(cut, conv=int) if cut else len(body)
        sizes = [int(s) for s in q("chunks", "1000").split(",")] if chunked else [65536]
        rate, stall_s = q("rate", conv=float), q("stall_s", 30.0, float)

        self._head(writer, req, status, headers, keep)
        if req.method == "HEAD":
            return
        if req.era == self._era:
            self.served += len(body[:limit])
        await self._send_body(writer, body[:limit], sizes, chunked, q("ext"), rate)
        await writer.drain()

        if cut == "drop":
            raise _Close(abort=True)
        if cut == "stall":
            await asyncio.sleep(stall_s)  # cancelled by stop()
            raise _Close()
        if cut == "truncate":
            raise _Close()
        if chunked:
            if q("nolast") == "1":
                raise _Close()
            last = b"0;final=yes\r\n" if q("ext") == "1" else b"0\r\n"
            trailer = b""
            if q("trailer") == "1":
                trailer = b"X-Checksum: %s\r\n" % hashlib.sha256(body).hexdigest().encode()
            writer.write(last + trailer + b"\r\n")
        if not keep:
            raise _Close()
        if q("closeafter") == "1":
            # Looks like a normal keep-alive response; the close comes a bit
            # later, as when a server times out an idle pooled connection.
            await writer.drain()
            await asyncio.sleep(0.05)
            raise _Close()

    @staticmethod
    async def _send_body(writer, data, sizes, chunked, ext, rate):
        loop = asyncio.get_running_loop()
        t0, sent, i = loop.time(), 0, 0
        if rate:  # small pieces so the throttle is smooth
            sizes = [max(256, min(16384, int(rate) // 20))] if not chunked else sizes
        while sent < len(data):
            piece = data[sent:sent + sizes[i % len(sizes)]]
            i += 1
            if chunked:
                size_line = (b"%x;piece=%d\r\n" % (len(piece), i) if ext == "1" else
                             b"%-4x\r\n" % len(piece) if ext == "pad" else b"%x\r\n" % len(piece))
                writer.write(size_line + piece + b"\r\n")
            else:
                writer.write(piece)
            sent += len(piece)
            await writer.drain()  # back-pressure; also a cancellation point
            if rate:
                ahead = sent / rate - (loop.time() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)


def _http_date(version):
    """Last-Modified of a version of a resource: LAST_MODIFIED for the original, a day later for each newer one."""
    return email.utils.formatdate(1445412480 + version * 86400, usegmt=True)


def _padding(count, size):
    """count header fields whose lines are size bytes each, CRLF included."""
    fields = []
    for i in range(count):
        name = "X-Pad-%d" % i
        fields.append((name, "p" * max(1, size - len(name) - 4)))
    return fields


_FLIP = bytes(range(255, -1, -1))


def _encode(body, codings):
    """body coded by each coding a Content-Encoding or Transfer-Encoding value lists, in order: gzip and deflate for
    real, identity and chunked (framing, done elsewhere) not at all, nor the names servers send meaning identity
    (none, the charset utf-8), any other name by flipping every bit."""
    for name in codings.replace("\r\n", " ").split(","):
        name = name.strip().lower()
        if name in ("gzip", "x-gzip"):
            body = gzip.compress(body, mtime=0)
        elif name == "deflate":
            body = zlib.compress(body)
        elif name not in ("", "identity", "chunked", "none", "utf-8"):
            body = body.translate(_FLIP)
    return body


def _raw_deflate(body):
    # a deflate stream without the zlib wrapper, its window the full 32 KB
    coder = zlib.compressobj(wbits=-15)
    return coder.compress(body) + coder.flush()


@functools.lru_cache(maxsize=2)
def gzip_bomb(megabytes):
    """A gzip stream of megabytes MB of zeros: about 1 KB per MB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip wrapper
    zeros = bytes(1 << 20)
    return b"".join([z.compress(zeros) for _ in range(megabytes)] + [z.flush()])


class _Trickle:
    """trickle=1: the whole response (head, chunk lines, body, trailers) goes out in pieces of 1, 2, 3, 5... and
    1500 bytes with a pause after each, so a client's reads end at every kind of place: inside the head, a
    chunk-size line, its CRLF, the data. Writes are kept until drain() (or flush())."""

    SIZES = (1, 2, 3, 5, 8, 13, 21, 400, 1500)

    def __init__(self, writer):
        self._w = writer
        self._out = bytearray()
        self._i = 0

    def write(self, data):
        self._out += data

    async def drain(self):
        await self.flush()

    async def flush(self):
        while self._out:
            n = self.SIZES[self._i % len(self.SIZES)]
            self._i += 1
            self._w.write(bytes(self._out[:n]))
            del self._out[:n]
            await self._w.drain()
            await asyncio.sleep(0.001)

    def __getattr__(self, name):  # transport, get_extra_info...
        return getattr(self._w, name)


class _Drip(_Trickle):
    """drip=MS: the response head goes out one byte at a time, `pause` seconds apart (each byte well within a
    client's read timeout, the whole head far beyond it); then the rest at once, and later writes as they come."""

    def __init__(self, writer, pause):
        super().__init__(writer)
        self._pause = pause
        self._head = True

    async def flush(self):
        if not self._head:
            self._w.write(bytes(self._out))
            del self._out[:]
            return await self._w.drain()
        self._head = False
        end = self._out.find(b"\r\n\r\n") + 4
        for i in range(end):
            self._w.write(self._out[i:i + 1])
            await self._w.drain()
            await asyncio.sleep(self._pause)
        del self._out[:end]
        await self.flush()


def _reset(writer):
    """Abort the connection with a TCP RST (SO_LINGER 0), not a FIN, so the
    client sees ECONNRESET as with a crashed server or a dropped link."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _parse_range(value, size):
    """(first, last) for a single satisfiable byte range, 'unsatisfiable', or
    None when the header is to be ignored (malformed or multi-range)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash:
            return None
        if first == "":  # suffix range: the last N bytes
            n = int(last)
            return (max(0, size - n), size - 1) if n > 0 and size > 0 else "unsatisfiable"
        a = int(first)
        b = int(last) if last else size - 1
    except ValueError:
        return None
    if a >= size:  # before the b < a check: "bytes=N-" on N bytes is a 416
        return "unsatisfiable"
    if b < a:
        return None
    return a, min(b, size - 1)


# ---------------------------------------------------------------- RealServer

class RealServer(_LoopThread):
    """aiohttp.web: keep-alive, Range, If-Range, ETag all done by aiohttp."""

    def __init__(self, root_dir, certs=None):
        super().__init__(certs)
        self.root_dir = root_dir
        self.connections = 0

    @staticmethod
    def make_file(root_dir, name, n, seed=0):
        data = payload(n, seed)
        with open(os.path.join(root_dir, name), "wb") as f:
            f.write(data)
        return hashlib.sha256(data).hexdigest()

    async def _astart(self):
        app = web.Application()
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/stream/{n:\\d+}", self._stream)
        app.router.add_get("/json", self._json)
        # Short shutdown timeout: stop() must not wait for slow clients (aiohttp
        # waits up to twice this for a response still being sent).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        handler_factory = self._runner.server

        def counting_factory():  # one protocol instance per accepted connection
            self.connections += 1
            return handler_factory()

        # Our own listener instead of a TCPSite, so we can count connections.
        self._listener = await asyncio.get_running_loop().create_server(
            counting_factory, HOST, 0, ssl=self._ssl())
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _astop(self):
        self._listener.close()
        await self._runner.cleanup()  # also closes the open keep-alive connections

    async def _file(self, request):
        name = request.match_info["name"]
        path = os.path.join(self.root_dir, name)
        if name.startswith(".") or not os.path.isfile(path):
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _stream(self, request):
        data = payload(int(request.match_info["n"]))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sizes, pos, i = (1, 7, 300, 4096, 65536, 1000), 0, 0
        while pos < len(data):  # uneven pieces exercise the client's chunk parser
            await resp.write(data[pos:pos + sizes[i % len(sizes)]])
            pos += sizes[i % len(sizes)]
            i += 1
        await resp.write_eof()
        return resp

    async def _json(self, request):
        return web.json_response({"ok": True, "items": [1, 2, 3], "name": "real"})


# ---------------------------------------------------------------- scripted raw server

class _ThreadServer:
    """A listening socket on HOST, a thread per connection running self._answer(conn, its number from 1); with certs,
    TLS (the handshake in that thread). Usable with `with`."""

    def __init__(self, certs=None):
        self.connections = 0
        self._tls = certs.server_ctx() if certs else None
        self.sock = socket.create_server((HOST, 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path, host=HOST):
        return "%s://%s:%d%s" % ("https" if self._tls else "http", host, self.port, path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn, self.connections), daemon=True).start()

    @staticmethod
    def _read_head(conn, data):
        # -> (a request's head, the bytes read after it), data being what came before; None once the client closed
        while b"\r\n\r\n" not in data:
            part = conn.recv(4096)
            if not part:
                return None
            data += part
        return data.split(b"\r\n\r\n", 1)


class ScriptServer(_ThreadServer):
    """Answers by script, byte for byte, for what no well-behaved server sends (1xx heads, cut lines...).

    scripts[path] is a list of steps (or an Endless script): bytes are sent, a number is a pause in seconds, "close"
    ends the connection (after the client has closed its side, so unread data causes no RST; over TLS without a
    close_notify, as a truncation looks), "notify" ends it the same way after a TLS close_notify (as a correct TLS
    server does), "notify-hold" sends the close_notify and keeps TCP open until the client closes (as openssl
    s_server -WWW does), "reset" ends it with an RST at once. Without either the connection reads its next request:
    keep-alive. A path in `unread` is answered as soon as its head is in, its request body left unread (a server
    refusing an upload). With hello_alert (TLS), each connection begins with a warning alert in the clear, before
    the ServerHello: unrecognized_name, as apache sends when the name asked for is not its ServerName.
    `requests` records (connection number, method, path).
    """

    def __init__(self, scripts, certs=None, unread=(), hello_alert=False):
        self.scripts = scripts  # (set before the first connection can be answered)
        self.unread = unread
        self.hello_alert = hello_alert
        self.requests = []
        super().__init__(certs)  # TLS: each bytes step goes out as one record (< 16 KB)

    def _answer(self, conn, number):
        conn.settimeout(10)
        data = b""
        try:
            if self._tls:
                if self.hello_alert:
                    conn.sendall(UNRECOGNIZED_NAME)
                conn = self._tls.wrap_socket(conn, server_side=True)
            while True:
                read = self._read_head(conn, data)
                if read is None:
                    return
                head, data = read
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                method, path = lines[0].split(" ")[:2]
                while len(data) < length and path not in self.unread:
                    data += conn.recv(4096)
                data = data[length:]
                self.requests.append((number, method, path))
                for step in self.scripts[path]:
                    if step == "notify-hold":  # (TLS) a close_notify alert, then no FIN before the client's
                        conn = send_close_notify(conn)
                        conn.settimeout(None)  # (a daemon thread: the client's exit ends it at the latest)
                        while conn.recv(4096):
                            pass
                        return
                    if step == "notify":  # (TLS) a close_notify alert, then as "close"
                        conn = send_close_notify(conn)
                        step = "close"
                    if step == "close":
                        conn.shutdown(socket.SHUT_WR)
                        while conn.recv(4096):
                            pass
                        return
                    if step == "reset":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    if isinstance(step, bytes):
                        conn.sendall(step)
                    else:
                        time.sleep(step)
        except OSError:
            pass
        finally:
            conn.close()


UNRECOGNIZED_NAME = bytes([21, 3, 3, 0, 2, 1, 112])  # a TLS 1.2 alert record: warning (1), unrecognized_name (112)


def send_close_notify(conn):
    """Sends a TLS connection's close_notify without waiting for the client's (which MicroPython never sends); ->
    the socket to go on with. A plain socket is returned as it is."""
    if not isinstance(conn, ssl.SSLSocket):
        return conn
    timeout = conn.gettimeout()
    conn.setblocking(False)
    try:
        while True:
            try:
                conn.unwrap()  # sends the alert, then wants to read the client's
            except ssl.SSLWantWriteError:  # (a full send buffer: the alert is not out yet)
                select.select([], [conn], [], timeout)
                continue
            except ssl.SSLWantReadError:
                pass
            break
    finally:
        conn.settimeout(timeout)
    return conn


class Endless:
    """A ScriptServer script that never ends: the step `first`, then the steps `then` again and again, until the
    client goes away."""

    def __init__(self, first, *then):
        self.first, self.then = first, then

    def __iter__(self):
        yield self.first
        while True:
            yield from self.then


# ---------------------------------------------------------------- the benchmark's fast server

class FastServer(_ThreadServer):
    """GET /bytes/N (N bytes of payload(N)) answered as fast as CPython can, for the benchmark's floors: a thread per
    connection on blocking sockets with TCP_NODELAY, the head and a small body in one send, keep-alive as HTTP/1.1
    says (HTTP/1.0 or Connection: close end the connection after the answer). With certs, TLS."""

    def _answer(self, conn, number):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self._tls:
                conn = self._tls.wrap_socket(conn, server_side=True)
            data = b""
            while True:
                read = self._read_head(conn, data)
                if read is None:
                    return
                head, data = read
                lines = head.decode("latin-1").lower().split("\r\n")
                _, target, version = lines[0].split(" ")
                close = version == "http/1.0" or "connection: close" in lines
                path = target.split("?")[0].split("/")
                if len(path) != 3 or path[1] != "bytes" or not path[2].isdigit():
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                body = payload(int(path[2]))
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (
                    len(body), b"Connection: close\r\n" if close else b"")
                if len(body) <= 65536:
                    conn.sendall(head + body)
                else:
                    conn.sendall(head)
                    conn.sendall(memoryview(body))
                if close:
                    return
        except (OSError, ValueError):  # the client went away, or spoke no HTTP we know
            pass
        finally:
            conn.close()


# ---------------------------------------------------------------- CLI

def main(argv=None):
    """Serve until SIGTERM/SIGINT or stdin closes; print one JSON line of URLs."""
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tls", metavar="DIR", help="serve HTTPS; write CA files to DIR")
    ap.add_argument("--real", metavar="ROOTDIR", help="also run a RealServer on ROOTDIR")
    args = ap.parse_args(argv)

    certs = make_certs(args.tls) if args.tls else None
    fault = FaultServer(certs).start()
    real = RealServer(args.real, certs).start() if args.real else None

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())

    def watch_stdin():  # the parent closing our stdin pipe (or dying) ends us too
        try:  # os.read, not sys.stdin: a buffered read holds a lock that makes
            # interpreter exit abort while this daemon thread is blocked in it
            while os.read(fd, 4096):
                pass
        except (OSError, ValueError):
            pass
        done.set()
    # Only a pipe/socket/tty can "close"; /dev/null (stdin=DEVNULL) would read as
    # EOF at once and stop the server immediately, so it is not watched.
    fd = 0
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # no stdin at all
        mode = 0
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (mode and os.isatty(fd)):
        threading.Thread(target=watch_stdin, daemon=True).start()

    print(json.dumps({"fault": fault.base, "real": real.base if real else None,
                      "ca_der": certs.ca_der_path if certs else None}), flush=True)
    try:
        while not done.wait(0.5):  # a timed wait keeps signal handlers responsive
            pass
    finally:
        fault.stop()
        if real:
            real.stop()


if __name__ == "__main__":
    main()
