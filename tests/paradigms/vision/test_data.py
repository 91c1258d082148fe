"""Tests for tiedlab.paradigms.vision.data and .augment (CPU, deterministic, < 60 s).

Real-data tests read ``$TIEDLAB_DATA`` (read-only); every test writes caches only to a temporary
``$TIEDLAB_CACHE``. The CIFAR-10 JPEG copy is decoded once per session (session fixture) into that
temporary cache, and later loads reuse it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REAL_ROOT = os.environ.get("TIEDLAB_DATA")
pytestmark = pytest.mark.skipif(not REAL_ROOT, reason="TIEDLAB_DATA is not set")

from tiedlab.paradigms import paths  # noqa: E402
from tiedlab.paradigms.paths import (  # noqa: E402
    DataFormatError,
    DataIntegrityError,
    DataNotFoundError,
    hash_cache_file,
)
from tiedlab.paradigms.vision import data_cifar as cifar  # noqa: E402
from tiedlab.paradigms.vision.augment import (  # noqa: E402
    iterate_batches,
    normalize,
    random_crop_flip,
)
from tiedlab.paradigms.vision.data import (  # noqa: E402
    VisionData,
    check_image_shape,
    load_vision_data,
    read_idx,
)

# ----------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """A temporary $TIEDLAB_CACHE (and the real $TIEDLAB_DATA) for the whole session."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("tiedlab-cache")
    mp.setenv("TIEDLAB_CACHE", str(cache))
    mp.setenv("TIEDLAB_DATA", str(REAL_ROOT))
    yield cache
    mp.undo()


@pytest.fixture(autouse=True)
def _never_touch_home_cache(session_cache: Path) -> None:
    assert os.environ["TIEDLAB_CACHE"] == str(session_cache)


@pytest.fixture(scope="session")
def cifar_first(session_cache: Path) -> tuple[VisionData, float]:
    """CIFAR-10 with val_size=0, decoded from the JPEG npz into the empty session cache."""
    assert not list(session_cache.rglob("cifar10-jpeg-decoded_*"))
    t0 = time.perf_counter()
    d = load_vision_data("cifar10", val_size=0)
    return d, time.perf_counter() - t0


def _jpeg_bytes(img: torch.Tensor) -> np.ndarray:
    from torchvision.io import encode_jpeg

    return encode_jpeg(img, quality=90).numpy()


