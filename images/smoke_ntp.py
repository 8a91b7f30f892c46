#!/usr/bin/env python3
"""A minimal SNTP server for the smoke test: answers NTP client requests on 127.0.0.1:123
with the host's clock (stratum 1), so the booted guest's systemd-timesyncd can synchronise.
Under qemu's user networking the guest reaches it as 10.0.2.2:123. It stops by itself after
--seconds; the number of answers is printed when it stops.

    smoke_ntp.py [--seconds N]
"""
import argparse
import signal
import socket
import struct
import time

NTP_EPOCH = 2208988800  # 1900-01-01 to 1970-01-01, seconds


def ntp_ts(t):
    secs = int(t)
    return struct.pack("!II", secs + NTP_EPOCH, int((t - secs) * (1 << 32)) & 0xFFFFFFFF)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--port", type=int, default=123)
    args = ap.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", args.port))
    deadline = time.monotonic() + args.seconds
    print("smoke_ntp: listening on 127.0.0.1:%d" % args.port, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit()))
    try:
        serve(s, deadline)
    finally:
        print("smoke_ntp: answered %d requests" % ANSWERED[0], flush=True)


ANSWERED = [0]


def serve(s, deadline):
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(512)
        except socket.timeout:
            break
        recv = time.time()
        if len(data) < 48:
            continue
        version = (data[0] >> 3) & 7
        if data[0] & 7 != 3:  # only client requests (mode 3)
            continue
        reply = struct.pack(
            "!BBBb4s4s4s",
            (0 << 6) | (version << 3) | 4,  # no leap warning, client's version, mode 4 (server)
            1,  # stratum 1
            data[2],  # poll: the client's
            -20,  # precision, about 1 microsecond
            b"\0\0\0\0",  # root delay
            b"\0\0\0\x10",  # root dispersion, about 0.25 ms
            b"HEXA",  # reference id
        )
        reply += ntp_ts(recv - 1) + data[40:48] + ntp_ts(recv) + ntp_ts(time.time())
        s.sendto(reply, peer)
        ANSWERED[0] += 1


if __name__ == "__main__":
    main()
