"""Verify DKIM signatures with dkimpy, as an independent check on tern-dkim.

Input on stdin, JSON: {"records": {"<selector>._domainkey.<domain>": "<TXT>"},
"messages": ["<base64 of a signed message>", ...]}.
Output on stdout, JSON: one entry per message, a list with one
{"ok": bool, "log": str} per DKIM-Signature header, top one first.
The TXT records are served through dkimpy's dnsfunc hook: no DNS is used.
"""
import base64
import json
import logging
import re
import sys

try:
    import dkim
    import nacl  # noqa: F401  (dkimpy needs it for ed25519-sha256)
    import dns  # noqa: F401
except ImportError as err:
    print(f"missing Python module: {err}; run: pip install dkimpy pynacl dnspython", file=sys.stderr)
    sys.exit(3)

request = json.load(sys.stdin)
records = request["records"]


def dnsfunc(name, timeout=5):
    key = name.decode() if isinstance(name, bytes) else name
    record = records.get(key.rstrip("."))
    return record.encode() if record is not None else None


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


results = []
for encoded in request["messages"]:
    message = base64.b64decode(encoded)
    header_end = re.search(rb"\r?\n\r?\n", message)
    header_block = message[: header_end.start()] if header_end else message
    count = len(re.findall(rb"(?im)^dkim-signature\s*:", header_block))
    verdicts = []
    for index in range(count):
        collect = Collect()
        logger = logging.getLogger(f"dkimpy-{len(results)}-{index}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(collect)
        try:
            ok = bool(dkim.DKIM(message, logger=logger).verify(idx=index, dnsfunc=dnsfunc))
        except Exception as err:  # a crash is a failed verification, with its reason
            ok = False
            collect.lines.append(f"{type(err).__name__}: {err}")
        verdicts.append({"ok": ok, "log": " | ".join(collect.lines[-3:])})
    results.append(verdicts)
json.dump(results, sys.stdout)
