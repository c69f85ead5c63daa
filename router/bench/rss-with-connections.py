#!/usr/bin/env python3
"""Measures a proxy's resident memory with many open client connections.

Opens N connections to 127.0.0.1:PORT, sends one HTTP/1.1 request on each and reads the
response, keeps every connection open, and prints the VmRSS (and its anonymous and file-backed
parts) of process PID before and after.

    router/bench/rss-with-connections.py PORT PID [N=1000]

Under load instead (every connection busy), run `wrk -t1 -c1000 -d10s http://127.0.0.1:PORT/`
and read /proc/PID/status while it runs.
"""
import asyncio
import resource
import sys


def memory(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return "VmRSS {VmRSS} kB (anon {RssAnon} kB, file {RssFile} kB)".format(**fields)


async def one(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return reader, writer


async def main(port, pid, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    print("before:", memory(pid))
    conns = []
    for start in range(0, n, 100):
        conns += await asyncio.gather(*[one(port) for _ in range(min(100, n - start))])
    await asyncio.sleep(1)
    print(f"with {len(conns)} open connections:", memory(pid))
    for _, writer in conns:
        writer.close()


if __name__ == "__main__":
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    asyncio.run(main(port, pid, n))
