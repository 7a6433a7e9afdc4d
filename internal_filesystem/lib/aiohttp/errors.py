# The client's exceptions, with CPython aiohttp's names and hierarchy where MicroPython allows it.
#
# The classes (client_exceptions.py) are made when one of them is first named (module __getattr__), all at once:
# each is heap (docs/performance.md), and a download that goes well names none. The modules raise them as
# `errors.ServerDisconnectedError(...)` and test what they caught with kind_of(), which makes none (an exception
# passing by, a MemoryError in a full heap, is no reason to); `from .errors import X` makes them too. They live in a
# table of their own, published whole: this module's globals never change after import (a thread reading them while
# another grows them could miss a name on a port without a global interpreter lock), and a MemoryError part way
# publishes none.

from .loading import one_at_a_time as _one_at_a_time

_made = None  # name -> class, once made


def __getattr__(name):
    made = _made or _one_at_a_time(_make)  # threads name them at once when the network drops under all of them
    if name == "__all__":  # `from aiohttp.errors import *`
        return list(made)
    if name not in made:
        raise AttributeError(name)
    return made[name]


def kind_of(e, name):
    # isinstance(e, <the class called name>), without making the classes for it: while none is made, nothing is one
    return _made is not None and isinstance(e, _made[name])


def raise_if_retyped(memory, e):
    # memory: e was a MemoryError when caught, read before a cleanup. Made in a full heap, e is MicroPython's one
    # emergency exception object, which an exception the cleanup made in that heap retypes: raised as one again.
    if memory and not isinstance(e, MemoryError):
        raise MemoryError


def _make():
    # Once only: a second set would not catch the first's exceptions
    global _made
    if _made is None:  # (another thread may have made them meanwhile)
        from . import client_exceptions  # (loaded only now: see its header)

        _made = client_exceptions.classes()
    return _made

