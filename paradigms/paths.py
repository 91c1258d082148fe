"""Where tiedlab reads data from, how it checks what it reads, and where it may write caches.

The data root is read-only: tiedlab never writes there. Decoded arrays and copies that a
library insists on writing next to its input (PyG's processed files) go to the cache dir.

Integrity: when the data root holds a ``SHA256SUMS`` file (``<sha256>  ./relative/path`` per line, as
``sha256sum`` writes it), every data file tiedlab reads is checked against it first (:func:`verify_files`;
:func:`data_path` does it for files). Each file is hashed once: its digest is cached with its size and
mtime in ``cache_dir("integrity")/sha256.json``, so later checks cost one ``stat``. A file that
``SHA256SUMS`` does not list, or a root without ``SHA256SUMS``, is read unchecked (users bring their
own data). A mismatch raises :class:`DataIntegrityError`; a listed file that cannot be parsed raises
:class:`DataFormatError`. Both are ``ValueError`` subclasses with one-line messages naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from .rundir import atomic_write_bytes

log = logging.getLogger(__name__)

DATA_ENV = "TIEDLAB_DATA"
CACHE_ENV = "TIEDLAB_CACHE"
SUMS_NAME = "SHA256SUMS"
HASH_CACHE_FORMAT = 1
_CHUNK = 1 << 20
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")

DATA_LAYOUT = """\
expected layout under the data root:
  cifar10-jpeg/cifar10_jpeg.npz        (or cifar10/cifar-10-batches-py/ from torchvision)
  mnist/mnist.npz
  fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  planetoid/{cora,citeseer}.npz and planetoid/raw/ind.*
  tu-gin/<NAME>/<NAME>.txt and tu-gin/<NAME>/10fold_idx/
  tinyshakespeare/input.txt
  austen/austen.txt
  SHA256SUMS                           (optional, sha256sum output: every file read is checked against it)"""


class DataNotFoundError(FileNotFoundError):
    """A data file or folder is missing; the message says where it was looked for and how to fix it."""


class DataIntegrityError(ValueError):
    """A data file's SHA-256 differs from its line in the data root's ``SHA256SUMS`` (or that file is
    malformed); the one-line message names the file, both digests and the fix."""


class DataFormatError(ValueError):
    """A data file exists but cannot be parsed (truncated, random bytes, empty, wrong layout); the
    one-line message names the file, says what is wrong and how to fix it."""


def data_root() -> Path:
    """The folder that holds the datasets, from ``$TIEDLAB_DATA``.

    Raises:
        DataNotFoundError: the variable is unset or names a folder that does not exist.
    """
    value = os.environ.get(DATA_ENV)
    if not value:
        raise DataNotFoundError(
            f"${DATA_ENV} is not set. Point it at the folder that holds the datasets, e.g.\n"
            f"  export {DATA_ENV}=/path/to/shared/data\n{DATA_LAYOUT}"
        )
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"${DATA_ENV}={value!r} is not a directory.\n{DATA_LAYOUT}")
    return root


def data_path(*parts: str) -> Path:
    """A path inside the data root that must exist; a file is checked against ``SHA256SUMS``.

    A folder is returned unchecked: the caller verifies the files it reads in it with
    :func:`verify_files`.

    Raises:
        DataNotFoundError: naming the missing path and the variable to fix.
        DataIntegrityError: the file does not match its line in ``<root>/SHA256SUMS``.
    """
    path = data_root().joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"missing {path} (data root ${DATA_ENV}={data_root()}).\n{DATA_LAYOUT}"
        )
    if path.is_file():
        verify_files([path])
    return path


def cache_dir(*parts: str) -> Path:
    """A writable cache folder (``$TIEDLAB_CACHE`` or ``~/.cache/tiedlab``), created on demand."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tiedlab").expanduser()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# integrity: SHA256SUMS in the data root, digests cached by (size, mtime_ns)
# --------------------------------------------------------------------------------------------


