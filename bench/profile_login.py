#!/usr/bin/env python3
"""Registers a user on auth-svc at ADDR and prints an access token (for bench/profile.sh), speaking gRPC
through nghttp with hand-encoded messages: the profile needs no gRPC library."""

import subprocess
import sys


def field(number, text):
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data


def call(addr, method, message):
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    out = subprocess.run(
        ["nghttp", "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", "-",
         f"http://{addr}/auth.v1.AuthService/{method}"],
        input=body, capture_output=True, check=True).stdout
    if len(out) < 5:
        sys.exit(f"{method}: no response message (wrong password policy? auth-svc's log says)")
    return out[5:5 + int.from_bytes(out[1:5], "big")]


def main():
    addr = sys.argv[1]
    credentials = field(1, "profiler") + field(2, "a long enough profiling password")
    call(addr, "Register", credentials)
    reply = call(addr, "Login", credentials)
    # LoginResponse.access_token is field 1, a string: tag, varint length, bytes.
    if reply[0] != 0x0A:
        sys.exit("Login: unexpected reply")
    length, shift, i = 0, 0, 1
    while True:
        length |= (reply[i] & 0x7F) << shift
        shift += 7
        i += 1
        if reply[i - 1] < 0x80:
            break
    print(reply[i:i + length].decode())


if __name__ == "__main__":
    main()
