"""Wall time of a call, on a GPU or the CPU.

A GPU runs kernels asynchronously, so a timer must wait for the device before reading the clock.
"""

import statistics
import time

import torch


def median_time(fn, *args, repeats: int = 5, warmup: int = 1, **kwargs) -> float:
    """Median wall time, in seconds, of `fn(*args, **kwargs)` after `warmup` untimed calls.

    The device to wait for is taken from the first tensor argument (CPU if there is none).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}"
        )
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))

    def wait():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        wait()
        start = time.perf_counter()
        fn(*args, **kwargs)
        wait()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
