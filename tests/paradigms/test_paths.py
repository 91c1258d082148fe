"""A missing data root explains how to set TIEDLAB_DATA and what layout it expects; data files are
checked against the root's SHA256SUMS (digests cached by size and mtime); damaged files raise one-line
errors naming them."""

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from tiedlab.paradigms import paths
from tiedlab.paradigms.paths import (
    DataFormatError,
    DataIntegrityError,
    DataNotFoundError,
    cache_dir,
    data_path,
    data_root,
    hash_cache_file,
    read_npz,
    read_sums,
    read_text_file,
    verify_files,
)


def test_unset_data_root_explains_the_variable_and_layout(monkeypatch):
    monkeypatch.delenv("TIEDLAB_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match=r"(?s)\$TIEDLAB_DATA is not set.*export TIEDLAB_DATA=.*cifar10-jpeg"):
        data_root()


def test_data_root_that_is_not_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TIEDLAB_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        data_root()


def test_missing_file_names_the_path_and_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TIEDLAB_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=rf"missing {tmp_path}/mnist/mnist.npz \(data root"):
        data_path("mnist", "mnist.npz")


def test_cache_dir_is_created_under_tiedlab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "c"))
    path = cache_dir("vision", "x")
    assert path.is_dir() and path == tmp_path / "c" / "vision" / "x"


# --------------------------------------------------------------------------------------------
# SHA256SUMS checks and the digest cache
# --------------------------------------------------------------------------------------------

REAL_ROOT = os.environ.get("TIEDLAB_DATA")


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _make_root(tmp_path: Path, files: dict[str, bytes], listed: dict[str, bytes] | None) -> Path:
    """A data root holding ``files``; ``listed`` (path -> the bytes its SHA256SUMS line is computed
    from) becomes SHA256SUMS, or there is none when it is None."""
    root = tmp_path / "data"
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    root.mkdir(exist_ok=True)
    if listed is not None:
        lines = [f"{_sha(blob)}  ./{rel}\n" for rel, blob in listed.items()]
        (root / "SHA256SUMS").write_text("".join(lines))
    return root


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIEDLAB_CACHE", str(cache))
    return cache


@pytest.fixture
def counted_hashes(monkeypatch):
    """Every call to the hashing function, by path."""
    calls: list[Path] = []
    real = paths._sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(paths, "_sha256_file", counting)
    return calls


