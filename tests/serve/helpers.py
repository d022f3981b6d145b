"""Constants and small helpers shared by the serve tests."""
from __future__ import annotations

import socket

READER, WRITER = "reader-token-0123", "writer-token-4567"
TOKENS = {READER: "reader", WRITER: "writer"}
FAST_DICOM = {"workers": 1, "preprocess": {"spatial_size_2d": [32, 32]}}
TASK = "death_1y"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
