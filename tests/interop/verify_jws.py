#!/usr/bin/env python3
"""Independent check of a hexa record signature with Python's jwcrypto and rfc8785.

Reads one JSON object on stdin:
  {"jwk": <public JWK>, "payload_json": <JSON text>, "signed_payload": <the UTF-8 text Rust signed>,
   "jws": "<header>..<signature>"}
canonicalizes payload_json with rfc8785 (RFC 8785), checks the result equals the bytes Rust
signed, and verifies the detached compact JWS (RFC 7515 appendix F, alg EdDSA) with jwcrypto.
Exit status: 0 verified, 1 rejected, 2 usage or environment error (missing packages).
"""

import base64
import json
import sys

try:
    import rfc8785
    from jwcrypto import jwk, jws
    from jwcrypto.common import JWException
except ImportError as e:  # pragma: no cover - environment problem, reported to the Rust test
    print(
        f"missing Python package ({e}); run: python3 -m pip install -r tests/interop/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(2)


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def main() -> int:
    try:
        req = json.load(sys.stdin)
        key = jwk.JWK(**req["jwk"])
        payload = json.loads(req["payload_json"])
        signed = req["signed_payload"].encode("utf-8")
        token = req["jws"]
    except (KeyError, ValueError, TypeError) as e:
        print(f"bad input: {e}", file=sys.stderr)
        return 2

    canonical = rfc8785.dumps(payload)
    if canonical != signed:
        print("rfc8785 canonical form differs from the bytes hexa signed", file=sys.stderr)
        print(f"  python: {canonical!r}", file=sys.stderr)
        print(f"  rust:   {signed!r}", file=sys.stderr)
        return 1

    parts = token.split(".")
    if len(parts) != 3 or parts[1] != "":
        print("not a detached compact JWS", file=sys.stderr)
        return 1
    header = json.loads(b64url_decode(parts[0]))
    if header.get("alg") not in ("EdDSA", "Ed25519"):
        print(f"unexpected alg {header.get('alg')!r}", file=sys.stderr)
        return 1
    if "kid" in header and header["kid"] != key.thumbprint():
        print("kid is not the RFC 7638 thumbprint of the key", file=sys.stderr)
        return 1

    obj = jws.JWS()
    try:
        obj.deserialize(token)
        obj.verify(key, alg=header["alg"], detached_payload=canonical)
    except JWException as e:
        print(f"jwcrypto rejected the signature: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
