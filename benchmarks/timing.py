"""Process CPU time and wall time of one call, for the benchmarks that report both."""
import time


def timed(fn, *args):
    """Call ``fn(*args)`` -> (its result, process CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall
