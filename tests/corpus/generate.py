#!/usr/bin/env python3
"""Builds hookgate's payload corpus from the vendor's documented example.

tests/corpus/valid/*.json      must be accepted (AI Agents v1/v2 schema) and forwarded
tests/corpus/invalid/*.json    must be refused; the file name starts with the
                               expected status and error code: 400-invalid_json-...,
                               422-schema_violation-...
tests/corpus/ci-valid/*.json   Conversation Intelligence variant, accepted by its schema

The 200 KB and 900 KB transcripts are built by the tests themselves (not stored).
Run from anywhere: python3 tests/corpus/generate.py
"""
import copy
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = json.load(open(os.path.join(HERE, "..", "payloads", "sample.json")))


def out(folder, name, data):
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    path = os.path.join(HERE, folder, name + ".json")
    mode = "wb"
    with open(path, mode) as f:
        f.write(data if isinstance(data, bytes) else json.dumps(data, indent=2, ensure_ascii=False).encode())


def sample():
    return copy.deepcopy(SAMPLE)


def without(path):
    d = sample()
    node = d
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]
    return d


def with_value(path, value):
    d = sample()
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


for folder in ("valid", "invalid", "ci-valid"):
    shutil.rmtree(os.path.join(HERE, folder), ignore_errors=True)

# ------------------------------------------------------------------ valid
out("valid", "documented-example", sample())
out("valid", "version-v2", with_value(["version"], "v2"))
out("valid", "direction-out", with_value(["call", "direction"], "out"))
d = sample(); del d["assist"]; out("valid", "no-assist", d)
out("valid", "assist-null", with_value(["assist"], None))
out("valid", "assist-empty", with_value(["assist"], {}))
for part in ("summary", "callScenarios", "transcription"):
    d = sample(); d["assist"] = {part: SAMPLE["assist"][part]}; out("valid", f"only-{part}", d)
    out("valid", f"{part}-null", with_value(["assist", part], None))
    out("valid", f"{part}-absent", without(["assist", part]))
d = with_value(["assist", "callScenarios", 0, "smartAnswers", 0, "setItems", 0, "title"], None)
out("valid", "title-null", d)
out("valid", "title-absent", without(["assist", "callScenarios", 0, "smartAnswers", 0, "setItems", 0, "title"]))
user = {"userId": "u1", "accountId": "a1", "fullUserId": "a1u1", "firstName": "Erika",
        "lastName": "Mustermann", "fullName": "Erika Mustermann"}
d = sample(); d["call"]["users"] = [user, dict(user, userId="u2", fullUserId="a1u2")]; out("valid", "two-users", d)
# Unknown members at every level ("the full payload can also contain information from playbooks").
d = sample()
d["playbook"] = {"classification": "complaint", "score": 0.93}
d["call"]["recordingUrl"] = None
d["call"]["users"] = [dict(user, role="agent", extra={"x": [1, 2]})]
d["assist"]["sentiment"] = "negative"
d["assist"]["summary"]["language"] = "de"
d["assist"]["callScenarios"][0]["id"] = "sc-1"
d["assist"]["callScenarios"][0]["smartAnswers"][0]["confidence"] = 0.5
d["assist"]["callScenarios"][0]["smartAnswers"][0]["setItems"][0]["type"] = "text"
d["assist"]["transcription"]["language"] = "de-DE"
d["assist"]["transcription"]["chunks"][0]["confidence"] = 0.99
out("valid", "unknown-members-everywhere", d)
out("valid", "from-anonymous", with_value(["call", "from"], "anonymous"))
out("valid", "from-empty", with_value(["call", "from"], ""))
out("valid", "duration-zero", with_value(["call", "duration"], 0))
out("valid", "duration-fraction", with_value(["call", "duration"], 12.5))
out("valid", "empty-chunks", with_value(["assist", "transcription", "chunks"], []))
out("valid", "empty-keypoints", with_value(["assist", "summary", "keyPoints"], []))
d = sample()
d["assist"]["summary"]["content"] = "Rückruf wegen Lieferverzögerung – Kunde verärgert 😠; 日本語のテキスト"
d["assist"]["transcription"]["chunks"][0]["content"] = "Grüß Gott! Ich rufe wegen meiner Bestellung an. 📦"
out("valid", "unicode", d)
# Hand-written texts: escapes, number spellings and layouts a re-serializer would change.
base = json.dumps(SAMPLE, ensure_ascii=False)
out("valid", "escapes", base.replace('"Call regarding a delayed order."',
    '"Call \\"regarding\\" a\\tdelayed\\norder \\u00e9\\u00E9 \\ud83d\\ude00 \\/ \\\\ done"').encode())
