# `socket` for MicroPython's webassembly port, which has none: enough of one for `make bench` to run real
# downloads on a 32-bit MicroPython (tools/wasm32.mjs). It answers GET /bytes/N with N bytes, and a websocket
# handshake with a 101 after which it echoes each frame (one write, one frame: what the client sends of short
# messages). It is always ready, so the client never parks a task in the event loop (the port's asyncio has no
# poller). Small on purpose: it stands in for the ESP32's socket object, a few words of heap.
AF_INET = 2
SOCK_STREAM = 1
_BODY = bytes(range(256)) * 4
_ECHO = -2  # self.left once a websocket handshake is answered: frames are echoed from then on


def getaddrinfo(host, port, *args):
    return [(AF_INET, SOCK_STREAM, 0, "", (host, port))]


class socket:
    def __init__(self, *args):
        self.left = -1  # body bytes still to send; -1 until the request came

    def setblocking(self, flag):
        pass

    def setsockopt(self, level, option, value):
        pass

    def connect(self, addr):
        pass

    def write(self, data):
        data = bytes(data)
        if self.left == _ECHO:
            self.head += _echo(data)
        elif self.left < 0 and b"\r\nUpgrade: websocket" in data:
            self.head = _upgrade(data)
            self.left = _ECHO
        elif self.left < 0:
            n = int(data[:64].split(b" ")[1].split(b"/")[-1])
            self.head = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "%d-0"\r\n\r\n' % (n, n)
            self.left = n
        return len(data)

    def readinto(self, buf, size=-1):
        room = len(buf) if size < 0 else min(size, len(buf))
        h = self.head
        if h:
            k = min(len(h), room)
            buf[:k] = h[:k]
            self.head = h[k:]
            return k
        if self.left == _ECHO:
            return None  # nothing to echo yet
        k = min(self.left, room, len(_BODY))
        buf[:k] = _BODY[:k]
        self.left -= k
        return k

    def read(self, n):
        # a new bytes object per read, as a real socket makes one
        b = bytearray(min(n, len(_BODY)))
        return bytes(memoryview(b)[: self.readinto(b)])

    def recv(self, n):
        # one read, as Connection reads a head: a new bytes object, None while nothing is there (as a TLS socket's)
        b = bytearray(min(n, len(_BODY)))
        k = self.readinto(b)
        return None if k is None else bytes(memoryview(b)[:k])

    def close(self):
        pass


def _upgrade(request):
    import binascii
    import hashlib

    key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
    accept = binascii.b2a_base64(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).strip()
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
           b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"


def _echo(frame):
    # a client's frame (masked, under 64 KB) -> the same frame as a server sends it (unmasked)
    n = frame[1] & 0x7F
    at = 4 if n == 126 else 2
    key, payload = frame[at : at + 4], frame[at + 4 :]
    n = len(payload)
    unmasked = (int.from_bytes(payload, "little") ^ int.from_bytes((key * (n // 4 + 1))[:n], "little"))
    return frame[:1] + bytes([frame[1] & 0x7F]) + frame[2:at] + unmasked.to_bytes(n, "little")
