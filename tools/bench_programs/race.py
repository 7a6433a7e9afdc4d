# make bench's program "race" (tools/bench.py puts it in front of the programs that time sides against each other).
import gc, time

async def race(name, sides, before=None, **extra):
    # sides: [(side, async function)]. Every round runs each side once, the order turning by one each round so that
    # no side always follows the same other; each side keeps its best round (microseconds). before() runs untimed.
    best = {}
    n = len(sides)
    for i in range(ROUNDS):
        for side, fn in sides[i % n:] + sides[:i % n]:
            if before:
                before()
            gc.collect()
            t0 = time.ticks_us()
            await fn()
            dt = time.ticks_diff(time.ticks_us(), t0)
            best[side] = min(best.get(side, dt), dt)
    result(name=name, us=best, **extra)
