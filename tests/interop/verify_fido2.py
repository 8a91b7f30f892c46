#!/usr/bin/env python3
"""Verifies hexa's stored consent evidence with Yubico's `fido2` package, an implementation
hexa did not write.

Reads JSON from stdin: {"consents": [<FHIR Consent>...], "algs": [<expected COSE alg>...]}.
For each Consent it decodes sourceAttachment.data (the evidence JSON), then with `fido2`:
parses the COSE key (`fido2.cose.CoseKey.parse`) and the authenticator data
(`fido2.webauthn.AuthenticatorData`), checks rpIdHash = SHA-256(rpId), the user-present
flag, that the challenge names the Consent's patient, and verifies the assertion signature
over authenticatorData || SHA-256(challenge bytes) with `CoseKey.verify`. It also checks
that a tampered challenge does NOT verify. Prints one line per consent; exits 0 only when
every check passed.
"""

import base64
import hashlib
import json
import sys

from fido2 import cbor
from fido2.cose import CoseKey
from fido2.webauthn import AuthenticatorData


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def check(consent, expected_alg):
    att = consent["sourceAttachment"]
    assert att["contentType"] == "application/vnd.hexa.consent-evidence+json", att["contentType"]
    ev = json.loads(base64.b64decode(att["data"], validate=True))
    assert ev["format"] == "hexa-consent-evidence-v1", ev["format"]
    assert ev["method"] == "card", ev["method"]
    card = ev["card"]
    challenge = b64url(ev["challenge"])
    tag = b"hexa-consent-v1\x00"
    assert challenge.startswith(tag), "challenge lacks the domain tag"
    fields = json.loads(challenge[len(tag):])
    assert fields["patient"] == consent["patient"]["reference"], "challenge names another patient"

    key = CoseKey.parse(cbor.decode(b64url(card["coseKey"])))
    assert key.ALGORITHM == expected_alg, f"COSE alg {key.ALGORITHM}, expected {expected_alg}"
    auth_data = AuthenticatorData(b64url(card["authenticatorData"]))
    assert auth_data.rp_id_hash == hashlib.sha256(card["rpId"].encode()).digest(), "rpIdHash"
    assert auth_data.is_user_present(), "user presence flag not set"
    assert not auth_data.is_attested(), "attested credential data in an assertion"
    signature = b64url(card["signature"])
    client_data_hash = hashlib.sha256(challenge).digest()
    key.verify(bytes(auth_data) + client_data_hash, signature)

    tampered = bytearray(challenge)
    tampered[-2] ^= 1
    try:
        key.verify(bytes(auth_data) + hashlib.sha256(bytes(tampered)).digest(), signature)
    except Exception:
        pass
    else:
        raise AssertionError("a tampered challenge verified")
    return f"ok alg={key.ALGORITHM} counter={auth_data.counter} patient={fields['patient']}"


def main():
    req = json.load(sys.stdin)
    consents, algs = req["consents"], req["algs"]
    if len(consents) != len(algs) or not consents:
        print("need one expected alg per consent", file=sys.stderr)
        return 2
    failed = 0
    for consent, alg in zip(consents, algs):
        try:
            print(check(consent, alg))
        except Exception as e:  # report every failure, then exit non-zero
            failed += 1
            print(f"FAIL {consent.get('id')}: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