def _rewrite(path: Path, text: str) -> None:
    """Replace a file's text and move its mtime on by a second: a rewrite within one clock tick would
    otherwise keep both size and mtime_ns, which is what the caches key on."""
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _forbid_hashing(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(paths, "_sha256_file", fail)


def test_listed_file_that_matches_is_returned(tmp_path, monkeypatch, fresh_cache, counted_hashes):
    root = _make_root(tmp_path, {"a/x.txt": b"hello"}, {"a/x.txt": b"hello"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    assert data_path("a", "x.txt") == root / "a" / "x.txt"
    assert counted_hashes == [root / "a" / "x.txt"]
    assert hash_cache_file() == fresh_cache / "integrity" / "sha256.json"  # honours $TIEDLAB_CACHE
    assert hash_cache_file().is_file()


def test_mismatch_names_the_file_both_digests_and_the_fix(tmp_path, monkeypatch, fresh_cache):
    root = _make_root(tmp_path, {"tinyshakespeare/input.txt": b"half"}, {"tinyshakespeare/input.txt": b"whole text"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    with pytest.raises(DataIntegrityError) as err:
        data_path("tinyshakespeare", "input.txt")
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert str(root / "tinyshakespeare" / "input.txt") in msg
    assert _sha(b"whole text")[:12] in msg and _sha(b"half")[:12] in msg
    assert "SHA256SUMS" in msg and "restore" in msg


def test_unlisted_file_and_root_without_sums_pass(tmp_path, monkeypatch, fresh_cache, counted_hashes):
    root = _make_root(tmp_path, {"mine/own.txt": b"my data", "a/x.txt": b"x"}, {"a/x.txt": b"x"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    assert data_path("mine", "own.txt").read_bytes() == b"my data"
    bare = _make_root(tmp_path / "bare", {"a/x.txt": b"anything"}, None)
    monkeypatch.setenv("TIEDLAB_DATA", str(bare))
    assert data_path("a", "x.txt").read_bytes() == b"anything"
    assert counted_hashes == []  # nothing to check against: nothing hashed


def test_second_check_costs_no_hash(tmp_path, monkeypatch, fresh_cache, counted_hashes):
    root = _make_root(tmp_path, {"a/x.txt": b"x" * 1000}, {"a/x.txt": b"x" * 1000})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    data_path("a", "x.txt")
    assert len(counted_hashes) == 1
    _forbid_hashing(monkeypatch)
    data_path("a", "x.txt")
    verify_files([root / "a" / "x.txt"])


def test_changed_file_is_hashed_again(tmp_path, monkeypatch, fresh_cache, counted_hashes):
    root = _make_root(tmp_path, {"a/x.txt": b"good"}, {"a/x.txt": b"good"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    path = root / "a" / "x.txt"
    data_path("a", "x.txt")
    st = path.stat()
    path.write_bytes(b"evil")  # same size: only the mtime tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(DataIntegrityError, match="x.txt"):
        data_path("a", "x.txt")
    path.write_bytes(b"good, longer")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the first mtime again: only the size tells
    with pytest.raises(DataIntegrityError, match="x.txt"):
        data_path("a", "x.txt")
    assert counted_hashes == [path, path, path]


def test_known_mismatch_needs_no_new_hash_once_sums_is_fixed(tmp_path, monkeypatch, fresh_cache):
    root = _make_root(tmp_path, {"a/x.txt": b"new"}, {"a/x.txt": b"old"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    with pytest.raises(DataIntegrityError):
        data_path("a", "x.txt")
    _rewrite(root / "SHA256SUMS", f"{_sha(b'new')}  ./a/x.txt\n")  # the user accepts the new content
    _forbid_hashing(monkeypatch)
    data_path("a", "x.txt")


def test_unreadable_digest_cache_is_logged_and_rebuilt(tmp_path, monkeypatch, fresh_cache, counted_hashes, caplog):
    root = _make_root(tmp_path, {"a/x.txt": b"x"}, {"a/x.txt": b"x"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    hash_cache_file().write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="tiedlab.paradigms.paths"):
        data_path("a", "x.txt")
    assert "unreadable digest cache" in caplog.text and len(counted_hashes) == 1
    _forbid_hashing(monkeypatch)
    data_path("a", "x.txt")


def test_folder_is_not_checked_but_its_files_are(tmp_path, monkeypatch, fresh_cache):
    root = _make_root(tmp_path, {"tu/A/1.txt": b"bad", "tu/A/2.txt": b"ok"}, {"tu/A/1.txt": b"good", "tu/A/2.txt": b"ok"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    folder = data_path("tu", "A")
    verify_files([folder / "2.txt"])
    with pytest.raises(DataIntegrityError, match=r"1\.txt"):
        verify_files([folder / "2.txt", folder / "1.txt"])


def test_sums_formats_and_malformed_lines(tmp_path, monkeypatch, fresh_cache):
    root = _make_root(tmp_path, {}, None)
    digest = "ab" * 32
    (root / "SHA256SUMS").write_text(f"{digest}  ./a/x.txt\n\n{digest.upper()} *b/y.bin\r\n{digest}  c/z\n")
    assert read_sums(root) == {"a/x.txt": digest, "b/y.bin": digest, "c/z": digest}
    _rewrite(root / "SHA256SUMS", f"{digest}  ./a/x.txt\nnot a digest  ./b\n")
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    with pytest.raises(DataIntegrityError, match=r"SHA256SUMS: line 2 is not"):
        read_sums(root)
    _rewrite(root / "SHA256SUMS", f"{digest}  ./a/x.txt\n{'cd' * 32}  a/x.txt\n")
    with pytest.raises(DataIntegrityError, match=r"a/x\.txt is listed twice"):
        read_sums(root)


def test_verifying_a_path_outside_the_root_is_an_error(tmp_path, monkeypatch, fresh_cache):
    root = _make_root(tmp_path, {"a/x.txt": b"x"}, {"a/x.txt": b"x"})
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    with pytest.raises(ValueError, match="not inside the data root"):
        verify_files([tmp_path / "elsewhere.txt"])


@pytest.mark.skipif(not REAL_ROOT, reason="TIEDLAB_DATA is not set")
@pytest.mark.parametrize("parts", [("planetoid", "cora.npz"), ("tinyshakespeare", "input.txt")])
def test_real_data_matches_its_sums(parts, monkeypatch, tmp_path_factory, counted_hashes):
    monkeypatch.setenv("TIEDLAB_DATA", REAL_ROOT)
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path_factory.getbasetemp() / "tiedlab-cache"))
    assert "/".join(parts) in read_sums(Path(REAL_ROOT))  # really checked, not skipped as unlisted
    assert data_path(*parts).is_file()
    assert len(counted_hashes) <= 1


# --------------------------------------------------------------------------------------------
# unreadable files: one-line DataFormatError naming the file
# --------------------------------------------------------------------------------------------


def _npz_bytes(tmp_path: Path, **arrays) -> bytes:
    path = tmp_path / "src.npz"
    np.savez(path, **arrays)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_read_npz_damaged_file(tmp_path, damage):
    good = _npz_bytes(tmp_path, x=np.arange(1000), y=np.zeros(3))
    blob = {"truncated": good[: len(good) // 2], "random": np.random.default_rng(0).bytes(4096), "empty": b""}[damage]
    path = tmp_path / "cora.npz"
    path.write_bytes(blob)
    with pytest.raises(DataFormatError) as err:
        read_npz(path, ("x", "y"), fix="copy it again")
    msg = str(err.value)
    assert msg.startswith(f"{path} is truncated or not an .npz archive") and msg.endswith("Fix: copy it again")
    assert "allow_pickle" not in msg and "\n" not in msg


def test_read_npz_never_unpickles_and_names_the_array(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.arange(3), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataFormatError, match=r"obj\.npz: array 'obj' is unreadable \(it holds pickled Python objects") as err:
        read_npz(path, ("x", "obj"), fix="f")
    assert "allow_pickle" not in str(err.value)
    with pytest.raises(DataFormatError, match=r"obj\.npz lacks the arrays \['z'\]"):
        read_npz(path, ("x", "z"), fix="f")
    assert read_npz(path, ("x",), fix="f")["x"].tolist() == [0, 1, 2]


def test_read_npz_corrupt_member(tmp_path):
    good = bytearray(_npz_bytes(tmp_path, x=np.arange(1000)))
    good[200:260] = b"\xff" * 60  # inside x's data: the zip directory survives, the CRC does not
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(good))
    with pytest.raises(DataFormatError, match=rf"{path}: array 'x' is unreadable \(BadZipFile"):
        read_npz(path, ("x",), fix="f")


def test_read_text_file_empty_and_not_utf8(tmp_path):
    empty = tmp_path / "input.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataFormatError, match=rf"^{empty} is empty \(0 bytes\)\. Fix: copy it$"):
        read_text_file(empty, fix="copy it")
    binary = tmp_path / "austen.txt"
    binary.write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataFormatError, match=rf"{binary} is not UTF-8 text \(byte 0xff at offset 2\)"):
        read_text_file(binary, fix="copy it")
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a\r\nb")
    assert read_text_file(crlf, fix="x") == "a\r\nb"  # line endings kept as they are
