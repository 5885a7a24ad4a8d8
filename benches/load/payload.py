#!/usr/bin/env python3
"""Writes a valid sipgate AI Agents payload of about SIZE bytes (a transcript of
short chunks, both speakers) to OUT.  usage: payload.py SIZE OUT"""
import json
import sys

size, out = int(sys.argv[1]), sys.argv[2]
with open(__file__.rsplit("/", 3)[0] + "/tests/payloads/sample.json") as f:
    v = json.load(f)
sentence = "Good day, I am calling about my order, it has not arrived yet. "
chunks, t = [], 1703862000000
v["assist"]["transcription"]["chunks"] = chunks
while len(json.dumps(v)) + len(sentence) * (len(chunks) + 2) < size:
    chunks.append({"speaker": ["caller", "callee"][len(chunks) % 2], "startTime": t, "endTime": t + 4000, "content": sentence})
    t += 5000
v["assist"]["transcription"]["content"] = sentence * len(chunks)
data = json.dumps(v).encode()
data += b" " * max(0, size - len(data))
open(out, "wb").write(data)
