"""How `moa serve` holds up against hostile clients, measured on a real `moa serve` process
(uvicorn, default limits unless given) on 127.0.0.1 in front of the fake provider:

- a 50 MB body: status, seconds to the answer, the server's RSS before and after;
- N slowloris clients (request headers never finished): a normal request's latency during
  the flood vs before it, and how long until the server closed every slow connection;
- a config alias bomb: `moa validate` seconds and peak RSS.

    python benchmarks/server_limits.py [--slow-clients 400] [--header-timeout 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fake_provider_process, machine

CONFIG = """
proposal_layers:
  - neurons:
    - {model: "0ms/P"}
aggregation_layer:
  model: "0ms/AGG"
"""
QUERY = {"model": "solo", "messages": [{"role": "user", "content": "q"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed_query(url: str) -> float:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/chat/completions", json=QUERY, timeout=120)
    response.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow-clients", type=int, default=400)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    args = parser.parse_args()
    print(machine())
    workdir = Path(tempfile.mkdtemp(prefix="moa-bench-"))
    (workdir / "solo.yaml").write_text(CONFIG)
    with fake_provider_process() as base_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "BASE_URL": base_url, "PROVIDER_API_KEY": "sk-bench-not-a-real-key"}
        command = [sys.executable, "-m", "moa", "serve", "-c", "solo.yaml", "--port", str(port),
                   "--header-timeout", str(args.header_timeout)]  # fmt: skip
        server = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(f"{url}/health", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("moa serve did not start") from None
                    time.sleep(0.2)
            baseline = sorted(timed_query(url) for _ in range(5))[2]
            before = rss_kib(server.pid)
            body = b'{"model": "solo", "messages": [{"role": "user", "content": "'
            body += b"x" * (50 << 20) + b'"}]}'
            started = time.perf_counter()
            huge = httpx.post(f"{url}/v1/chat/completions", content=body, timeout=120)
            huge_s = time.perf_counter() - started
            after = rss_kib(server.pid)
            print(f"50 MB body: HTTP {huge.status_code} in {huge_s:.3f} s; server RSS "
                  f"{before / 1024:.0f} -> {after / 1024:.0f} MiB")  # fmt: skip

            slow: list[socket.socket] = []
            started = time.perf_counter()
            for _ in range(args.slow_clients):
                conn = socket.create_connection(("127.0.0.1", port))
                conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                slow.append(conn)
            during = sorted(timed_query(url) for _ in range(5))[2]
            limit = time.monotonic() + args.header_timeout * 3 + 60
            closed = 0
            for conn in slow:
                conn.settimeout(max(0.1, limit - time.monotonic()))
                try:
                    while conn.recv(4096):
                        pass
                    closed += 1
                except ConnectionResetError:
                    closed += 1
                except TimeoutError:
                    pass
                conn.close()
            all_closed = time.perf_counter() - started
            n = args.slow_clients
            print(f"{n} slowloris clients: normal request p50 {baseline * 1000:.1f} ms "
                  f"before, {during * 1000:.1f} ms during; {closed}/{n} closed by "
                  f"the server {all_closed:.1f} s after the flood began "
                  f"(header timeout {args.header_timeout:g} s)")  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_config_limits import _bomb

    (workdir / "bomb.yaml").write_text(_bomb())
    probe = (
        "import resource, runpy, sys, time\n"
        "sys.argv = ['moa', 'validate', 'bomb.yaml']\n"
        "started = time.perf_counter()\n"
        "try:\n    runpy.run_module('moa', run_name='__main__')\n"
        "except SystemExit as exit:\n    code = exit.code\n"
        "print(code, time.perf_counter() - started,"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=workdir, capture_output=True,
                          text=True, check=False)  # fmt: skip
    code, seconds, peak = done.stdout.split()[-3:]
    print(f"alias bomb ({(workdir / 'bomb.yaml').stat().st_size} bytes, 9^9 values expanded): "
          f"moa validate exit {code} in {float(seconds):.3f} s (imports included), peak RSS "
          f"{int(peak) / 1024:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
