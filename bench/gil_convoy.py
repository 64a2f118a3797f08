"""Why the live CAM's models run in a worker process: a torch forward beside busy Python threads.

    python -m bench.gil_convoy --busy 0 1 4 --switch-ms 5 1

Each torch call gives the GIL back and takes it again; beside threads running pure Python (the
dashboard's other sessions) every re-take can wait for the running thread's switch interval. This
times a resnet18 forward (3 x 224 px, one torch thread, no_grad) with N such threads running.
Prints one line per (switch interval, busy threads); numbers go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time


def forward_ms(busy: int, switch_s: float, repeats: int = 10) -> tuple[float, float]:
    """(median, max) ms of a resnet18 forward with `busy` pure-Python threads running."""
    import torch
    import torchvision

    torch.set_num_threads(1)
    before = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.rand(1, 3, 224, 224)
    stop = threading.Event()

    def spin():
        n = 0
        while not stop.is_set():
            for i in range(1000):
                n += i * i

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(busy)]
    for t in threads:
        t.start()
    try:
        with torch.no_grad():
            model(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(before)
    times.sort()
    return times[len(times) // 2], times[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 4], help="busy Python threads (default 0 1 4)")
    ap.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 1.0],
                    help="sys.setswitchinterval values in ms (default 5, Python's own, and 1)")
    args = ap.parse_args(argv)
    for switch in args.switch_ms:
        for busy in args.busy:
            median, worst = forward_ms(busy, switch / 1000)
            print(f"switch {switch:g} ms, {busy} busy threads: forward median {median:.0f} ms, max {worst:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
