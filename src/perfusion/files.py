"""Writing files whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file whose bytes depend on its contents only: safetensors writes the metadata in a hash order
    that changes from process to process, so the header is written again with the metadata keys sorted (the same
    length: the offsets and the alignment padding stay valid)."""
    data = save(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # never: the same keys and values, reordered
        return data
    return data[:8] + text + b" " * (length - len(text)) + data[8 + length :]


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> Path:
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    data = safetensors_bytes(tensors, metadata)
    return atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))


def save_png(image, path) -> Path:
    """A PIL image as a PNG, whole or not at all."""
    return atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))


def atomic_savez(path, **arrays) -> Path:
    """Arrays as a compressed .npz, whole or not at all (written through an open file: numpy adds no suffix)."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return atomic_write(path, write)


def atomic_torch_save(state, path) -> Path:
    return atomic_write(path, lambda temporary: torch.save(state, temporary))
