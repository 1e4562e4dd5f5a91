"""Read the records of an offline W&B run file (``run-*.wandb``): a LevelDB-style log of protobufs."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # file header ":W&B" + magic + version; each record header: crc32, length, type


def read_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, out, partial = HEADER, [], b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left - HEADER
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            partial = chunk
        elif kind == 3:  # middle
            partial += chunk
        elif kind == 4:  # last
            out.append(partial + chunk)
    records = []
    for raw in out:
        rec = pb.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def history_rows(path: str | Path) -> list[dict]:
    """Every history row as ``{key: json value}``."""
    rows = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): item.value_json for item in rec.history.item})
    return rows
