# Chunk extensions (";name=value" after a chunk's size, RFC 9112 section 7.1.1), checked so that a size line that is
# none is not taken for one. Loaded with the first extension: servers seldom send any.

from .response import TOKEN


def extensions_ok(text):
    # *( BWS ";" BWS name [ BWS "=" BWS value ] ), a name a token, a value a token or a quoted string
    i, end = 0, len(text)
    while True:
        blank = i
        while i < end and text[i] in b" \t":
            i += 1
        if i == end:
            return i == blank  # (blanks come before a ";" only: "1a\t" is no size line)
        if text[i] != 59:  # ";"
            return False
        i = _skip_token(text, _skip_blanks(text, i + 1))
        if i < 0:
            return False
        j = _skip_blanks(text, i)
        if j < end and text[j] == 61:  # "="
            i = _skip_blanks(text, j + 1)
            i = _skip_quoted(text, i) if i < end and text[i] == 34 else _skip_token(text, i)
            if i < 0:
                return False


def _skip_blanks(text, i):
    while i < len(text) and text[i] in b" \t":
        i += 1
    return i


def _skip_token(text, i):
    # -> past the token at i, or -1 when there is none
    start = i
    while i < len(text) and text[i] in TOKEN:
        i += 1
    return i if i > start else -1


def _skip_quoted(text, i):
    # -> past the quoted string at i (its opening quote), or -1 when it does not end or holds a control byte
    i += 1
    while i < len(text):
        b = text[i]
        if b == 34:
            return i + 1
        if b == 92:  # a backslash: the next byte as it is
            i += 1
        elif b < 32 and b != 9 or b == 127:
            return -1
        i += 1
    return -1
