"""The model store on disk: ``<root>/<name>/<version>/manifest.json`` plus artifacts.

Scanning is pure file work: it finds every version directory, parses its manifest, verifies
the checksums and checks the backend's artifacts are there. Entries that fail carry the
reason and are not served; the repository reports them in GET /models and the log.

Paths are only ever built from names found by listing the store (or from the settings),
never from a name a client sent: clients' names are compared with ``model_names(root)``.
A version's ``signature`` (file names, sizes, mtimes) tells a rescan what changed without
hashing anything again.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from service.manifest import (
    BACKENDS,
    MANIFEST_FILE,
    REQUIRED_OUTPUTS,
    Manifest,
    verify_artifacts,
)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # no "/", no leading "."


@dataclass
class StoreEntry:
    name: str
    version: int
    path: Path
    manifest: Manifest | None = None
    problems: list[str] = field(default_factory=list)
    signature: tuple = ()

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems


def scan_store(root: Path, backend: str, names: list[str] | None = None) -> list[StoreEntry]:
    """Every version of every model (or of ``names``), sorted by name then version.

    A requested name with no directory yields an entry with version 0 and a problem.
    """
    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    wanted = names or found
    entries: list[StoreEntry] = []
    for name in wanted:
        versions = _versions(root / name)
        if not versions:
            entries.append(StoreEntry(name, 0, root / name,
                                      problems=[f"no version directory under {root / name}"]))
        entries.extend(load_entry(root / name / str(v), name, v, backend) for v in versions)
    return entries


def model_names(root: Path) -> list[str]:
    """Names of the model directories under ``root`` (valid names only), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and MODEL_NAME.fullmatch(p.name))


def _versions(model_dir: Path) -> list[int]:
    """Positive integer version directories (a ``.tmp-3`` being copied in is ignored)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def version_dirs(model_dir: Path) -> dict[int, Path]:
    return {v: Path(model_dir) / str(v) for v in _versions(Path(model_dir))}


def signature(path: Path) -> tuple:
    """(name, size, mtime_ns) of every file of a version directory: changes when any file is
    added, removed, rewritten or touched."""
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in Path(path).iterdir()
                            if p.is_file() and (st := p.stat())))
    except OSError:
        return ()


def load_entry(path: Path, name: str, version: int, backend: str) -> StoreEntry:
    entry = StoreEntry(name, version, path, signature=signature(path))
    if not (path / MANIFEST_FILE).is_file():
        entry.problems.append(f"{MANIFEST_FILE}: missing")
        return entry
    try:
        manifest = Manifest.read(path)
    except (ValidationError, ValueError, OSError) as exc:
        entry.problems.append(f"{MANIFEST_FILE}: invalid ({str(exc).splitlines()[0]})")
        return entry
    entry.manifest = manifest
    entry.problems.extend(check_manifest(manifest, name, version, backend))
    entry.problems.extend(verify_artifacts(path, manifest))
    return entry


def check_manifest(manifest: Manifest, name: str, version: int, backend: str) -> list[str]:
    """What the manifest lacks for serving with ``backend``."""
    problems = []
    if manifest.name != name or manifest.version != version:
        problems.append(f"manifest says {manifest.name}/{manifest.version}, directory says "
                        f"{name}/{version}")
    if backend not in manifest.backends:
        problems.append(f"exported without {backend} ({', '.join(BACKENDS[backend])} not in the "
                        f"manifest; it holds {manifest.backends or 'no complete backend'}): "
                        f"serve it with DIFFRES_BACKEND={(manifest.backends or [backend])[0]}")
    outputs = {o.name for o in manifest.outputs}
    problems.extend(f"output {o!r} missing" for o in REQUIRED_OUTPUTS if o not in outputs)
    if not manifest.labels:
        problems.append("manifest has no labels")
    if manifest.compressor.in_f_dim != manifest.frontend.n_mels:
        problems.append(f"compressor in_f_dim {manifest.compressor.in_f_dim} != front end "
                        f"n_mels {manifest.frontend.n_mels}")
    return problems
