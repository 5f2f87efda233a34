"""Reads what an offline W&B run wrote, for the tests to check it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def wandb_run(folder: Path) -> dict:
    """What an offline W&B run folder recorded: {"run": the run record, "history": [logged
    rows], "summary": {key: value}, "exit_code": int or None, "artifacts": [records]}.

    The `.wandb` file is a LevelDB-style log (wandb 0.31 has no Python reader): a 7-byte
    header, then 32 KiB blocks of chunks (CRC 4 bytes, length 2, type 1: full, first,
    middle, last), each record a `wandb_internal_pb2.Record`.
    """
    from wandb.proto import wandb_internal_pb2

    def key(item: Any) -> str:  # a key with "/" comes split into nested_key
        return item.key or "/".join(item.nested_key)

    data = next(folder.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B", folder
    out: dict = {"run": None, "history": [], "summary": {}, "exit_code": None, "artifacts": []}
    pos, block, record = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        record += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # a record continues in the next chunk
            continue
        rec = wandb_internal_pb2.Record.FromString(record)
        record = b""
        which = rec.WhichOneof("record_type")
        if which == "run":
            out["run"] = rec.run
        elif which == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif which == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif which == "exit":
            out["exit_code"] = rec.exit.exit_code
        elif which == "artifact":
            out["artifacts"].append(rec.artifact)
    return out
