"""What a weight file *is*, read from its first bytes (and a zip's member names), not from its name.

People name checkpoints ``.pth.tar`` (the official SA-Net and Megvii code, PyTorch's ImageNet example),
``.bin`` (``pytorch_model.bin``), ``.ckpt`` (Lightning) or ``.tar`` whatever they hold; a misnamed file
should be told apart from a corrupt one. Reading only: nothing is unpickled or parsed beyond the header.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

#: The legacy (pre-1.6) ``torch.save`` stream: pickle protocol 2, then the magic number as a long.
_TORCH_LEGACY = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_HDF5 = b"\x89HDF\r\n\x1a\n"

#: content kind → (the format that reads it, how to name it in a message)
KINDS: dict[str, tuple[str, str]] = {
    "torch-zip": ("torch", "a PyTorch checkpoint (torch.save zip)"),
    "torch-legacy": ("torch", "a PyTorch checkpoint (legacy torch.save)"),
    "safetensors": ("canonical", "a safetensors file"),
    "hdf5": ("keras-weights", "an HDF5 file (Keras .weights.h5)"),
    "keras-zip": ("keras", "a Keras .keras archive"),
    "msgpack": ("flax", "a msgpack file (Flax)"),
}


def _zip_kind(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None  # a truncated or corrupt zip: the format's reader says what is wrong
    if any(name.endswith("data.pkl") for name in names):
        return "torch-zip"
    if {"config.json", "model.weights.h5"} <= set(names):
        return "keras-zip"
    return None


def sniff(path: str | Path) -> str | None:
    """The content kind of an existing file (a key of :data:`KINDS`), or None when unrecognised."""
    source = Path(path)
    try:
        with open(source, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head.startswith(_TORCH_LEGACY):
        return "torch-legacy"
    if head.startswith(_HDF5):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(source)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < source.stat().st_size:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head[:1] and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack"  # a non-empty map, as flax.serialization writes the state
    return None
