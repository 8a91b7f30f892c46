#!/usr/bin/env python3
"""Drives a running hexa appliance with two FHIR clients we did not write, SMART on FHIR's
`fhirclient` and Beda's `fhirpy`, and validates every resource the API returns against the
FHIR R4 JSON schema with Python's `jsonschema`.

    fhir_clients.py keygen DIR
        writes DIR/client.jwk (private P-384 key) and DIR/client.jwks.json (its public
        JWKS, for `hexa client add --jwks`).
    fhir_clients.py run --base URL --client-id ID --key DIR/client.jwk --schema FILE
        obtains a bearer token (SMART Backend Services: client_credentials with a
        private_key_jwt assertion, ES384, signed here with jwcrypto), then creates, reads,
        searches, updates, reads history and posts transactions and a batch through both
        clients, and checks the error paths.

Every HTTP response carrying a FHIR resource (the CapabilityStatement, resources,
Bundles, OperationOutcomes) is validated against the definition of its resourceType.
Exit status 0 when everything passed; 1 with the list of what failed otherwise.
"""

import argparse
import collections
import json
import os
import sys
import time
import uuid

import jsonschema
import requests
from jwcrypto import jwk, jwt

TIMEOUT = 30


class Checker:
    """Validates FHIR resources in responses and collects failures."""

    def __init__(self, schema_path):
        with open(schema_path, encoding="utf-8") as f:
            schema = json.load(f)
        self.definitions = schema["definitions"]
        self.validators = {}
        self.validated = collections.Counter()
        self.failures = []
        self.steps = 0

    def validator(self, resource_type):
        if resource_type not in self.validators:
            self.validators[resource_type] = jsonschema.Draft6Validator(
                {"$ref": f"#/definitions/{resource_type}", "definitions": self.definitions}
            )
        return self.validators[resource_type]

    def check_resource(self, resource, where):
        ty = resource.get("resourceType")
        if ty not in self.definitions:
            self.fail(f"{where}: returned a resource of unknown type {ty!r}")
            return
        errors = sorted(
            self.validator(ty).iter_errors(resource), key=lambda e: list(e.absolute_path)
        )
        self.validated[ty] += 1
        for e in errors[:5]:
            path = ".".join(str(p) for p in e.absolute_path)
            self.fail(f"{where}: the returned {ty} is not valid R4 at {ty}.{path}: {e.message[:200]}")

    def hook(self, response, *args, **kwargs):
        """requests response hook: validates the body when it is a FHIR resource."""
        ctype = response.headers.get("Content-Type", "")
        if "json" in ctype and response.content:
            try:
                body = response.json()
            except ValueError:
                self.fail(f"{response.request.method} {response.url}: body is not JSON")
                return response
            if isinstance(body, dict) and "resourceType" in body:
                self.check_resource(body, f"{response.request.method} {response.url}")
        return response

    def expect(self, cond, what):
        self.steps += 1
        if not cond:
            self.fail(what)

    def fail(self, what):
        self.failures.append(what)
        print(f"FAIL {what}", file=sys.stderr)


def keygen(out_dir):
    key = jwk.JWK.generate(kty="EC", crv="P-384")
    kid = key.thumbprint()
    private = json.loads(key.export_private())
    private.update({"kid": kid, "alg": "ES384", "use": "sig"})
    public = json.loads(key.export_public())
    public.update({"kid": kid, "alg": "ES384", "use": "sig"})
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "client.jwk")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(private, f)
    with open(os.path.join(out_dir, "client.jwks.json"), "w", encoding="utf-8") as f:
        json.dump({"keys": [public]}, f)


