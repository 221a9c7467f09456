"""The AWS wire pieces a mock Bedrock needs: event-stream frames, and SigV4 checked with botocore.

Frames follow the published ``application/vnd.amazon.eventstream`` layout: a 12-byte prelude (total
length, headers length, both big-endian uint32, then the CRC32 of those 8 bytes), the headers (name
length uint8, name, value type 7 = string, value length uint16, value), the payload, and the CRC32 of
everything before it. ``tests/test_bedrock_units.py`` checks this encoder against botocore's decoder.

``verify`` recomputes the signature of a received request from its method, raw path, the headers it
says it signed, its body and its ``X-Amz-Date``, with the known test credentials.
"""

from __future__ import annotations

import datetime
import hmac
import re
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

TEST_ACCESS_KEY = "AKIDBEDROCKTESTKEY01"
TEST_SECRET_KEY = "bedrock/test/secret/key/not-a-real-one/0000"
STRING_TYPE = 7
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


def encode_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers."""
    raw_headers = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        raw_headers += struct.pack(">B", len(n)) + n + struct.pack(">BH", STRING_TYPE, len(v)) + v
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    return encode_frame({":event-type": event_type, ":content-type": "application/json",
                         ":message-type": "event"}, orjson.dumps(payload))


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_frame({":exception-type": exception_type, ":content-type": "application/json",
                         ":message-type": "exception"}, orjson.dumps({"message": message}))


def verify(method: str, host: str, raw_path: str, headers: Mapping[str, str], body: bytes,
           access_key: str = TEST_ACCESS_KEY, secret_key: str = TEST_SECRET_KEY,
           max_skew_s: float = 300.0) -> str | None:
    """None when the request carries a valid SigV4 signature for ``bedrock``, else what is wrong."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = _AUTH.match(headers.get("authorization", ""))
    if match is None:
        return "missing or malformed Authorization"
    key, day, region, service, signed, signature = match.groups()
    if key != access_key or service != "bedrock":
        return f"unexpected credential scope {key}/{service}"
    stamp = headers.get("x-amz-date", "")
    if not stamp.startswith(day):
        return "X-Amz-Date does not match the credential scope"
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    if abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) > max_skew_s:
        return "X-Amz-Date is too far from now"
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed"
    copy = AWSRequest(method=method, url=f"http://{host}{raw_path}", data=body,
                      headers={n: headers.get(n, "") for n in names})
    copy.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, secret_key), service, region)
    expected = signer.signature(signer.string_to_sign(copy, signer.canonical_request(copy)), copy)
    return None if hmac.compare_digest(expected, signature) else "signature mismatch"
