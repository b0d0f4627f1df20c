"""IDX parsing and MNIST loading: good files, truncated, garbled, wrong magic, gzip damage, the 8:2 split."""

from __future__ import annotations

import contextlib
import errno
import gzip
import shutil
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import shared.data
from shared.data import (
    FILES,
    MnistFormatError,
    MnistNotFound,
    MnistUnreadable,
    load_mnist,
    normalize,
    parse_idx,
    read_idx_file,
    train_val_split,
)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_round_trips_images_and_labels():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    assert np.array_equal(parse_idx(idx_bytes(images)), images)
    assert np.array_equal(parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad magic"),  # float type code
        (lambda b: b"\x01\x00\x08\x03" + b[4:], "bad magic"),
        (lambda b: b"\x00\x00\x08\x07" + b[4:], "bad magic"),  # 7 dimensions
        (lambda b: b"\x00\x00", "too short"),
        (lambda b: b"", "too short"),
        # 2**31 x 2**31 x 4 bytes: numpy's int64 product wrapped to 0, an empty payload "matched" and reshape failed
        (lambda b: b"\x00\x00\x08\x03" + struct.pack(">III", 2**31, 2**31, 4), "truncated"),
    ],
)
def test_parse_idx_rejects_damaged_files(mutate, message):
    good = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(MnistFormatError, match=message):
        parse_idx(mutate(good))


