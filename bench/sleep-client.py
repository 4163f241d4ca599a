#!/usr/bin/env python3
"""bench/sleep-client.py: N clients, one request each, all sent at the same moment.

    sleep-client.py --url http://127.0.0.1:PORT/PATH -n N --timeout S
                    [--host NAME] [--expect TEXT] [--server-pid PID]

Used by bench/sleep. Opens N TCP connections to the URL's address (at most
--connect-concurrency connect attempts in flight, so that the server's
listen backlog does not overflow), waits until every one is open, then
writes one `GET PATH HTTP/1.1` with `Connection: close` on each of them in
one go, and reads each answer until the server closes the connection.

Prints one JSON object on stdout:
  n, connected, connect_s    connections opened and the time it took
  wall_s                     from the moment the requests were sent until
                             the last one ended (answered or failed)
  timed_out                  true if --timeout ran out first: the requests
                             still open then count as failed ("timeout")
  status                     {"200": count, "503": count, ...}
  failed                     {"connect": c, "closed": c, "timeout": c, ...}
  body_mismatch              answers with status 200 whose body lacks --expect
  p50_s, max_s               latency of the answered requests, from the send
  rss_before_kib, rss_peak_kib, rss_after_kib
                             resident memory of --server-pid and all its
                             descendants (sum of /proc/PID/statm), before the
                             connections are opened, the highest seen while
                             they are open (sampled every --sample-ms), and
                             after the last one ended
  cpu_s                      utime+stime (with reaped children) of that
                             process tree from before the connections were
                             opened until the last request ended

Raises its own RLIMIT_NOFILE to the hard limit. Only for loopback use.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import threading
import time
import urllib.parse

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"sleep-client: {message}", file=sys.stderr, flush=True)


# --- the server's process tree, from /proc ------------------------------------


def stat_fields(pid):
    """Fields of /proc/PID/stat from the third (state) on, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            line = f.read()
    except OSError:
        return None
    return line[line.rindex(")") + 2 :].split()


def tree(root):
    """root and all its descendants."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(name)
        if fields:
            children.setdefault(int(fields[1]), []).append(int(name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields:
            # utime, stime, cutime, cstime: fields 14-17 of the whole line
            total += sum(int(x) for x in fields[11:15])
    return total


class Sampler(threading.Thread):
    """The peak RSS of a process tree, sampled until stopped."""

    def __init__(self, root, interval):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.pids = tree(root)
        self.peak = rss_kib(self.pids)
        self.done = threading.Event()

    def run(self):
        last_tree = time.monotonic()
        while not self.done.wait(self.interval):
            if time.monotonic() - last_tree > 1.0:  # workers may come and go
                self.pids = tree(self.root)
                last_tree = time.monotonic()
            self.peak = max(self.peak, rss_kib(self.pids))

    def stop(self):
        self.done.set()
        self.join()
        self.pids = tree(self.root)
        self.peak = max(self.peak, rss_kib(self.pids))


# --- the clients ----------------------------------------------------------------


async def run(args):
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        raise SystemExit(f"sleep-client: only http://HOST:PORT/PATH URLs: {args.url}")
    address, port = url.hostname, url.port or 80
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host = args.host or url.netloc
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-sleep\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()

    sampler = None
    cpu_before = 0
    if args.server_pid:
        sampler = Sampler(args.server_pid, args.sample_ms / 1000)
        rss_before = sampler.peak
        cpu_before = cpu_ticks(sampler.pids)
        sampler.start()

    deadline = time.monotonic() + args.timeout
    failed = {}
    status = {}
    latencies = []
    body_mismatch = 0

    def fail(kind):
        failed[kind] = failed.get(kind, 0) + 1

    # 1. open every connection
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def connect():
        async with gate:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(address, port),
                    max(0.1, deadline - time.monotonic()),
                )
            except asyncio.TimeoutError:
                fail("connect timeout")
            except OSError as error:
                fail(f"connect: {error.strerror or type(error).__name__}")
            return None

    t_connect = time.monotonic()
    opened = [c for c in await asyncio.gather(*(connect() for _ in range(args.n))) if c]
    connect_s = time.monotonic() - t_connect
    if len(opened) < args.n:
        log(f"only {len(opened)} of {args.n} connections opened")
    await asyncio.sleep(args.settle_ms / 1000)  # let the server accept the last ones

    # 2. one request on each, all at once; each read until the server closes
    async def exchange(reader):
        """(failure kind or None, status, end time, body)"""
        try:
            data = await reader.read()
        except (ConnectionError, OSError):
            return ("closed", None, time.monotonic(), None)
        end = time.monotonic()
        head, _, body = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return ("closed" if not data else "malformed answer", None, end, None)
        return (None, int(parts[1]), end, body)

    t_sent = time.monotonic()
    tasks = []
    for reader, writer in opened:
        try:
            writer.write(request)
        except (ConnectionError, OSError):
            fail("send")
            continue
        tasks.append(asyncio.ensure_future(exchange(reader)))
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic())) if tasks else (set(), set())
    t_end = time.monotonic()
    for task in pending:
        task.cancel()
        fail("timeout")
    ends = []
    for task in done:
        kind, code, end, body = task.result()
        ends.append(end)
        if kind:
            fail(kind)
            continue
        status[str(code)] = status.get(str(code), 0) + 1
        latencies.append(end - t_sent)
        if code == 200 and args.expect and args.expect.encode() not in body:
            body_mismatch += 1
    # until the last request ended (answered or failed), or the timeout
    last = (t_end if pending or not ends else max(ends)) - t_sent
    for _, writer in opened:
        writer.close()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)

    result = {
        "n": args.n,
        "connected": len(opened),
        "connect_s": round(connect_s, 4),
        "wall_s": round(last, 4),
        "timed_out": bool(pending),
        "status": status,
        "failed": failed,
        "body_mismatch": body_mismatch,
    }
    if latencies:
        latencies.sort()
        result["p50_s"] = round(latencies[(len(latencies) - 1) // 2], 4)
        result["max_s"] = round(latencies[-1], 4)
    if sampler:
        sampler.stop()
        result["rss_before_kib"] = rss_before
        result["rss_peak_kib"] = sampler.peak
        result["rss_after_kib"] = rss_kib(sampler.pids)
        result["cpu_s"] = round((cpu_ticks(sampler.pids) - cpu_before) / CLK_TCK, 3)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("-n", type=int, required=True, help="clients (connections, one request each)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds for the whole run")
    parser.add_argument("--host", help="Host header (default: the URL's)")
    parser.add_argument("--expect", help="text every 200 answer's body must contain")
    parser.add_argument("--server-pid", type=int, help="measure RSS and CPU of this process tree")
    parser.add_argument("--sample-ms", type=float, default=20)
    parser.add_argument("--connect-concurrency", type=int, default=256)
    parser.add_argument("--settle-ms", type=float, default=200)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.n + 64:
        raise SystemExit(f"sleep-client: the hard limit of open files ({hard}) is below {args.n + 64}")
    if soft != resource.RLIM_INFINITY and soft < args.n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    print(json.dumps(asyncio.run(run(args)), sort_keys=True))


if __name__ == "__main__":
    main()