def _fake_cifar_arrays(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        blobs = [_jpeg_bytes(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)) for _ in range(n)]
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        out[f"{split}_jpeg"] = np.concatenate(blobs).astype(np.uint8)
        out[f"{split}_offsets"] = offsets
        out[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    out["classes"] = np.array(["c%d" % i for i in range(10)])
    return out


def _write_cifar(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = root / "cifar10-jpeg" / "cifar10_jpeg.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fashion(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))
    return folder


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root with the standard layout's parent; $TIEDLAB_DATA points at it."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    return root


# ----------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------


def test_mnist_real() -> None:
    d = load_vision_data("mnist", val_size=5000)
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (55000, 5000, 10000)
    assert d.image_shape == (1, 28, 28) and d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert d.num_classes == 10 and d.display_name == "MNIST"
    assert torch.bincount(d.val_y, minlength=10).min() >= 450  # stratified
    full = load_vision_data("mnist", val_size=0)
    assert full.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # official order kept
    assert full.mean[0] == pytest.approx(0.1307, abs=5e-4)
    assert full.std[0] == pytest.approx(0.3081, abs=5e-4)
    assert full.val_x.shape == (0, 1, 28, 28) and full.val_y.shape == (0,)


def test_fashion_mnist_real() -> None:
    d = load_vision_data("fashion-mnist", val_size=0)
    # val_size=0 keeps the official train order
    assert d.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(d.train_y).tolist() == [6000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.mean[0] == pytest.approx(0.2860, abs=5e-4)
    split = load_vision_data("fashion-mnist", val_size=5000, seed=3)
    assert torch.bincount(split.val_y).tolist() == [500] * 10  # stratified
    # train + val hold exactly the official train images (compared as multisets of image hashes)
    assert len(split.train_y) == 55000
    weights = torch.randint(1, 1 << 20, (28 * 28,), generator=torch.Generator().manual_seed(0))

    def keys(x: torch.Tensor) -> torch.Tensor:
        return torch.sort((x.flatten(1).long() * weights).sum(1)).values

    assert torch.equal(keys(torch.cat([split.train_x, split.val_x])), keys(d.train_x))


def test_val_split_is_seeded() -> None:
    a = load_vision_data("mnist", val_size=100, seed=1, limit_test=5)
    b = load_vision_data("mnist", val_size=100, seed=1, limit_test=5)
    c = load_vision_data("mnist", val_size=100, seed=2, limit_test=5)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.val_x, c.val_x)


def test_limits_keep_first_n_after_seeded_shuffle() -> None:
    a = load_vision_data("mnist", val_size=10, limit_train=64, limit_test=32, seed=5)
    b = load_vision_data("mnist", val_size=10, limit_train=64, limit_test=32, seed=5)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (64, 10, 32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    official = load_vision_data("mnist", val_size=0).test_y
    assert not torch.equal(a.test_y, official[:32])  # shuffled before taking the first 32


def test_cifar10_first_load_decodes_and_caches(cifar_first: tuple[VisionData, float], session_cache: Path) -> None:
    d, seconds = cifar_first
    print(f"\ncifar10 first load (decode + cache write): {seconds:.2f} s")
    assert d.display_name == "CIFAR-10 (JPEG q75 copy)" and d.name == "cifar10"
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.num_classes == 10
    assert torch.bincount(d.train_y).tolist() == [5000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=1e-3)
    caches = list((session_cache / "vision").glob("cifar10-jpeg-decoded_*.npz"))
    assert len(caches) == 1
    assert not list((session_cache / "vision").glob("*.tmp"))


def test_cifar10_cached_load_does_not_decode(
    cifar_first: tuple[VisionData, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoder called although the cache is valid")

    monkeypatch.setattr(cifar, "_decode_jpegs", boom)
    t0 = time.perf_counter()
    d = load_vision_data("cifar10", val_size=5000)
    seconds = time.perf_counter() - t0
    print(f"\ncifar10 cached load: {seconds:.2f} s")
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (45000, 5000, 10000)
    assert d.image_shape == (3, 32, 32)
    assert torch.bincount(d.val_y).tolist() == [500] * 10
    assert torch.equal(d.test_x, cifar_first[0].test_x)


def test_check_image_shape(cifar_first: tuple[VisionData, float]) -> None:
    d = cifar_first[0]
    check_image_shape(d, (3, 32, 32))
    with pytest.raises(ValueError) as err:
        check_image_shape(d, (1, 28, 28))
    msg = str(err.value)
    assert "(3, 32, 32)" in msg and "(1, 28, 28)" in msg
    assert "data.channels=3" in msg and "data.image_size=32" in msg


# ----------------------------------------------------------------------------------------------
# digits and argument errors
# ----------------------------------------------------------------------------------------------


def test_digits_split() -> None:
    d = load_vision_data("digits")
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (1297, 200, 300)
    assert d.image_shape == (1, 8, 8) and d.train_x.dtype == torch.uint8
    assert int(d.train_x.max()) == 255 and int(d.train_x.min()) == 0
    other = load_vision_data("digits", val_size=17, seed=4)
    assert (len(other.train_y), len(other.val_y), len(other.test_y)) == (1297, 200, 300)
    assert torch.equal(other.test_x, d.test_x)  # the test split does not depend on seed/val_size
    assert not torch.equal(other.val_x, d.val_x)
    none = load_vision_data("digits", val_size=0)
    assert (len(none.train_y), len(none.val_y), len(none.test_y)) == (1497, 0, 300)
    assert none.val_x.shape == (0, 1, 8, 8)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        load_vision_data("imagenet")
    for name in ("cifar10", "mnist", "fashion-mnist", "digits", "imagenet"):
        assert name in str(err.value)


@pytest.mark.parametrize("kwargs", [{"val_size": -1}, {"val_size": 60000}, {"limit_train": 0}])
def test_bad_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=str(list(kwargs.values())[0])):
        load_vision_data("mnist", **kwargs)


# ----------------------------------------------------------------------------------------------
# fake roots: cache invalidation, fallbacks, missing and corrupt files
# ----------------------------------------------------------------------------------------------


def test_fake_cifar_cache_invalidated_by_source_change(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIEDLAB_CACHE", str(cache))
    src = _write_cifar(fake_root, _fake_cifar_arrays())
    calls = []
    real = cifar._decode_jpegs

    def counting(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        calls.append(len(buffers))
        return real(buffers)

    monkeypatch.setattr(cifar, "_decode_jpegs", counting)
    a = load_vision_data("cifar10", val_size=10)
    assert calls == [20, 10]
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (10, 10, 10)
    load_vision_data("cifar10", val_size=10)
    assert calls == [20, 10]  # reused
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    load_vision_data("cifar10", val_size=10)
    assert calls == [20, 10, 20, 10]  # source changed -> decoded again
    assert len(list((cache / "vision").glob("cifar10-jpeg-decoded_*.npz"))) == 1  # stale one removed


def test_cifar_missing_everywhere(fake_root: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_vision_data("cifar10", val_size=1)
    msg = str(err.value)
    assert str(fake_root / "cifar10-jpeg" / "cifar10_jpeg.npz") in msg
    assert str(fake_root / "cifar10" / "cifar-10-batches-py") in msg
    assert "TIEDLAB_DATA" in msg and "data.download=true" in msg


def test_data_root_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIEDLAB_DATA")
    with pytest.raises(DataNotFoundError, match="unset"):
        load_vision_data("mnist", val_size=1)


def test_cifar_truncated_npz(fake_root: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, **_fake_cifar_arrays())
    path = fake_root / "cifar10-jpeg" / "cifar10_jpeg.npz"
    path.parent.mkdir()
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        load_vision_data("cifar10", val_size=1)
    assert str(path) in str(err.value)


def test_cifar_offsets_do_not_match_buffer(fake_root: Path) -> None:
    arrays = _fake_cifar_arrays()
    arrays["train_offsets"] = arrays["train_offsets"].copy()
    arrays["train_offsets"][-1] += 7
    path = _write_cifar(fake_root, arrays)
    with pytest.raises(ValueError, match="offsets") as err:
        load_vision_data("cifar10", val_size=1)
    assert str(path) in str(err.value)


def test_cifar_offsets_wrong_length(fake_root: Path) -> None:
    arrays = _fake_cifar_arrays()
    arrays["test_offsets"] = arrays["test_offsets"][:-1]
    path = _write_cifar(fake_root, arrays)
    with pytest.raises(ValueError, match="test_offsets") as err:
        load_vision_data("cifar10", val_size=1)
    assert str(path) in str(err.value)


def test_cifar_bad_jpeg_bytes(fake_root: Path) -> None:
    arrays = _fake_cifar_arrays()
    buf = arrays["train_jpeg"].copy()
    a, b = arrays["train_offsets"][3], arrays["train_offsets"][4]
    buf[a:b] = 7  # image 3 is garbage
    arrays["train_jpeg"] = buf
    path = _write_cifar(fake_root, arrays)
    with pytest.raises(ValueError, match="image 3") as err:
        load_vision_data("cifar10", val_size=1)
    assert str(path) in str(err.value)


def test_cifar_missing_key(fake_root: Path) -> None:
    arrays = _fake_cifar_arrays()
    del arrays["test_labels"]
    path = _write_cifar(fake_root, arrays)
    with pytest.raises(ValueError, match="test_labels") as err:
        load_vision_data("cifar10", val_size=1)
    assert str(path) in str(err.value)


def test_mnist_truncated_and_inconsistent_npz(fake_root: Path) -> None:
    path = fake_root / "mnist" / "mnist.npz"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    y = (np.arange(20) % 10).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    path.write_bytes(buf.getvalue()[:-300])
    with pytest.raises(ValueError) as err:
        load_vision_data("mnist", val_size=1)
    assert str(path) in str(err.value)
    np.savez(path, x_train=x, y_train=y[:-1], x_test=x[:5], y_test=y[:5])
    with pytest.raises(ValueError, match="y_train") as err:
        load_vision_data("mnist", val_size=1)
    assert str(path) in str(err.value)
    np.savez(path, x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    d = load_vision_data("mnist", val_size=10)
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (10, 10, 5)


def test_mnist_torchvision_folder_fallback(fake_root: Path) -> None:
    raw = fake_root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 12), ("t10k", 4)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(rng.integers(0, 256, (n, 28, 28))))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(n) % 10))
    d = load_vision_data("mnist", val_size=2)
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (10, 2, 4)
    assert d.image_shape == (1, 28, 28) and d.test_y.tolist() == [0, 1, 2, 3]


def test_fashion_fake_ok_and_missing_file(fake_root: Path) -> None:
    folder = _write_fashion(fake_root)
    d = load_vision_data("fashion-mnist", val_size=0)
    assert d.train_y[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert d.display_name == "Fashion-MNIST"
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_vision_data("fashion-mnist", val_size=0)
    assert str(folder / "t10k-labels-idx1-ubyte.gz") in str(err.value)


def test_fashion_wrong_magic(fake_root: Path) -> None:
    folder = _write_fashion(fake_root)
    path = folder / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x0D  # float32 type code
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match="magic") as err:
        load_vision_data("fashion-mnist", val_size=0)
    assert str(path) in str(err.value)


def test_fashion_header_payload_mismatch(fake_root: Path) -> None:
    folder = _write_fashion(fake_root)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-28]))
    with pytest.raises(ValueError, match="header") as err:
        load_vision_data("fashion-mnist", val_size=0)
    assert str(path) in str(err.value)


def test_fashion_truncated_gzip(fake_root: Path) -> None:
    folder = _write_fashion(fake_root)
    path = folder / "t10k-images-idx3-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError) as err:
        load_vision_data("fashion-mnist", val_size=0)
    assert str(path) in str(err.value)


def test_fashion_count_mismatch(fake_root: Path) -> None:
    folder = _write_fashion(fake_root)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(29) % 10)))
    with pytest.raises(ValueError, match="30 images") as err:
        load_vision_data("fashion-mnist", val_size=0)
    assert str(folder / "train-labels-idx1-ubyte.gz") in str(err.value)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(arr))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz", expect_ndim=3), arr)
    with pytest.raises(ValueError, match="dimensions"):
        read_idx(tmp_path / "a-idx3-ubyte", expect_ndim=1)
    with pytest.raises(DataNotFoundError, match="nope"):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.parametrize("damage", ["random", "pickled"])
