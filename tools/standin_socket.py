# `socket` for MicroPython's webassembly port, which has none: enough of one for `make bench` to run real
# downloads on a 32-bit MicroPython (tools/wasm32.mjs). It answers GET /bytes/N with N bytes and is always ready,
# so the client never parks a task in the event loop (the port's asyncio has no poller). Small on purpose: it
# stands in for the ESP32's socket object, a few words of heap.
AF_INET = 2
SOCK_STREAM = 1
_BODY = bytes(range(256)) * 4


def getaddrinfo(host, port, *args):
    return [(AF_INET, SOCK_STREAM, 0, "", (host, port))]


class socket:
    def __init__(self, *args):
        self.left = -1  # body bytes still to send; -1 until the request came

    def setblocking(self, flag):
        pass

    def connect(self, addr):
        pass

    def write(self, data):
        if self.left < 0:
            n = int(bytes(data[:64]).split(b" ")[1].split(b"/")[-1])
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
        k = min(self.left, room, len(_BODY))
        buf[:k] = _BODY[:k]
        self.left -= k
        return k

    def read(self, n):
        # a new bytes object per read, as a real socket makes one
        b = bytearray(min(n, len(_BODY)))
        return bytes(memoryview(b)[: self.readinto(b)])

    def close(self):
        pass