def get_token(base, client_id, key_path, scope, chk):
    """SMART Backend Services: discovery, then a signed client assertion for a token."""
    conf = requests.get(f"{base}/.well-known/smart-configuration", timeout=TIMEOUT)
    chk.expect(conf.status_code == 200, f"smart-configuration: HTTP {conf.status_code}")
    conf = conf.json()
    token_url = conf["token_endpoint"]
    chk.expect(
        "private_key_jwt" in conf.get("token_endpoint_auth_methods_supported", []),
        "smart-configuration does not offer private_key_jwt",
    )
    with open(key_path, encoding="utf-8") as f:
        key = jwk.JWK(**json.load(f))
    now = int(time.time())
    assertion = jwt.JWT(
        header={"alg": "ES384", "typ": "JWT", "kid": key.get("kid")},
        claims={
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + 240,
            "jti": str(uuid.uuid4()),
        },
    )
    assertion.make_signed_token(key)
    r = requests.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion.serialize(),
        },
        timeout=TIMEOUT,
    )
    if r.status_code != 200:
        chk.fail(f"token endpoint: HTTP {r.status_code}: {r.text[:300]}")
        return None
    body = r.json()
    chk.expect(body.get("token_type", "").lower() == "bearer", "token_type is not bearer")
    # The same assertion again must be refused (single use).
    again = requests.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion.serialize(),
        },
        timeout=TIMEOUT,
    )
    chk.expect(again.status_code in (400, 401), f"a replayed assertion got HTTP {again.status_code}")
    return body["access_token"]


def nid():
    return str(uuid.uuid4().int)[:16]


def with_fhirclient(base, token, chk):
    from fhirclient import client
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.capabilitystatement import CapabilityStatement
    from fhirclient.models.observation import Observation
    from fhirclient.models.operationoutcome import OperationOutcome
    from fhirclient.models.patient import Patient

    smart = client.FHIRClient(settings={"app_id": "hexa-conformance", "api_base": base})
    smart.server.session.hooks["response"].append(chk.hook)
    # The CapabilityStatement is fetched and parsed by fhirclient's (strict) R4 models.
    smart.prepare()
    cap = smart.server.capabilityStatement
    chk.expect(isinstance(cap, CapabilityStatement), "fhirclient: no CapabilityStatement")
    chk.expect(cap.fhirVersion == "4.0.1", f"fhirclient: fhirVersion {cap.fhirVersion}")
    smart.server.session.headers["Authorization"] = f"Bearer {token}"
    srv = smart.server

    # create
    number = nid()
    p = Patient(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:rw:nid", "value": number}],
            "name": [{"family": "Uwimana", "given": ["Claudine"]}],
            "gender": "female",
            "birthDate": "1991-04-12",
        }
    )
    created = p.create(srv)
    chk.expect(created is not None and "id" in created, "fhirclient create: no resource returned")
    pid = created["id"]
    Patient(created)  # strict parse of what the server returned

    # read
    got = Patient.read(pid, srv)
    chk.expect(got.name[0].family == "Uwimana", "fhirclient read: wrong family name")
    chk.expect(got.meta.versionId == "1", f"fhirclient read: versionId {got.meta.versionId}")

    # search
    found = Patient.where(struct={"identifier": f"urn:rw:nid|{number}"}).perform_resources(srv)
    chk.expect([r.id for r in found] == [pid], f"fhirclient search: {[r.id for r in found]}")
    bundle = Patient.where(struct={"family": "Uwimana"}).perform(srv)
    chk.expect(bundle.type == "searchset", "fhirclient search: not a searchset")

    # update
    got.gender = "other"
    got.update(srv)
    again = Patient.read(pid, srv)
    chk.expect(again.gender == "other", "fhirclient update: gender not updated")
    chk.expect(again.meta.versionId == "2", f"fhirclient update: versionId {again.meta.versionId}")

    # history
    hist = Bundle(srv.request_json(f"Patient/{pid}/_history"))
    chk.expect(hist.type == "history", "fhirclient history: not a history Bundle")
    chk.expect(len(hist.entry or []) == 2, f"fhirclient history: {len(hist.entry or [])} entries")

    # transaction: a Patient and an Observation referring to it by urn:uuid
    purl = f"urn:uuid:{uuid.uuid4()}"
    tx = Bundle(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": purl,
                    "resource": {"resourceType": "Patient", "name": [{"family": "Ishimwe"}]},
                    "request": {"method": "POST", "url": "Patient"},
                },
                {
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                        "subject": {"reference": purl},
                        "valueQuantity": {"value": 172, "unit": "cm"},
                    },
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        }
    )
    resp = srv.post_json("", tx.as_json())
    out = Bundle(resp.json())
    chk.expect(out.type == "transaction-response", f"fhirclient transaction: {out.type}")
    statuses = [e.response.status for e in out.entry]
    chk.expect(all(s.startswith("201") for s in statuses), f"fhirclient transaction: {statuses}")
    obs = Observation(out.entry[1].resource.as_json())
    ref = obs.subject.reference
    chk.expect(ref.startswith("Patient/"), f"fhirclient transaction: urn:uuid not rewritten: {ref}")

    # an invalid resource is refused with an OperationOutcome naming the element
    bad = {"resourceType": "Patient", "gender": "woman"}
    r = srv.session.post(
        base + "/Patient",
        json=bad,
        headers={"Content-Type": "application/fhir+json"},
        timeout=TIMEOUT,
    )
    chk.expect(r.status_code == 400, f"fhirclient invalid create: HTTP {r.status_code}")
    oo = OperationOutcome(r.json())
    exprs = [e for i in oo.issue for e in (i.expression or [])]
    chk.expect("Patient.gender" in exprs, f"fhirclient invalid create: expressions {exprs}")
    return pid


