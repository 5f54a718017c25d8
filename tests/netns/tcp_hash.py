#!/usr/bin/env python3
"""A TCP transfer checked end to end by hash, for the netns tests.

    tcp_hash.py serve PORT TIMEOUT          accept one connection, read to EOF, answer
                                            "<bytes> <sha256>"; prints "listening" first
    tcp_hash.py send HOST PORT BYTES SEED [RATE]
                                            send BYTES of the pseudo-random stream SEED
                                            (at most RATE bytes/s), then check the
                                            server's answer

The stream is random.Random(SEED).randbytes in 64 KiB pieces, so a test can know bytes
of it without the file (scenarios.payload_samples). Exit status 0 only when the server
received exactly what was sent.
"""

import hashlib
import random
import socket
import sys
import time

CHUNK = 65536


def serve(port, timeout):
    with socket.create_server(("0.0.0.0", port)) as server:
        server.settimeout(timeout)
        print("listening", flush=True)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(timeout)
            digest, count = hashlib.sha256(), 0
            while chunk := conn.recv(CHUNK):
                digest.update(chunk)
                count += len(chunk)
            conn.sendall(f"{count} {digest.hexdigest()}\n".encode())
    return 0


def send(host, port, nbytes, seed, rate=None):
    rng, digest, sent = random.Random(seed), hashlib.sha256(), 0
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as conn:
        while sent < nbytes:
            chunk = rng.randbytes(CHUNK)[:nbytes - sent]
            digest.update(chunk)
            conn.sendall(chunk)
            sent += len(chunk)
            if rate:
                ahead = start + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while part := conn.recv(4096):
            reply += part
    seconds = time.monotonic() - start
    expected = f"{nbytes} {digest.hexdigest()}"
    got = reply.decode(errors="replace").strip()
    if got != expected:
        print(f"MISMATCH: sent {expected}, server got {got}")
        return 1
    print(f"ok {nbytes} bytes sha256 {digest.hexdigest()[:16]} in {seconds:.2f} s "
          f"({nbytes * 8 / seconds / 1e6:.1f} Mbit/s)")
    return 0


def main(argv):
    if len(argv) == 3 and argv[0] == "serve":
        return serve(int(argv[1]), float(argv[2]))
    if len(argv) in (5, 6) and argv[0] == "send":
        rate = int(argv[5]) if len(argv) == 6 else None
        return send(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), rate)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
