#!/usr/bin/env python3
"""The smoke test's integrator: a SMART Backend Services client of the booted appliance.

  smoke_client.py keygen <dir>          writes <dir>/private.jwk and <dir>/jwks.json (ES256)
  smoke_client.py exercise <base> <dir> gets a token with a private_key_jwt assertion, creates
                                        a Patient, reads it back; exits non-zero on any error
Every request has a timeout; nothing here waits unboundedly.
"""
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from jwcrypto import jwk, jwt

CLIENT_ID = "smoke-emr"
TIMEOUT = 60


def keygen(d):
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="smoke-1")
    with open(f"{d}/private.jwk", "w") as f:
        f.write(key.export_private())
    with open(f"{d}/jwks.json", "w") as f:
        json.dump({"keys": [json.loads(key.export_public())]}, f)


def call(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def exercise(base, d):
    with open(f"{d}/private.jwk") as f:
        key = jwk.JWK.from_json(f.read())
    token_url = f"{base}/fhir/token"
    now = int(time.time())
    assertion = jwt.JWT(
        header={"alg": "ES256", "kid": "smoke-1", "typ": "JWT"},
        claims={"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": token_url,
                "iat": now, "exp": now + 240, "jti": str(uuid.uuid4())},
    )
    assertion.make_signed_token(key)
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "scope": "system/Patient.cruds",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion.serialize(),
    }).encode()
    status, tok = call("POST", token_url, form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    if status != 200:
        sys.exit(f"token: {status} {tok}")
    print(f"smoke: token issued (scope {tok['scope']}, expires in {tok['expires_in']} s)")
    auth = {"Authorization": f"Bearer {tok['access_token']}",
            "Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    patient = {"resourceType": "Patient", "active": True,
               "identifier": [{"system": "urn:hexa:smoke", "value": str(uuid.uuid4())}],
               "name": [{"family": "Smoke", "given": ["Image"]}], "gender": "female",
               "birthDate": "1990-01-01"}
    status, created = call("POST", f"{base}/fhir/Patient", json.dumps(patient).encode(), auth)
    if status != 201:
        sys.exit(f"create Patient: {status} {created}")
    pid = created["id"]
    status, read = call("GET", f"{base}/fhir/Patient/{pid}", None, auth)
    if status != 200 or read.get("name") != patient["name"] or read.get("id") != pid:
        sys.exit(f"read Patient/{pid}: {status} {read}")
    print(f"smoke: Patient/{pid} created (201) and read back (200, version {read['meta']['versionId']})")
    # The hardened unit lets the store's writer thread raise its priority (LimitNICE=30 and
    # setpriority allowed past the seccomp filter); /metrics reports what it got.
    with urllib.request.urlopen(f"{base}/metrics", timeout=TIMEOUT) as r:
        metrics = r.read().decode()
    nice = [ln.split()[1] for ln in metrics.splitlines()
            if ln.startswith("hexa_store_writer_nice ")]
    if nice != ["-10"]:
        sys.exit(f"store writer nice under the unit: {nice}, expected ['-10']")
    print("smoke: the store writer thread runs at nice -10 under the hardened unit")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "keygen":
        keygen(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "exercise":
        exercise(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
