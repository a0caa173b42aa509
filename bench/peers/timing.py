"""Timing shared by the peer scripts, as bench/common.h's best_seconds:
one warm-up call, then `reps` windows of at least `window` seconds each (as
many calls as fit), the best window's mean seconds per call."""
import time


def best_time(f, reps, window):
    f()
    best = 1e30
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while True:
            f()
            n += 1
            s = time.perf_counter() - t0
            if s >= window:
                break
        best = min(best, s / n)
    return best
