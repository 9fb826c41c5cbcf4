"""Verify ARC chains with dkimpy's arc_verify, as an independent check on
tern-dkim's ARC code.

Input on stdin, JSON: {"records": {"<selector>._domainkey.<domain>": "<TXT>"},
"messages": ["<base64 of a message>", ...]}.
Output on stdout, JSON: one {"cv": "pass" | "fail" | "none" | null,
"reason": str} per message (null: dkimpy considers the chain ended by an
earlier cv=fail). Keys come through dkimpy's dnsfunc hook: no DNS is used.
"""
import base64
import json
import logging
import sys

try:
    import dkim
    import nacl  # noqa: F401  (dkimpy needs it for ed25519-sha256)
except ImportError as err:
    print(f"missing Python module: {err}; run: pip install dkimpy pynacl dnspython authres", file=sys.stderr)
    sys.exit(3)

request = json.load(sys.stdin)
records = request["records"]


def dnsfunc(name, timeout=5):
    key = name.decode() if isinstance(name, bytes) else name
    record = records.get(key.rstrip("."))
    return record.encode() if record is not None else None


logger = logging.getLogger("dkimpy-arc")
logger.addHandler(logging.NullHandler())
logger.propagate = False

out = []
for encoded in request["messages"]:
    message = base64.b64decode(encoded)
    try:
        cv, _, reason = dkim.arc_verify(message, logger=logger, dnsfunc=dnsfunc)
        cv = cv.decode() if isinstance(cv, bytes) else cv
    except Exception as err:  # a crash is a failed chain, with its reason
        cv, reason = "fail", f"{type(err).__name__}: {err}"
    out.append({"cv": cv, "reason": str(reason)})
json.dump(out, sys.stdout)