out("valid", "number-spellings", base.replace('"version": "v1"',
    '"version": "v1", "big": 12345678901234567890, "float": 1.0, "exp": 1E3, "neg": -0.5e-7, "zero": -0').encode())
out("valid", "minified", json.dumps(SAMPLE, separators=(",", ":")).encode())
out("valid", "crlf-tabs", json.dumps(SAMPLE, indent="\t").replace("\n", "\r\n").encode())
deep = {"v": 1}
for _ in range(40):
    deep = {"n": [deep]}
d = sample(); d["playbook"] = deep; out("valid", "deep-unknown-member-80-levels", d)

# ------------------------------------------------------------------ invalid: strict parse (400)
j = json.dumps(SAMPLE).encode()
bad = {
    "empty-body": b"",
    "whitespace-only": b" \n\t ",
    "truncated": j[: len(j) // 2],
    "trailing-comma-object": j[:-1] + b",}",
    "trailing-comma-array": b'{"version":"v1","call":{"users":[1,]}}',
    "comment-line": b"// comment\n" + j,
    "comment-block": j[:1] + b"/* c */" + j[1:],
    "single-quotes": b"{'version':'v1'}",
    "nan": j.replace(b'"duration": 300', b'"duration": NaN'),
    "infinity": j.replace(b'"duration": 300', b'"duration": Infinity'),
    "negative-infinity": j.replace(b'"duration": 300', b'"duration": -Infinity'),
    "leading-zero": j.replace(b'"duration": 300', b'"duration": 0300'),
    "huge-number": j.replace(b'"duration": 300', b'"duration": 1e400'),
    "huge-negative-number": j.replace(b'"duration": 300', b'"duration": -1e999'),
    "very-long-number": j.replace(b'"duration": 300', b'"duration": ' + b"9" * 400),
    "trailing-data": j + b" {}",
    "two-documents": j + j,
    "byte-order-mark": b"\xef\xbb\xbf" + j,
    "invalid-utf8": j.replace(b"delayed", b"del\xffyed"),
    "overlong-utf8": j.replace(b"delayed", b"del\xc0\xafyed"),
    "utf16": json.dumps(SAMPLE).encode("utf-16"),
    "lone-surrogate": j.replace(b"delayed", b"del\\ud800yed"),
    "invalid-escape": j.replace(b"delayed", b"del\\xyed"),
    "raw-control-char": j.replace(b"delayed", b"del\x01yed"),
    "raw-newline-in-string": j.replace(b"delayed", b"del\nyed"),
    "duplicate-key-top": j[:-1] + b', "version": "v2"}',
    "duplicate-key-nested": j.replace(b'"duration": 300', b'"duration": 300, "duration": 1'),
    "duplicate-key-escaped": j.replace(b'"duration": 300', b'"duration": 300, "dur\\u0061tion": 1'),
    "duplicate-key-in-chunk": j.replace(b'"speaker": "caller"', b'"speaker": "caller", "speaker": "callee"'),
    "unterminated-string": b'{"version": "v1',
    "unquoted-key": b'{version: "v1"}',
    "hex-number": j.replace(b'"duration": 300', b'"duration": 0x12C'),
    "plus-number": j.replace(b'"duration": 300', b'"duration": +300'),
    "true-misspelled": b'{"version": "v1", "x": tru}',
    "deep-nesting-10000": b"[" * 10000 + b"]" * 10000,
    "deep-object-nesting-10000": b'{"a":' * 10000 + b"1" + b"}" * 10000,
    "deep-unclosed-100000": b"[" * 100000,
}
for name, body in bad.items():
    out("invalid", f"400-invalid_json-{name}", body)

# ------------------------------------------------------------------ invalid: schema (422)
for path in (["version"], ["call"], ["call", "id"], ["call", "from"], ["call", "to"], ["call", "startTime"],
             ["call", "endTime"], ["call", "duration"], ["call", "direction"], ["call", "users"],
             ["assist", "summary", "content"], ["assist", "transcription", "chunks"],
             ["assist", "transcription", "chunks", 0, "speaker"], ["assist", "callScenarios", 0, "name"],
             ["assist", "callScenarios", 0, "smartAnswers", 0, "setItems", 0, "answer"]):
    out("invalid", "422-schema_violation-missing-" + "-".join(str(p) for p in path), without(path))
for name, path, value in (
    ("version-number", ["version"], 1),
    ("version-v3", ["version"], "v3"),
    ("version-ci-style", ["version"], "1"),
    ("call-array", ["call"], []),
    ("call-null", ["call"], None),
    ("id-number", ["call", "id"], 123),
    ("id-empty", ["call", "id"], ""),
    ("from-number", ["call", "from"], 4921161234567),
    ("to-null", ["call", "to"], None),
    ("starttime-string", ["call", "startTime"], "2023-12-29T15:00:00Z"),
    ("endtime-negative", ["call", "endTime"], -1),
    ("duration-string", ["call", "duration"], "300"),
    ("direction-upper", ["call", "direction"], "IN"),
    ("direction-inbound", ["call", "direction"], "inbound"),
    ("users-object", ["call", "users"], {}),
    ("users-null", ["call", "users"], None),
    ("user-not-object", ["call", "users"], ["u1"]),
    ("user-missing-id", ["call", "users"], [{k: v for k, v in user.items() if k != "userId"}]),
    ("assist-array", ["assist"], []),
    ("summary-string", ["assist", "summary"], "summary"),
    ("keypoints-string", ["assist", "summary", "keyPoints"], "a"),
    ("topics-numbers", ["assist", "summary", "topics"], [1, 2]),
    ("callscenarios-object", ["assist", "callScenarios"], {}),
    ("transcription-string", ["assist", "transcription"], "text"),
    ("chunks-null", ["assist", "transcription", "chunks"], None),
    ("speaker-agent", ["assist", "transcription", "chunks", 0, "speaker"], "agent"),
    ("chunk-starttime-string", ["assist", "transcription", "chunks", 0, "startTime"], "0"),
    ("chunk-content-number", ["assist", "transcription", "chunks", 0, "content"], 5),
):
    out("invalid", f"422-schema_violation-{name}", with_value(path, value))
for name, body in (("root-array", []), ("root-string", "hello"), ("root-null", None), ("root-number", 42),
                   ("root-empty-object", {})):
    out("invalid", f"422-schema_violation-{name}", body)

# ------------------------------------------------------------------ Conversation Intelligence variant
ci = {
    "version": "1",
    "callHeadline": "Order status",
    "channel": "PHONE",
    "call": {
        "id": "9c0c6a1e-5d7f-4b8e-9a51-0f3f5c2d8e11",
        "from": "4921161234567",
        "to": "4930987654321",
        "startTime": "2025-03-04T10:15:00.000Z",
        "endTime": "2025-03-04T10:20:00.000Z",
        "duration": 300000,
        "direction": "IN",
        "users": [],
    },
    "assist": {
        "provider": "sipgate",
        "summary": {"content": "Call regarding a delayed order.", "keyPoints": [], "topics": ["order status"]},
        "callScenarios": None,
        "transcription": {
            "content": "Good day, I'm calling about my order...",
            "chunks": [
                {"speaker": "CALLER", "startTime": "2025-03-04T10:15:00.000Z", "endTime": "2025-03-04T10:15:10.000Z",
                 "content": "Good day, I'm calling about my order."},
                {"speaker": "CALLEE", "startTime": "2025-03-04T10:15:11.000Z", "endTime": "2025-03-04T10:15:20.000Z",
                 "content": "Good day, can you tell me your order number?"},
            ],
        },
    },
}
out("ci-valid", "help-page-example", ci)
c = copy.deepcopy(ci); c["assist"] = None; out("ci-valid", "assist-null", c)
c = copy.deepcopy(ci); c["call"]["from"] = "anonymous"; c["callHeadline"] = None; out("ci-valid", "anonymous-caller", c)