def with_fhirpy(base, token, chk, fhirclient_patient):
    from fhirpy import SyncFHIRClient
    from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

    c = SyncFHIRClient(
        base,
        authorization=f"Bearer {token}",
        requests_config={"hooks": {"response": [chk.hook]}, "timeout": TIMEOUT},
    )

    # create
    number = nid()
    pt = c.resource(
        "Patient",
        identifier=[{"system": "urn:rw:nid", "value": number}],
        name=[{"family": "Niyonzima", "given": ["Eric"]}],
        gender="male",
        birthDate="1984-09-30",
    )
    pt.save()
    chk.expect(pt.id is not None, "fhirpy create: no id")

    # read (also what the other client wrote)
    got = c.reference("Patient", pt.id).to_resource()
    chk.expect(got["name"][0]["family"] == "Niyonzima", "fhirpy read: wrong family")
    other = c.reference("Patient", fhirclient_patient).to_resource()
    chk.expect(other["gender"] == "other", "fhirpy read of the fhirclient patient")

    # search, with paging over next links
    found = c.resources("Patient").search(identifier=f"urn:rw:nid|{number}").fetch()
    chk.expect([r.id for r in found] == [pt.id], f"fhirpy search: {[r.id for r in found]}")
    for i in range(3):
        c.resource(
            "Observation",
            status="final",
            code={"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            subject={"reference": f"Patient/{pt.id}"},
            valueQuantity={"value": 70 + i, "unit": "kg"},
        ).save()
    pages = c.resources("Observation").search(subject=f"Patient/{pt.id}").limit(2)
    all_obs = pages.fetch_all()
    chk.expect(len(all_obs) == 3, f"fhirpy paging: {len(all_obs)} of 3 Observations")
    raw = c.resources("Patient").search(identifier=f"urn:rw:nid|{number}", _summary="count").fetch_raw()
    chk.expect(raw.get("total") == 1, f"fhirpy _summary=count: {raw.get('total')}")

    # update
    got["active"] = True
    got.save()
    again = c.reference("Patient", pt.id).to_resource()
    chk.expect(again["active"] is True, "fhirpy update: active not stored")
    chk.expect(again["meta"]["versionId"] == "2", f"fhirpy update: {again['meta']['versionId']}")

    # history (instance and type)
    hist = c.execute(f"Patient/{pt.id}/_history", method="get")
    chk.expect(hist["type"] == "history" and hist["total"] == 2, "fhirpy history")
    th = c.execute("Patient/_history", method="get", params={"_count": 2})
    chk.expect(th["type"] == "history" and len(th.get("entry", [])) == 2, "fhirpy type history")

    # transaction (PUT with a client id and a reference to it) and batch
    tid = f"fp-{uuid.uuid4().hex[:12]}"
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": tid, "name": [{"family": "Tx"}]},
                "request": {"method": "PUT", "url": f"Patient/{tid}"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "pulse"},
                    "subject": {"reference": f"Patient/{tid}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    out = c.execute("", method="post", data=tx)
    chk.expect(out["type"] == "transaction-response", "fhirpy transaction")
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{tid}"}},
            {"request": {"method": "GET", "url": f"Patient?identifier=urn:rw:nid|{number}"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ],
    }
    out = c.execute("", method="post", data=batch)
    statuses = [e["response"]["status"][:3] for e in out["entry"]]
    chk.expect(statuses == ["200", "200", "404"], f"fhirpy batch: {statuses}")

    # errors: a missing resource, an invalid one, a broken reference
    try:
        c.reference("Patient", "does-not-exist").to_resource()
        chk.fail("fhirpy: reading a missing Patient did not fail")
    except ResourceNotFound:
        chk.steps += 1
    try:
        c.resource("Patient", birthDate="12/04/1991").save()
        chk.fail("fhirpy: an invalid birthDate was accepted")
    except OperationOutcome as e:
        issues = e.resource.get("issue", []) if e.resource else []
        exprs = [x for i in issues for x in i.get("expression", [])]
        chk.expect("Patient.birthDate" in exprs, f"fhirpy invalid: {exprs}")
    try:
        c.resource(
            "Observation",
            status="final",
            code={"text": "x"},
            subject={"reference": "Patient/nobody-here"},
        ).save()
        chk.fail("fhirpy: a broken reference was accepted")
    except OperationOutcome as e:
        codes = [
            cd.get("code")
            for i in (e.resource or {}).get("issue", [])
            for cd in i.get("details", {}).get("coding", [])
        ]
        chk.expect("broken-reference" in codes, f"fhirpy broken reference: {codes}")


def run(args):
    chk = Checker(args.schema)
    # The CapabilityStatement, fetched plainly as well, is validated by the hook.
    s = requests.Session()
    s.hooks["response"].append(chk.hook)
    meta = s.get(f"{args.base}/metadata", timeout=TIMEOUT)
    chk.expect(meta.status_code == 200, f"metadata: HTTP {meta.status_code}")
    # Unauthenticated access is an OperationOutcome too.
    r = s.get(f"{args.base}/Patient", timeout=TIMEOUT)
    chk.expect(r.status_code == 401, f"no token: HTTP {r.status_code}")
    token = get_token(args.base, args.client_id, args.key, args.scope, chk)
    if token is None:
        return report(chk)
    pid = None
    try:
        pid = with_fhirclient(args.base, token, chk)
    except Exception as e:  # noqa: BLE001 - any client exception is a failure to name
        chk.fail(f"fhirclient raised {type(e).__name__}: {str(e)[:300]}")
    if pid is not None:
        try:
            with_fhirpy(args.base, token, chk, pid)
        except Exception as e:  # noqa: BLE001
            chk.fail(f"fhirpy raised {type(e).__name__}: {str(e)[:300]}")
    return report(chk)


def report(chk):
    total = sum(chk.validated.values())
    print(
        f"{chk.steps} checks, {total} returned resources validated against the R4 schema: "
        + ", ".join(f"{k} {v}" for k, v in sorted(chk.validated.items()))
    )
    for need in ("CapabilityStatement", "Patient", "Bundle", "OperationOutcome"):
        if chk.validated[need] == 0:
            chk.fail(f"no {need} was returned and validated")
    if chk.failures:
        print(f"{len(chk.failures)} FAILURE(S):", file=sys.stderr)
        for f in chk.failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("OK")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen")
    k.add_argument("dir")
    r = sub.add_parser("run")
    r.add_argument("--base", required=True, help="FHIR base URL, e.g. http://127.0.0.1:8080/fhir")
    r.add_argument("--client-id", required=True)
    r.add_argument("--key", required=True, help="private JWK file from keygen")
    r.add_argument("--schema", required=True, help="fhir.schema.json")
    r.add_argument("--scope", default="system/*.cruds")
    args = ap.parse_args()
    if args.cmd == "keygen":
        keygen(args.dir)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
