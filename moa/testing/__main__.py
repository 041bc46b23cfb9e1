"""Run the fake provider on its own: `python -m moa.testing [--port 8099] [--latency 0.05]`.

Useful for benchmarks (the client's CPU is then measured without the server's) and for
trying a config by hand: point `BASE_URL` at the printed address.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from moa.testing._server import FakeProvider, Reply


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moa.testing", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--stream-delay", type=float, default=0.0, help="seconds between chunks")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeProvider(host=args.host, port=args.port) as provider:
        provider.set_default(Reply(latency=args.latency, stream_delay=args.stream_delay))
        print(provider.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
