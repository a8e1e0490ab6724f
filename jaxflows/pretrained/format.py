"""The shipped weights format: one `.npz` archive of named arrays beside a JSON model card.

Array names are variable paths ("params/bijector/level1/flow_steps/actnorm/bias") of every
collection ("params", "constants", "spectral_norm", ...); each keeps its own dtype (parameters in
float32, constants such as the LU permutation in int32). Reading needs NumPy only
(`numpy.load(path, allow_pickle=False)`), not orbax or Flax. Dtypes `.npy` cannot name (bfloat16 and
the other ml_dtypes types) are stored as unsigned integers of their width, and the entry
`__dtypes__.json` maps their paths to their dtype names (absent when there are none, so archives of
ordinary dtypes keep the bytes of format 1).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxflows.core.errors import JaxflowsError

FORMAT_VERSION = 2  # 2: the card names any registered builder (`jaxflows.pretrained.recipes`)
READABLE_VERSIONS = (1, 2)
_SEPARATOR = "/"
_DTYPES_ENTRY = "__dtypes__"  # {path: dtype name} of arrays stored as unsigned integers
# Fixed zip entry time so that the same variables always give the same bytes (and checksum).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class WeightsFileError(JaxflowsError, ValueError):
    """A weights file cannot be read as this format (corrupt, truncated or of another version)."""


class ChecksumError(WeightsFileError):
    """A weights file's SHA-256 differs from the one its model card records."""


def flatten(variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a/b/c": array}."""
    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, (*prefix, str(key)))
        else:
            flat[_SEPARATOR.join(prefix)] = np.asarray(node)

    walk(variables, ())
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """{"a/b/c": array} -> nested dicts of arrays."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(_SEPARATOR)
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _storable(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(array as `.npy` can hold it, the dtype name to restore or None): bfloat16 & co. travel as
    unsigned integers of their width (`.npy` would write them as anonymous void bytes)."""
    if array.dtype.kind != "V":
        return array, None
    return array.view(f"u{array.dtype.itemsize}"), array.dtype.name


def to_bytes(variables: dict[str, Any]) -> bytes:
    """The archive's bytes: one `.npy` entry per variable, sorted by path, deflated."""
    buffer = io.BytesIO()
    extended = {}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, array in sorted(flatten(variables).items()):
            stored, dtype = _storable(np.ascontiguousarray(array))
            if dtype is not None:
                extended[path] = dtype
            entry = io.BytesIO()
            np.lib.format.write_array(entry, stored, allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(path + ".npy", date_time=_ZIP_TIME), entry.getvalue())
        if extended:
            names = json.dumps(extended, sort_keys=True).encode()
            archive.writestr(zipfile.ZipInfo(_DTYPES_ENTRY + ".json", date_time=_ZIP_TIME), names)
    return buffer.getvalue()


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write(path: str | Path, variables: dict[str, Any]) -> str:
    """Write `variables` to `path`; returns the file's SHA-256."""
    data = to_bytes(variables)
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read(path: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """The nested variables stored at `path`, after checking its SHA-256 when one is given."""
    path = Path(path)
    if expected_sha256 is not None:
        found = sha256(path)
        if found != expected_sha256:
            raise ChecksumError(
                f"{path}: SHA-256 {found} differs from the model card's {expected_sha256}; "
                "the file is corrupt or was replaced (reinstall jaxflows or re-download it)"
            )
    try:
        with np.load(path, allow_pickle=False) as archive:
            extended = {}
            if _DTYPES_ENTRY + ".json" in archive.files:
                extended = json.loads(archive[_DTYPES_ENTRY + ".json"])
            arrays = {name: archive[name] for name in archive.files if name != _DTYPES_ENTRY + ".json"}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise WeightsFileError(f"{path}: not a readable weights archive ({error})") from error
    for name, dtype in extended.items():
        arrays[name] = arrays[name].view(jnp.dtype(dtype))
    return unflatten(arrays)
