"""Sign messages with dkimpy, so tern-dkim's verifier is tested against
signatures it did not make.

Input on stdin, JSON: {"jobs": [{"message": "<base64>", "selector": str,
"domain": str, "key": "<base64 of the private key: PEM text for RSA, the
32-byte seed for Ed25519>", "algorithm": "rsa-sha256" | "ed25519-sha256" |
"rsa-sha1", "canonicalize": ["relaxed", "simple"], "include_headers": [..]
or null, "length": bool, "identity": str or null, "arc": null or
{"srv_id": str, "timestamp": int or null}}]}.
Output on stdout, JSON: a list with the signed message of each job, base64.
For "arc" jobs, dkimpy's arc_sign adds an ARC set instead of a DKIM
signature (relaxed/relaxed, as ARC requires). dkimpy seals only when the
message has an Authentication-Results header for srv_id (its arc= result
becomes cv=), and needs the authres module for that.
"""
import base64
import json
import sys

try:
    import dkim
    import nacl  # noqa: F401  (dkimpy needs it for ed25519-sha256)
    import authres  # noqa: F401  (dkimpy's arc_sign needs it)
except ImportError as err:
    print(f"missing Python module: {err}; run: pip install dkimpy pynacl dnspython authres", file=sys.stderr)
    sys.exit(3)

request = json.load(sys.stdin)
out = []
for job in request["jobs"]:
    message = base64.b64decode(job["message"])
    key = base64.b64decode(job["key"])
    if job["algorithm"].startswith("ed25519"):
        # dkimpy takes the Ed25519 private key as the base64 of its seed.
        key = base64.b64encode(key)
    include = job.get("include_headers")
    include = [h.encode() for h in include] if include else None
    if job.get("arc"):
        headers = dkim.arc_sign(
            message,
            job["selector"].encode(),
            job["domain"].encode(),
            key,
            job["arc"]["srv_id"].encode(),
            signature_algorithm=job["algorithm"].encode(),
            include_headers=include,
            timestamp=job["arc"].get("timestamp"),
        )
        signed = b"".join(headers) + message
    else:
        header = dkim.sign(
            message,
            job["selector"].encode(),
            job["domain"].encode(),
            key,
            identity=job["identity"].encode() if job.get("identity") else None,
            canonicalize=tuple(c.encode() for c in job["canonicalize"]),
            signature_algorithm=job["algorithm"].encode(),
            include_headers=include,
            length=job.get("length", False),
        )
        signed = header + message
    out.append(base64.b64encode(signed).decode())
json.dump(out, sys.stdout)
