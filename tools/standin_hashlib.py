# `hashlib` for MicroPython's webassembly port, whose hashlib has no sha1: the built-in one's names, and a SHA-1
# (FIPS 180-4) in plain Python, enough for the websocket handshakes of `make bench`'s 32-bit heap figures
# (tools/wasm32.mjs puts it on that port's path as hashlib.py). Slow and for a few short inputs only.
from uhashlib import *  # noqa: F401,F403 (the built-in module: this file extends it)

_MASK = 0xFFFFFFFF


def _rotl(x, n):
    return (x << n | x >> 32 - n) & _MASK


class sha1:
    def __init__(self, data=b""):
        self._data = bytes(data)

    def update(self, data):
        self._data += bytes(data)

    def digest(self):
        m = self._data
        m += b"\x80" + bytes((55 - len(m)) % 64) + (len(m) * 8).to_bytes(8, "big")
        h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
        for i in range(0, len(m), 64):
            w = [int.from_bytes(m[i + j : i + j + 4], "big") for j in range(0, 64, 4)]
            for j in range(16, 80):
                w.append(_rotl(w[j - 3] ^ w[j - 8] ^ w[j - 14] ^ w[j - 16], 1))
            a, b, c, d, e = h
            for j in range(80):
                if j < 20:
                    f, k = b & c | ~b & d, 0x5A827999
                elif j < 40:
                    f, k = b ^ c ^ d, 0x6ED9EBA1
                elif j < 60:
                    f, k = b & c | b & d | c & d, 0x8F1BBCDC
                else:
                    f, k = b ^ c ^ d, 0xCA62C1D6
                a, b, c, d, e = (_rotl(a, 5) + f + e + k + w[j]) & _MASK, a, _rotl(b, 30), c, d
            h = [(x + y) & _MASK for x, y in zip(h, (a, b, c, d, e))]
        return b"".join(x.to_bytes(4, "big") for x in h)