def test_mnist_unreadable_npz_names_the_file(fake_root: Path, damage: str) -> None:
    path = fake_root / "mnist" / "mnist.npz"
    path.parent.mkdir()
    if damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
        expect = f"{path} is truncated or not an .npz archive (3,000 bytes, no zip directory at its end). Fix: "
    else:
        x = np.zeros((2, 28, 28), np.uint8)
        np.savez(path, x_train=np.array([x, "y"], dtype=object), y_train=np.zeros(2), x_test=x, y_test=np.zeros(2))
        expect = f"{path}: array 'x_train' is unreadable (it holds pickled Python objects, which tiedlab never loads)"
    with pytest.raises(DataFormatError) as err:
        load_vision_data("mnist", val_size=1)
    msg = str(err.value)
    assert msg.startswith(expect) and "copy mnist.npz again" in msg
    assert "allow_pickle" not in msg and "\n" not in msg


def _write_sums(root: Path, listed: dict[str, bytes]) -> None:
    """SHA256SUMS in ``root`` listing each relative path with the digest of the given bytes."""
    lines = [f"{hashlib.sha256(blob).hexdigest()}  ./{rel}\n" for rel, blob in listed.items()]
    (root / "SHA256SUMS").write_text("".join(lines))


def test_cifar_npz_checked_against_sums_before_decoding(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "cache"))  # the session's decode cache is for real CIFAR
    src = _write_cifar(fake_root, _fake_cifar_arrays())
    _write_sums(fake_root, {"cifar10-jpeg/cifar10_jpeg.npz": b"the listed copy"})

    def no_decode(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        raise AssertionError("decoded a file that fails its checksum")

    real_decode = cifar._decode_jpegs
    monkeypatch.setattr(cifar, "_decode_jpegs", no_decode)
    with pytest.raises(DataIntegrityError) as err:
        load_vision_data("cifar10", val_size=1)
    msg = str(err.value)
    assert msg.startswith(f"{src} does not match {fake_root / 'SHA256SUMS'}: sha256 ")
    assert hashlib.sha256(b"the listed copy").hexdigest()[:12] in msg and "sha256sum ./cifar10-jpeg/cifar10_jpeg.npz" in msg
    monkeypatch.setattr(cifar, "_decode_jpegs", real_decode)
    _write_sums(fake_root, {"cifar10-jpeg/cifar10_jpeg.npz": src.read_bytes()})
    assert len(load_vision_data("cifar10", val_size=1).test_y) == 10


def test_fashion_and_mnist_files_checked_against_sums(fake_root: Path) -> None:
    folder = _write_fashion(fake_root)
    _write_sums(fake_root, {f"fashion-mnist/{p.name}": p.read_bytes() for p in folder.iterdir()})
    load_vision_data("fashion-mnist", val_size=0)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(_idx_bytes(np.arange(10)[::-1] % 10)))  # valid IDX, other labels
    with pytest.raises(DataIntegrityError, match=rf"^{bad} does not match"):
        load_vision_data("fashion-mnist", val_size=0)
    mnist = fake_root / "mnist" / "mnist.npz"
    mnist.parent.mkdir()
    x = np.zeros((20, 28, 28), np.uint8)
    np.savez(mnist, x_train=x, y_train=np.arange(20) % 10, x_test=x[:5], y_test=np.arange(5))
    _write_sums(fake_root, {"mnist/mnist.npz": b"another file"})
    with pytest.raises(DataIntegrityError, match=rf"^{mnist} does not match"):
        load_vision_data("mnist", val_size=1)


