"""Recognising files that are not ONNX, for a precise error message."""

from __future__ import annotations

from pathlib import Path

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (a PyTorch .pt/.pth checkpoint or TorchScript file?)"),
    (b"\x1f\x8b", "a gzip archive (decompress it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model?)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the model itself (run `git lfs pull`)"),
)
_PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def foreign_format(path: Path) -> str | None:
    """A description such as "a PNG image" when the file's first bytes say what it is."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model"
    if head[:2] in _PICKLE_PROTOCOLS:
        return "a Python pickle (a PyTorch checkpoint? export it to ONNX first)"
    if head and _is_text(head):
        return "a text file (ONNX models are binary protobuf)"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)
