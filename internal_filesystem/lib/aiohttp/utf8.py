# Strict UTF-8 on top of MicroPython's decoder, which checks the shape of each sequence only: what it takes and UTF-8
# has not (overlong forms, surrogates, code points past U+10FFFF). For text() in another charset than plain UTF-8,
# and websocket text that is not plain ASCII; loaded with the first of them.

# Lead bytes no UTF-8 has (C0, C1, F5 to F7: the decoder refuses F8 on), and lead bytes UTF-8 allows fewer second
# bytes after (low, high)
_NEVER_LEADS = (b"\xc0", b"\xc1", b"\xf5", b"\xf6", b"\xf7")  # (bytes in bytes searches in C, an int byte by byte)
_NARROW_LEADS = ((0xE0, 0xA0, 0xBF), (0xED, 0x80, 0x9F), (0xF0, 0x90, 0xBF), (0xF4, 0x80, 0x8F))


def lax(data):
    # -> whether data (bytes), which MicroPython's decoder took, holds a sequence UTF-8 has not
    for lead in _NEVER_LEADS:
        if lead in data:
            return True
    for lead, low, high in _NARROW_LEADS:
        i = data.find(bytes((lead,)))
        while i >= 0:  # (the decoder took it: a continuation byte follows)
            if not low <= data[i + 1] <= high:
                return True
            i = data.find(bytes((lead,)), i + 2)
    return False