def test_torchvision_folder_files_checked_against_sums(fake_root: Path) -> None:
    raw = fake_root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 12), ("t10k", 4)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((n, 28, 28))))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(n) % 10))
    _write_sums(fake_root, {"mnist/MNIST/raw/t10k-labels-idx1-ubyte": b"the original labels"})
    with pytest.raises(DataIntegrityError, match=rf"^{raw / 't10k-labels-idx1-ubyte'} does not match"):
        load_vision_data("mnist", val_size=2)


def test_real_cifar_digest_is_cached(cifar_first: tuple[VisionData, float], monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's first CIFAR-10 load hashed the real npz (listed in SHA256SUMS) once; later loads only stat it."""
    npz = Path(REAL_ROOT) / "cifar10-jpeg" / "cifar10_jpeg.npz"
    assert str(npz.resolve()) in hash_cache_file().read_text()

    def fail(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(paths, "_sha256_file", fail)
    assert torch.equal(load_vision_data("cifar10", val_size=0).test_y, cifar_first[0].test_y)


# ----------------------------------------------------------------------------------------------
# augment
# ----------------------------------------------------------------------------------------------


def _match_crops(src: torch.Tensor, out: torch.Tensor, padding: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each image, the (row offset, col offset, flipped) that reproduces ``out`` from padded ``src``."""
    b, _, h, w = src.shape
    padded = torch.nn.functional.pad(src, (padding,) * 4)
    found = torch.full((b, 3), -1, dtype=torch.long)
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            crop = padded[:, :, oy : oy + h, ox : ox + w]
            for fl, cand in ((0, crop), (1, crop.flip(-1))):
                hit = (cand == out).flatten(1).all(1)
                found[hit] = torch.tensor([oy, ox, fl])
    assert (found >= 0).all(), "some outputs are not a crop/flip of the padded source"
    return found[:, 0], found[:, 1], found[:, 2].bool()


def test_crop_flip_outputs_are_padded_crops_and_differ_per_image() -> None:
    # small images keep every op below torch's parallel grain size (fast even on a busy machine)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g).expand(48, -1, -1, -1).contiguous()  # identical images
    out = random_crop_flip(x, padding=3, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    oy, ox, fl = _match_crops(x, out, 3)
    assert len({(a, b, c) for a, b, c in zip(oy.tolist(), ox.tolist(), fl.tolist())}) > 20
    assert 8 < int(fl.sum()) < 40
    assert len({tuple(o.flatten().tolist()) for o in out}) > 20


def test_crop_of_ones_has_expected_count() -> None:
    b, c, h, w, p = 32, 3, 16, 16, 4
    probe = torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(2)) + 1.0
    out_probe = random_crop_flip(probe, padding=p, generator=torch.Generator().manual_seed(9))
    oy, ox, _ = _match_crops(probe, out_probe, p)
    out = random_crop_flip(torch.ones(b, c, h, w), padding=p, generator=torch.Generator().manual_seed(9))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    expected = (h - (oy - p).abs()) * (w - (ox - p).abs())
    counts = out.flatten(2).sum(-1)  # (B, C)
    assert torch.equal(counts, expected[:, None].float().expand(b, c))


def test_crop_flip_identity_and_double_flip() -> None:
    x = torch.rand(8, 3, 32, 32)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)
    once = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(5))
    twice = random_crop_flip(once, padding=0, flip=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(twice, x)
    assert not torch.equal(once, x)
    flipped = (once == x.flip(-1)).flatten(1).all(1)
    same = (once == x).flatten(1).all(1)
    assert (flipped | same).all()


def test_crop_flip_seeded_and_uint8() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(x, padding=-1)


def test_normalize() -> None:
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = normalize(x, mean, std)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, ref)
    with pytest.raises(ValueError, match="3 channels"):
        normalize(x, (0.5,), (0.5,))


def test_iterate_batches() -> None:
    x = torch.arange(10).view(10, 1).float()
    y = torch.arange(10)
    batches = list(iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for bx, by in batches:
        assert torch.equal(bx[:, 0].long(), by)
    again = list(iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    plain = list(iterate_batches(x, y, 4, shuffle=False, drop_last=True))
    assert [b[1].tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(x, y, 0))