def test_read_idx_file_handles_gzip_and_raw(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    raw = idx_bytes(labels)
    (tmp_path / "raw").write_bytes(raw)
    with gzip.open(tmp_path / "packed.gz", "wb") as f:
        f.write(raw)
    assert np.array_equal(read_idx_file(tmp_path / "raw"), labels)
    assert np.array_equal(read_idx_file(tmp_path / "packed.gz"), labels)


def test_truncated_gzip_is_an_error_not_a_shorter_dataset(tmp_path):
    raw = idx_bytes(np.zeros((100, 28, 28), dtype=np.uint8))
    packed = gzip.compress(raw)
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(MnistFormatError):
        read_idx_file(tmp_path / "cut.gz")


def test_content_checksum_is_checked(tmp_path):
    (tmp_path / "labels").write_bytes(idx_bytes(np.zeros(10, dtype=np.uint8)))
    with pytest.raises(MnistFormatError, match="MD5"):
        read_idx_file(tmp_path / "labels", md5="0" * 32)


def test_load_mnist_reads_the_real_files_in_place(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_labels.shape == (10000,)
    assert torch.bincount(mnist.test_labels.long()).tolist()[0] == 980  # MNIST's published count of test zeros


def test_load_mnist_rejects_a_corrupt_copy(tmp_path, mnist_dir):
    for name, _, _ in FILES.values():
        shutil.copy(next(mnist_dir.glob(f"{name}*")), tmp_path)
    target = next(tmp_path.glob("t10k-labels*"))
    data = bytearray(gzip.decompress(target.read_bytes()) if target.suffix == ".gz" else target.read_bytes())
    data[100] ^= 0xFF  # one flipped label byte: still parses, but is not MNIST
    target.unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(MnistFormatError, match="MD5"):
        load_mnist(tmp_path, download=False)


def test_missing_files_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_mnist(tmp_path, download=False)


def test_split_is_reproducible_disjoint_and_8_to_2():
    train_a, val_a = train_val_split(60000, seed=3)
    train_b, val_b = train_val_split(60000, seed=3)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert len(train_a) == 48000 and len(val_a) == 12000
    assert len(set(train_a.tolist()) | set(val_a.tolist())) == 60000
    assert not torch.equal(train_val_split(60000, seed=4)[1], val_a)


def test_normalize_shape_and_statistics(mnist):
    x = normalize(mnist.train_images[:2000])
    assert x.shape == (2000, 1, 28, 28)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


class _Mirror:
    """A loopback HTTP server standing in for an MNIST mirror (the tests have no internet)."""

    def __init__(self, root):
        import functools
        import http.server
        import threading

        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *args: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirrors(tmp_path, mnist_dir):
    """Two mirrors: the first serves a corrupt copy of every file (damaged content in a sound gzip wrapper, or a
    damaged gzip stream), the second the real ones."""
    bad_root, good_root = tmp_path / "bad-mirror", tmp_path / "good-mirror"
    bad_root.mkdir()
    good_root.mkdir()
    for name, _, _ in FILES.values():
        source = next(mnist_dir.glob(f"{name}*"))
        raw = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
        (good_root / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        if "labels" in name:
            damaged = bytearray(raw)
            damaged[-1] ^= 0xFF
            (bad_root / f"{name}.gz").write_bytes(gzip.compress(bytes(damaged), compresslevel=1))
        else:  # bytes flipped inside the deflate stream: zlib itself fails
            stream = bytearray(gzip.compress(raw, compresslevel=1))
            for i in range(len(stream) // 2, len(stream) // 2 + 64):
                stream[i] ^= 0x5A
            (bad_root / f"{name}.gz").write_bytes(bytes(stream))
    bad, good = _Mirror(bad_root), _Mirror(good_root)
    yield bad.url, good.url
    bad.close()
    good.close()


def test_download_verifies_content_and_falls_back_to_the_next_mirror(tmp_path, mirrors, monkeypatch, mnist):
    import shared.data as data

    monkeypatch.setattr(data, "MIRRORS", mirrors)
    target = tmp_path / "downloaded"
    loaded = load_mnist(target, download=True)
    assert torch.equal(loaded.test_labels, mnist.test_labels)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{name}.gz" for name, _, _ in FILES.values()), (
        "only the verified files, no partial downloads left behind"
    )


def test_a_download_is_readable_as_the_umask_allows_and_old_parts_are_removed(tmp_path, mirrors, monkeypatch):
    """mkstemp's file is owner-only: a server running as another user of the group could not read MNIST. And
    what a download killed with kill -9 left (.<name>.*.part) stayed for ever."""
    import os
    import time

    import shared.data as data

    monkeypatch.setattr(data, "MIRRORS", mirrors[1:])
    target = tmp_path / "downloaded"
    target.mkdir()
    name = FILES["test_labels"][0]
    stale, fresh = target / f".{name}.old.part", target / f".{name}.another-process.part"
    stale.write_bytes(b"cut short")
    fresh.write_bytes(b"still being written")
    os.utime(stale, (time.time() - 2 * data.STALE_PART_SECONDS,) * 2)
    load_mnist(target, download=True)
    umask = os.umask(0o022)
    os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~umask for p in target.glob("*.gz"))
    assert not stale.exists() and fresh.exists()


def test_download_fails_clearly_when_no_mirror_has_a_good_copy(tmp_path, mirrors, monkeypatch):
    import shared.data as data

    monkeypatch.setattr(data, "MIRRORS", mirrors[:1])  # only the corrupt one
    target = tmp_path / "downloaded"
    with pytest.raises(RuntimeError, match=r"could not download .*(MD5|corrupt gzip).*MNIST_DATA_DIR"):
        load_mnist(target, download=True)
    assert not any(target.glob("*.gz")), "a corrupt download never takes the real name"
    assert not any(target.glob("*.part"))


def test_a_failed_download_into_a_mistyped_folder_leaves_none_of_the_folders_it_made(tmp_path, mirrors, monkeypatch):
    """--data-dir typo/sub/mnist with no mirror to answer: mnist/ was removed again, typo/ and typo/sub/ stayed."""
    import shared.data as data

    monkeypatch.setattr(data, "MIRRORS", mirrors[:1])  # only the corrupt one
    kept = tmp_path / "kept"  # there before: stays
    kept.mkdir()
    with pytest.raises(RuntimeError, match=r"could not download"):
        load_mnist(kept / "typo" / "sub" / "mnist", download=True)
    assert kept.is_dir() and not any(kept.iterdir())


def test_a_folder_that_cannot_be_written_is_said_as_such_not_as_every_mirror_failing(tmp_path, mirrors, monkeypatch):
    """--data-dir naming a file, downloads allowed: the error was blamed on each mirror's URL in turn (FileExistsError
    against both), as if the network had failed. No mirror can help; the folder is what to mend."""
    import shared.data as data

    monkeypatch.setattr(data, "MIRRORS", mirrors)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        data.MnistNotWritable, match=r"cannot write .*\.gz into .*a-file .*make it a writable folder"
    ) as e:
        load_mnist(blocker, download=True)
    assert "http" not in str(e.value) and blocker.read_text() == ""


def test_a_full_disk_is_said_as_such_at_once_not_blamed_on_every_mirror(tmp_path, mirrors, monkeypatch):
    """ENOSPC while the download was written: every mirror was tried and blamed in turn, each file fetched again
    from each, and the advice was to put the files in the very folder that has no room."""
    import shared.data as data

    monkeypatch.setattr(data, "MIRRORS", mirrors[::-1])  # the good mirror first: only the disk can fail
    asked = []
    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: asked.append(url) or real_urlopen(url, **kw))

    class FillsUp:
        """The download's file on a disk with room for 64 KiB."""

        def __init__(self, out):
            self.out, self.written = out, 0

        def write(self, chunk):
            self.written += len(chunk)
            if self.written > 65536:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.out.write(chunk)

        def __getattr__(self, name):
            return getattr(self.out, name)

    real_writer = data.atomic_writer

    @contextlib.contextmanager
    def writer_on_a_full_disk(path, **kwargs):
        with real_writer(path, **kwargs) as (out, part):
            yield FillsUp(out), part

    monkeypatch.setattr(data, "atomic_writer", writer_on_a_full_disk)
    target = tmp_path / "full"
    target.mkdir()
    with pytest.raises(data.MnistNotWritable, match=r"No space left on device\); free some space there") as e:
        load_mnist(target, download=True)
    assert len(asked) == 1 and "http" not in str(e.value), (asked, str(e.value))
    assert not any(target.iterdir()), "the part written before the disk filled is not left behind"


def copy_of_mnist(mnist_dir: Path, folder: Path) -> Path:
    for name, _, _ in FILES.values():
        shutil.copy(next(mnist_dir.glob(f"{name}*")), folder)
    return folder


def test_a_file_this_user_may_not_read_is_said_as_such_not_as_another_error(tmp_path, mnist_dir, monkeypatch):
    # Tests run as root, whom file modes do not stop: the refusal is the operating system's, made here.
    folder = copy_of_mnist(mnist_dir, tmp_path)
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if "t10k-labels" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(shared.data, "open", refusing_open, raising=False)
    with pytest.raises(
        MnistUnreadable, match=r"t10k-labels-idx1-ubyte.*cannot read it \(Permission denied\); make it "
    ):
        load_mnist(folder, download=False)


def test_a_folder_this_user_may_not_look_into_is_said_as_such(tmp_path, monkeypatch):
    def refusing_is_file(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", refusing_is_file)
    with pytest.raises(MnistUnreadable, match="cannot read it") as caught:
        load_mnist(tmp_path, download=False)
    assert isinstance(caught.value, MnistNotFound)  # what every caller already says "put the files there" for
