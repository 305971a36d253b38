"""Read TensorBoard event files back (TFRecord framing, protobuf ``Event``) to check what a logger wrote."""

from __future__ import annotations

import struct
from pathlib import Path


def summary_tags(log_dir: Path, kind: str) -> dict[str, list[int]]:
    """Tag → steps of the ``kind`` ("scalar" or "image") summaries in every event file under ``log_dir``.

    Image summaries are checked to hold a PNG.
    """
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, list[int]] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if kind == "image" and value.HasField("image"):
                    assert value.image.height > 0 and value.image.encoded_image_string[:4] == b"\x89PNG"
                elif not (kind == "scalar" and (value.HasField("simple_value") or value.HasField("tensor"))):
                    continue
                found.setdefault(value.tag, []).append(event.step)
    return found
