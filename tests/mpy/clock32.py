# The clock of a 32-bit port, for tests on the 64-bit unix port (whose ticks never wrap): an ESP32's ticks_ms counts
# 30 bits and starts again from 0 every 2**30 ms, 12.4 days; ticks_diff tells two times apart within half that.
# A module of its own: testlib's every function is heap in each snippet, and some tests measure a small heap.
from time import ticks_diff as _real_diff, ticks_ms as _real_ms

_PERIOD = 1 << 30


def clock_of_a_32_bit_port(modules, now):
    # Gives the modules that took ticks_ms, ticks_add and ticks_diff from time the 32-bit clock, reading `now` ms at
    # first (the real time passing on from there). -> a one-item list: add to its item to move the clock on (days,
    # in an instant).
    began = _real_ms()
    ahead = [now]

    def ticks_ms():
        return (_real_diff(_real_ms(), began) + ahead[0]) % _PERIOD

    def ticks_add(ticks, delta):
        if not -_PERIOD // 2 < delta < _PERIOD // 2:  # (as the port refuses it: ticks_diff could not tell it back)
            raise OverflowError("ticks interval overflow")
        return (ticks + delta) % _PERIOD

    def ticks_diff(end, start):
        return (end - start + _PERIOD // 2) % _PERIOD - _PERIOD // 2

    for module in modules:
        module.ticks_ms, module.ticks_add, module.ticks_diff = ticks_ms, ticks_add, ticks_diff
    return ahead
