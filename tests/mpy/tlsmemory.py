# An SSLContext short of memory, for tests on the unix port: TLSMemory(n) makes TLS sockets as an unverified context
# does while fewer than n of them are open; one more fails for want of memory, as MicroPython's mbedTLS does when an
# ESP32's IDF heap has no room for its buffers: at its handshake (the first write: OSError(ENOMEM), or mbedTLS's own
# code for a certificate chain it found no room for), or at wrap_socket. Pass it as ssl=. Never frozen.
import errno
import tls

X509_ALLOC_FAILED = -0x2880  # MBEDTLS_ERR_X509_ALLOC_FAILED, as MicroPython's OSError carries it


class TLSMemory:
    def __init__(self, connections, code=errno.ENOMEM, at_wrap=False):
        self.connections = connections  # TLS sockets open at once, at most
        self.code = code  # the errno of the OSError a socket over them raises; None: MemoryError
        self.at_wrap = at_wrap  # wrap_socket raises it (else the handshake does)
        self.tcp = []  # the TCP sockets under the TLS sockets made, not yet seen closed
        self.refused = 0  # TLS sockets that found no memory so far
        self.ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        self.ctx.verify_mode = tls.CERT_NONE

    def wrap_socket(self, sock, **kw):
        # a TCP socket closed by the client has given its descriptor back: fileno() says -1
        self.tcp = [s for s in self.tcp if s.fileno() >= 0]
        if len(self.tcp) < self.connections:
            self.tcp.append(getattr(sock, "tcp", sock))  # (the client hands its TCP socket over in a _Wire)
            return self.ctx.wrap_socket(sock, **kw)
        self.refused += 1
        if self.at_wrap:
            self.fail()
        return _NoMemory(self)

    def fail(self):
        if self.code is None:
            raise MemoryError
        raise OSError(self.code)


class _NoMemory:
    # A TLS socket whose handshake finds no memory: its first write fails
    def __init__(self, context):
        self.context = context

    def setblocking(self, flag):
        pass

    def write(self, data):
        self.context.fail()

    def close(self):
        pass
