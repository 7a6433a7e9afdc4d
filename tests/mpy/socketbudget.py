# A socket module with a budget, for tests on the unix port: Budget(n).install() puts it where aiohttp/connection.py
# finds `socket`, and from then on at most n of the sockets the client makes are open at once; one more raises
# OSError(ENFILE), as an ESP32's lwIP does once its ~10 sockets are taken. connect() can be made to fail instead
# (a Wi-Fi that went away). Never frozen.
import socket as _real

ENFILE = 23  # lwIP's "no socket left" (MicroPython's errno module has no name for it)


class Budget:
    def __init__(self, sockets, code=ENFILE):
        self.sockets = sockets  # open at once, at most
        self.code = code  # the errno a socket() over the budget raises
        self.connect_error = None  # an errno connect() raises (None: connects go through)
        self.connect_fails = None  # how many sockets' connects fail so, None: all of them
        self.opened = 0  # sockets made so far
        self.made = []  # the sockets made and not yet seen closed
        self.refused = 0  # socket() calls refused so far
        self.most = 0  # the most open at once
        self.SOCK_STREAM = _real.SOCK_STREAM
        self.AF_INET = _real.AF_INET

    def install(self):
        import aiohttp.connection

        aiohttp.connection.socket = self
        return self

    def open_now(self):
        # a socket closed by the client has given its descriptor back: fileno() says -1
        self.made = [s for s in self.made if s.fileno() >= 0]
        return len(self.made)

    def socket(self, *args):
        if self.open_now() >= self.sockets:
            self.refused += 1
            raise OSError(self.code)
        made = _real.socket(*args)
        self.made.append(made)
        self.most = max(self.most, len(self.made))
        self.opened += 1
        if self.connect_error is None or self.connect_fails == 0:
            return made
        if self.connect_fails is not None:
            self.connect_fails -= 1
        return _Unreachable(made, self.connect_error)


class _Unreachable:
    # A socket whose connect() fails with `code`, as on a network that went away; the rest is the real socket's
    def __init__(self, sock, code):
        self.sock = sock
        self.code = code

    def connect(self, address):
        raise OSError(self.code)

    def __getattr__(self, name):
        return getattr(self.sock, name)
