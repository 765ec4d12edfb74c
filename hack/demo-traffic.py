"""Live traffic for `make demo-canary`: iris requests at a fixed rate, bounded in rate and time.

    .venv/bin/python hack/demo-traffic.py URL [--rate 20] [--seconds 600]

URL must be a ClusterIP or pod address that `hack/demo` has checked is routed into the local
cluster's node. Flowers are drawn from scikit-learn's iris data, so both versions' answers vary
like real traffic. Prints a summary line (sent, answered by status) when it stops (SIGTERM or time).
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import time
import urllib.error
import urllib.request

from sklearn.datasets import load_iris

MAX_RATE = 50.0
MAX_SECONDS = 900.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument(
        "--rate", type=float, default=20.0, help=f"requests per second (at most {MAX_RATE:g})"
    )
    parser.add_argument("--seconds", type=float, default=600.0, help=f"how long (at most {MAX_SECONDS:g})")
    args = parser.parse_args(argv)
    rate, seconds = min(args.rate, MAX_RATE), min(args.seconds, MAX_SECONDS)
    flowers = load_iris().data.astype(float).round(1).tolist()
    codes: collections.Counter[str] = collections.Counter()
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    deadline = time.monotonic() + seconds
    sent = 0
    # The URL is in the local cluster: no proxy, whatever HTTP_PROXY and friends say (urllib's
    # default opener would send even a ClusterIP to them).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while not stop and time.monotonic() < deadline:
        flower = flowers[sent % len(flowers)]
        body = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": flower}]})
        request = urllib.request.Request(
            args.url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        sent += 1
        try:
            with opener.open(request, timeout=5) as response:
                codes[str(response.status)] += 1
        except urllib.error.HTTPError as exc:
            codes[str(exc.code)] += 1
        except OSError as exc:
            codes[type(exc).__name__] += 1
        time.sleep(max(0.0, 1.0 / rate))
    print(f"traffic: {sent} requests sent, answers: {dict(sorted(codes.items()))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
