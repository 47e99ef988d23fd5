"""Where a training stage's inputs and run state live: data from URIs (copied once per node),
the driver's inputs shipped to object storage, Ray Train's run store, and the run key.

A cluster whose nodes share no file system with the driver (docs/scale-out.md) trains from
object storage: `ray.storage` is a URI, the driver uploads its local inputs there once per
content (`ship_inputs`), and every worker copies what it reads into its node's cache
(`local_folder`). The run key names a stage's Ray Train run after everything DVC hashes for
it, so an interrupted stage resumes its run and a changed one never does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from btbnet.config import to_dict
from btbnet.data import DataError

from ..runtime.params import REPO_ROOT, is_uri

if TYPE_CHECKING:
    from .config import StageSpec

RAY_RUNS = REPO_ROOT / ".ray_runs"
DATA_CACHE = Path(tempfile.gettempdir()) / "btbnet-data"


def local_folder(data: str | Path) -> Path:
    """A data folder or file on this node: a path as it is; a URI (s3://…, gs://…, file://…:
    any pyarrow file system) copied into `DATA_CACHE` once per version of its content (the cache
    key digests the URI and every file's path, size and modification time), so that a cluster
    without a shared file system trains from object storage. The copy appears whole or not at all."""
    if not is_uri(data):
        return Path(data)
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(str(data))
    single = fs.get_file_info(root)
    listing = [single] if single.type == pyarrow.fs.FileType.File else fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    if not any(i.type == pyarrow.fs.FileType.File for i in listing):
        raise DataError(f"{data}: no files there")
    key = hashlib.sha256(str(data).encode())
    for info in sorted(listing, key=lambda i: i.path):
        key.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
    target = DATA_CACHE / key.hexdigest()[:16]
    if not target.is_dir():
        # Workers on one machine may copy the same version at once: each into its own folder,
        # renamed onto `target` only if no other copy got there first (never replacing one in use).
        DATA_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=DATA_CACHE))
        try:
            pyarrow.fs.copy_files(root, str(tmp / single.base_name if single.type == pyarrow.fs.FileType.File else tmp),
                                  source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())  # fmt: skip
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(tmp, target)  # fails if another copy is there already: use that one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise DataError(f"{data}: could not copy it to {target}")
    return target / single.base_name if single.type == pyarrow.fs.FileType.File else target


def hash_files(digest: Any, files: list[Path], root: Path | None = None) -> None:
    """Feed each file's path (below `root`, if given) and content into `digest`."""
    for path in files:
        digest.update(str(path.relative_to(root) if root else path).encode())
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())


def files_below(path: Path) -> list[Path]:
    return [path] if path.is_file() else [f for f in sorted(path.rglob("*")) if f.is_file()]


def content_digest(local: Path) -> str:
    """A digest of a file's or folder's content (paths below it and bytes)."""
    digest = hashlib.sha256()
    hash_files(digest, files_below(local), local if local.is_dir() else local.parent)
    return digest.hexdigest()[:16]


def ship_inputs(spec: StageSpec, data: Path, store: RunStore, data_digest: str | None = None) -> StageSpec:
    """The spec the workers get. When `ray.storage` is a URI (a cluster whose nodes share no
    file system with the driver, README "Scale-out"), the driver's local inputs (the data
    folder, the initial checkpoint, backbone weights given as a file) are uploaded to
    `<storage>/inputs/<content digest>/` once per content, and the workers read them from
    there (`local_folder`); otherwise the spec is returned as it is. `data_digest`: `data`'s
    `content_digest`, if the caller has it."""
    if not is_uri(store.uri):
        return spec

    def ship(path: str | Path | None, digest: str | None = None) -> str | Path | None:
        if path is None or is_uri(path) or not Path(path).exists():
            return path  # a URI, or a name such as "imagenet" that every node resolves itself
        return store.upload(Path(path), f"inputs/{digest or content_digest(Path(path))}")

    shipped_data = spec.data if is_uri(spec.data) else ship(data, data_digest)
    return replace(spec, data=shipped_data, init_checkpoint=ship(spec.init_checkpoint), backbone_weights=ship(spec.backbone_weights))


def run_key(spec: StageSpec, data_digest: str | None = None) -> str:
    """A digest of what DVC hashes for the stage: its settings (the whole spec), the content of
    its data and initial weights, and the project code loaded. A killed stage resumes its Ray
    Train run only under the same key; a changed stage starts afresh. `data_digest`: the data's
    `content_digest` when the caller has it already (the data is read once per stage)."""
    digest = hashlib.sha256(json.dumps(to_dict(spec), sort_keys=True, default=str).encode())
    code = sorted(Path(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)
                  and Path(m.__file__).is_relative_to(REPO_ROOT) and Path(m.__file__).relative_to(REPO_ROOT).parts[0] in ("btbnet", "pipeline"))  # fmt: skip
    digest.update((data_digest or content_digest(local_folder(spec.data))).encode())
    hash_files(digest, code + [Path(p) for p in (spec.init_checkpoint, spec.backbone_weights) if p and not is_uri(p) and Path(p).is_file()])
    return digest.hexdigest()[:16]


class RunStore:
    """Ray Train's run folders of the training stages: `ray.storage` (a local folder or any
    pyarrow file-system URI), `<stage>-<run key>` each."""

    def __init__(self, storage: str | None):
        import pyarrow.fs

        self.uri = storage or str(RAY_RUNS)
        if not is_uri(self.uri):
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)

    def runs(self, stage_name: str) -> list[str]:
        import pyarrow.fs

        listed = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.base_name for i in listed if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(f"{stage_name}-"))

    def remove(self, name: str) -> None:
        self.fs.delete_dir(f"{self.root}/{name}")

    def upload(self, local: Path, folder: str) -> str:
        """`local` (a file or folder) copied to `<storage>/<folder>/` unless a complete copy is
        there already (its `.complete` marker is written last); the copy's URI."""
        import pyarrow.fs

        target, marker = f"{self.root}/{folder}", f"{self.root}/{folder}/.complete"
        if self.fs.get_file_info(marker).type != pyarrow.fs.FileType.File:
            self.fs.create_dir(target)
            destination = f"{target}/{local.name}" if local.is_file() else target
            pyarrow.fs.copy_files(str(local), destination, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=self.fs)
            with self.fs.open_output_stream(marker) as f:
                f.write(b"")
        return f"{self.uri.rstrip('/')}/{folder}" + (f"/{local.name}" if local.is_file() else "")