def verify_files(paths: Iterable[Path]) -> None:
    """Check data files against ``<root>/SHA256SUMS``; a root without it, or an unlisted file, passes.

    Each listed file is hashed at most once per (size, mtime_ns): the digest is cached in
    :func:`hash_cache_file`, so a later check of an unchanged file costs one ``stat``.

    Raises:
        DataIntegrityError: a file's SHA-256 differs from its line (the first such file is named),
            or ``SHA256SUMS`` itself is malformed.
        ValueError: a path that is not inside the data root (a caller's mistake).
    """
    root = data_root()
    sums = read_sums(root)
    if sums is None:
        return
    listed = [(p, sums[rel]) for p, rel in ((Path(p), _relative(Path(p), root)) for p in paths) if rel in sums]
    if not listed:
        return
    cache_file = hash_cache_file()
    cache = _load_hash_cache(cache_file)
    fresh: dict[str, dict] = {}
    mismatches = []
    for path, expected in listed:
        actual = _file_digest(path, cache, fresh)
        if actual != expected:
            mismatches.append((path, expected, actual))
    if fresh:
        _save_hash_cache(cache_file, fresh)
    if mismatches:
        path, expected, actual = mismatches[0]
        raise _mismatch(path, root, expected, actual, len(mismatches))


def read_sums(root: Path) -> dict[str, str] | None:
    """``<root>/SHA256SUMS`` as {relative posix path: lower-case sha256}, or None if there is none.

    Accepts ``sha256sum`` output: ``<64 hex>  ./path`` (text mode) or ``<64 hex> *path`` (binary
    mode), with or without ``./``, and its ``\\``-escaped names; blank lines are skipped.

    Raises:
        DataIntegrityError: a line in another format, or one path listed with two digests.
    """
    sums_file = root / SUMS_NAME
    try:
        st = sums_file.stat()
    except FileNotFoundError:
        return None
    return dict(_parse_sums(str(sums_file), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _parse_sums(sums_path: str, size: int, mtime_ns: int) -> dict[str, str]:
    """The parsed lines of one version (size, mtime_ns) of a SHA256SUMS file, parsed once per process."""
    sums_file = Path(sums_path)
    fix = f"Fix: regenerate {sums_file} with sha256sum, or delete it to read the data unchecked."
    out: dict[str, str] = {}
    for lineno, line in enumerate(sums_file.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        digest, rel = _parse_sums_line(line)
        if digest is None:
            raise DataIntegrityError(
                f"{sums_file}: line {lineno} is not '<64 hex digits>  ./path' (got {line[:80]!r}). {fix}"
            )
        if out.get(rel, digest) != digest:
            raise DataIntegrityError(f"{sums_file}: {rel} is listed twice with different digests (line {lineno}). {fix}")
        out[rel] = digest
    return out


def _parse_sums_line(line: str) -> tuple[str | None, str]:
    """(digest, normalised relative path) of one SHA256SUMS line, or (None, "") if malformed."""
    escaped = line.startswith("\\")
    match = _SUMS_LINE.match(line[1:] if escaped else line)
    if match is None:
        return None, ""
    name = match.group(2)
    if escaped:  # sha256sum escapes names holding a newline or a backslash
        name = name.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
    return match.group(1).lower(), PurePosixPath(name).as_posix()


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the data root, as the posix path SHA256SUMS uses."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the data root {root}; only data files can be verified") from None


def hash_cache_file() -> Path:
    """Where verified digests are cached: ``cache_dir("integrity")/sha256.json``."""
    return cache_dir("integrity") / "sha256.json"


def _file_digest(path: Path, cache: dict[str, dict], fresh: dict[str, dict]) -> str:
    """The file's sha256 from the cache if its size and mtime_ns match, else hashed (and put in ``fresh``)."""
    key = str(path.resolve())
    st = path.stat()
    entry = cache.get(key)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["sha256"])
    digest = _sha256_file(path)
    fresh[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return digest


def _sha256_file(path: Path) -> str:
    """The lower-case hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _load_hash_cache(cache_file: Path) -> dict[str, dict]:
    """The cached {absolute path: {size, mtime_ns, sha256}}; an unreadable cache is logged and ignored
    (it only costs a re-hash)."""
    if not cache_file.is_file():
        return {}
    try:
        payload = json.loads(cache_file.read_text())
        if payload.get("format") != HASH_CACHE_FORMAT or not isinstance(payload.get("files"), dict):
            raise ValueError(f"format {payload.get('format')!r}, expected {HASH_CACHE_FORMAT}")
        return payload["files"]
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring unreadable digest cache %s (%s); files will be hashed again", cache_file, exc)
        return {}


def _save_hash_cache(cache_file: Path, fresh: dict[str, dict]) -> None:
    """Merge ``fresh`` into the cache file as it is now (another process may have added entries) and
    replace it atomically."""
    files = {**_load_hash_cache(cache_file), **fresh}
    payload = json.dumps({"format": HASH_CACHE_FORMAT, "files": files}, indent=0, sort_keys=True)
    atomic_write_bytes(cache_file, payload.encode())


def _mismatch(path: Path, root: Path, expected: str, actual: str, count: int) -> DataIntegrityError:
    others = f" ({count - 1} more listed file(s) also differ)" if count > 1 else ""
    return DataIntegrityError(
        f"{path} does not match {root / SUMS_NAME}: sha256 {actual[:12]}... ({path.stat().st_size:,} bytes), "
        f"expected {expected[:12]}...{others}; the file is damaged, truncated or was replaced. Fix: restore it "
        f"from the original data, or, if the new content is intended, update its line in {SUMS_NAME} "
        f"(sha256sum ./{_relative(path, root)})."
    )


# --------------------------------------------------------------------------------------------
# reading data files with errors that name the file
# --------------------------------------------------------------------------------------------


def read_npz(path: Path, keys: Iterable[str], *, fix: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz data file, never unpickling anything (``allow_pickle=False``).

    Raises:
        DataFormatError: naming the file (and array), for a truncated file, random bytes, a missing
            key or an unreadable array; ``fix`` is appended to the message.
    """
    keys = tuple(keys)
    if not zipfile.is_zipfile(path):
        raise DataFormatError(
            f"{path} is truncated or not an .npz archive ({path.stat().st_size:,} bytes, no zip directory "
            f"at its end). Fix: {fix}"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            missing = [k for k in keys if k not in names]
            if missing:
                raise DataFormatError(f"{path} lacks the arrays {missing} (it holds {sorted(names)}). Fix: {fix}")
            return {k: _read_member(z, path, k, fix) for k in keys}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataFormatError(f"{path} is damaged or truncated ({_reason(exc)}). Fix: {fix}") from exc


def _read_member(z: np.lib.npyio.NpzFile, path: Path, key: str, fix: str) -> np.ndarray:
    """One array of an open .npz, or DataFormatError naming the file and the array."""
    try:
        return z[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataFormatError(f"{path}: array {key!r} is unreadable ({_reason(exc)}). Fix: {fix}") from exc


def _reason(exc: BaseException) -> str:
    """A library error as one short line; never advice to turn on pickle loading."""
    text = " ".join(str(exc).split())
    if "allow_pickle" in text or "pickled" in text:
        return "it holds pickled Python objects, which tiedlab never loads"
    return f"{type(exc).__name__}: {text[:200]}"


def read_text_file(path: Path, *, fix: str) -> str:
    """A UTF-8 data file's text with its line endings as they are.

    Raises:
        DataFormatError: naming the file, when it is empty or not UTF-8; ``fix`` is appended.
    """
    raw = path.read_bytes()
    if not raw:
        raise DataFormatError(f"{path} is empty (0 bytes). Fix: {fix}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start:,}). Fix: {fix}"
        ) from exc
