"""Release bundles: one release with its adapters in a single verified file.

A bundle moves a release between data directories (staging → production, or into an archive).
It is a ``.tar.gz`` holding:

- ``bundle.json`` — the format, the release id and the SHA-256 of every other file;
- ``release.json`` — the release record (parent, adapters, index revision, router
  configuration, lineage, status) with the reports and approvals it had where it was made;
- ``artifacts/adapter/<digest>/…`` — each adapter artifact folder, with its manifest.

Import trusts nothing in the file: every member must be a plain file at a safe relative path,
every file must match ``bundle.json``, every adapter must hash to the digest it is filed under,
and the release id recomputed from the record must equal the recorded one. All of that is
checked before anything is written, so a corrupt, truncated or tampered bundle leaves no
release row and no artifact behind.

An imported release is a *candidate* here, whatever it was where it came from: the reports and
approvals in the bundle were made against another Active release, another index and other
users, so this registry's gates (QA, canary, human approval) must pass again before it is
swapped in. They are therefore not entered as this registry's reports or approvals (the gates
read those); a summary goes into the ``release.imported`` event and the bundle keeps the rest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from twinloop.kernel.atomic import atomic_writer, sha256_bytes, sha256_file
from twinloop.kernel.clock import now_iso
from twinloop.kernel.errors import IntegrityError, InvalidInputError
from twinloop.release.artifacts import ArtifactStore
from twinloop.release.registry import Release, ReleaseRegistry, release_id

FORMAT = "twinloop-release-bundle"
VERSION = 1
INDEX = "bundle.json"
RECORD = "release.json"
_ARTIFACT = re.compile(r"^artifacts/adapter/(?P<digest>[0-9a-f]{64})/(?P<rel>.+)$")
_CHUNK = 1 << 20


# -- export ------------------------------------------------------------------------------------

def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and time: the same release always gives the same bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def export_bundle(registry: ReleaseRegistry, rid: str, dest: Path, *, actor: str) -> Path:
    """Write release ``rid`` and its adapters to one ``.tar.gz`` bundle.

    The file appears atomically (temporary file, fsync, rename); each adapter is verified
    against its SHA-256 manifest before it is copied.

    Args:
        registry: The registry holding the release.
        rid: The release id.
        dest: A folder (the bundle is named ``<rid>.tar.gz`` in it) or the bundle's path.
        actor: Who exports, for the ``release.exported`` audit event.

    Returns:
        The bundle's path.

    Raises:
        InvalidInputError: Unknown release.
        IntegrityError: An adapter is missing or fails its SHA-256 check.
    """
    rel = registry.get(rid)
    folders = {digest: registry.artifacts.get("adapter", digest) for digest in sorted(set(rel.adapters.values()))}
    record = {
        "release": {"id": rel.id, "parent": rel.parent, "created_at": rel.created_at, "status": rel.status,
                    "adapters": rel.adapters, "index_revision": rel.index_revision,
                    "router_json": rel.router_json, "lineage": rel.lineage},
        "reports": registry.reports(rid),
        "approvals": registry.approvals(rid),
    }
    record_bytes = (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    sources: dict[str, Path] = {}
    for digest, folder in folders.items():
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                sources[f"artifacts/adapter/{digest}/{p.relative_to(folder).as_posix()}"] = p
    hashes = {RECORD: sha256_bytes(record_bytes), **{name: sha256_file(p) for name, p in sources.items()}}
    index_bytes = (json.dumps({"format": FORMAT, "version": VERSION, "release": rid, "files": hashes},
                              indent=2, sort_keys=True) + "\n").encode("utf-8")

    dest = Path(dest)
    path = dest / f"{rid}.tar.gz" if dest.is_dir() else dest
    with atomic_writer(path) as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            # The index first, so a reader sees what to expect before the content.
            for name, data in ((INDEX, index_bytes), (RECORD, record_bytes)):
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            for name, p in sources.items():
                with open(p, "rb") as f:
                    tar.addfile(_tarinfo(name, p.stat().st_size), f)
    registry.events.append("release.exported", actor=actor, subject=rid,
                           data={"file": path.name, "sha256": sha256_file(path), "adapters": len(folders),
                                 "files": len(hashes) + 1})
    return path


# -- import ------------------------------------------------------------------------------------

def _check_member(member: tarfile.TarInfo, seen: set[str]) -> str:
    """The member's name once it is known to be a plain file at a safe relative path."""
    name = member.name
    # An empty part means a leading "/" (absolute) or "//"; "." and ".." would leave the folder.
    if "\\" in name or "\x00" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidInputError(f"bundle member {name!r} has an unsafe path (absolute, '..' or empty part)")
    if member.issym() or member.islnk():
        raise InvalidInputError(f"bundle member {name!r} is a link; a bundle holds plain files only")
    if not member.isreg():
        raise InvalidInputError(f"bundle member {name!r} is not a plain file")
    if name != INDEX and name != RECORD and not _ARTIFACT.match(name):
        raise InvalidInputError(f"bundle member {name!r} is not part of a release bundle")
    if name in seen:
        raise InvalidInputError(f"bundle member {name!r} appears twice")
    seen.add(name)
    return name


def _extract(path: Path, into: Path) -> dict[str, str]:
    """Unpack the bundle's files under ``into``; returns member name → SHA-256 of its bytes."""
    try:
        # Read the whole gzip stream first: its CRC and length catch a flipped or missing byte
        # anywhere, even in the tar padding that the tar reader would silently stop at.
        with gzip.open(path, "rb") as gz:
            while gz.read(_CHUNK):
                pass
        digests: dict[str, str] = {}
        seen: set[str] = set()
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = _check_member(member, seen)
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has content
                target = into / name
                h = hashlib.sha256()
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out = open(target, "wb")
                except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
                    raise InvalidInputError(f"bundle member {name!r} clashes with another member's path") from e
                with src, out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                digests[name] = h.hexdigest()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise IntegrityError(f"bundle {path.name} is corrupt or truncated: {e}") from e
    return digests


def _load_json(folder: Path, name: str) -> dict[str, Any]:
    try:
        obj = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"bundle {name} is missing or not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise InvalidInputError(f"bundle {name} is not a JSON object")
    return obj


def _check_index(folder: Path, digests: dict[str, str]) -> dict[str, Any]:
    """``bundle.json`` must list exactly the other files, each with its SHA-256."""
    if INDEX not in digests:
        raise InvalidInputError(f"not a release bundle: it has no {INDEX}")
    index = _load_json(folder, INDEX)
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise InvalidInputError(f"not a release bundle of format {FORMAT!r} version {VERSION}: "
                                f"{index.get('format')!r} version {index.get('version')!r}")
    listed = index.get("files")
    if not isinstance(listed, dict):
        raise InvalidInputError(f"bundle {INDEX} has no file list")
    for name, expected in sorted(listed.items()):
        if name not in digests:
            raise IntegrityError(f"bundle member {name!r} is listed in {INDEX} but missing")
        if digests[name] != expected:
            raise IntegrityError(f"bundle member {name!r} fails its SHA-256 check")
    extra = sorted(set(digests) - set(listed) - {INDEX})
    if extra:
        raise IntegrityError(f"bundle member {extra[0]!r} is not listed in {INDEX}")
    return index


def _check_record(record: dict[str, Any]) -> dict[str, Any]:
    rel = record.get("release")
    if not isinstance(rel, dict):
        raise InvalidInputError(f"bundle {RECORD} has no release record")
    types = {"id": str, "parent": (str, type(None)), "adapters": dict, "index_revision": int, "router_json": str,
             "lineage": dict}
    for key, typ in types.items():
        value = rel.get(key)
        if key not in rel or not isinstance(value, typ) or isinstance(value, bool):
            raise InvalidInputError(f"bundle {RECORD}: field {key!r} is missing or malformed: {rel.get(key)!r}")
    for domain, digest in rel["adapters"].items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise InvalidInputError(f"bundle {RECORD}: adapter of domain {domain!r} has a malformed digest {digest!r}")
    return rel


def _origin_summary(record: dict[str, Any], index_sha: str) -> dict[str, Any]:
    """What the audit event keeps of where the release came from: figures and flags, no notes."""
    reports = record.get("reports") if isinstance(record.get("reports"), list) else []
    approvals = record.get("approvals") if isinstance(record.get("approvals"), list) else []
    return {"bundle_index_sha256": index_sha, "origin_created_at": record["release"].get("created_at"),
            "origin_status": record["release"].get("status"),
            "origin_reports": [{"kind": r.get("kind"), "passed": r.get("passed"), "created_at": r.get("created_at")}
                               for r in reports if isinstance(r, dict)],
            "origin_approvals": len(approvals)}


def import_bundle(registry: ReleaseRegistry, path: Path, *, actor: str) -> Release:
    """Verify a bundle and record its release here as a candidate.

    Importing a release that is already here changes nothing and returns it (its adapters
    are still verified).

    Args:
        registry: The registry to import into.
        path: The ``.tar.gz`` bundle.
        actor: Who imports, for the ``release.imported`` audit event.

    Returns:
        The release as recorded here (status ``candidate`` unless it was already present).

    Raises:
        InvalidInputError: No such file; not a release bundle; an unsafe member (absolute path,
            ``..``, link, device); the parent release is not in this registry.
        IntegrityError: Corrupt or truncated file; a member fails its SHA-256; an adapter does
            not hash to its digest; the release id does not match the record.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no bundle file at {path}")
    with tempfile.TemporaryDirectory(prefix="twinloop-import-") as scratch:
        work = Path(scratch) / "bundle"
        work.mkdir()
        digests = _extract(path, work)
        index = _check_index(work, digests)
        record = _load_json(work, RECORD)
        rel = _check_record(record)
        rid = rel["id"]
        if index.get("release") != rid or release_id(rel["parent"], rel["adapters"], rel["index_revision"],
                                                     rel["router_json"], rel["lineage"]) != rid:
            raise IntegrityError(f"bundle release id does not match its content ({rid!r})")

        wanted = set(rel["adapters"].values())
        filed = {m.group("digest") for name in digests if (m := _ARTIFACT.match(name))}
        if wanted - filed:
            raise IntegrityError(f"bundle lacks adapter {sorted(wanted - filed)[0]!r} that release {rid} names")
        if filed - wanted:
            raise InvalidInputError(f"bundle holds adapter {sorted(filed - wanted)[0]!r} that release {rid} "
                                    "does not name")
        # Hash each adapter into a scratch store first: the digest it gets must be the name it
        # is filed under, and nothing reaches the real store until every check has passed.
        trial = ArtifactStore(Path(scratch) / "trial")
        checked: dict[str, Path] = {}
        for digest in sorted(wanted):
            art = trial.put_dir(work / "artifacts" / "adapter" / digest, "adapter")
            if art.digest != digest:
                raise IntegrityError(f"bundle adapter {digest[:12]} does not hash to its name "
                                     f"(its files hash to {art.digest[:12]})")
            checked[digest] = art.path
        if rel["parent"] is not None and not registry.exists(rel["parent"]):
            raise InvalidInputError(f"release {rid} has parent {rel['parent']!r}, which is not in this registry; "
                                    "import the parent's bundle first (lineage is never cut)")

        # Every check passed: write. A failure from here on (disk full) can leave only
        # unreferenced adapter folders, which retention collects — never a release naming a
        # missing adapter, because the row is written last.
        for digest, folder in checked.items():
            registry.artifacts.put_dir(folder, "adapter")
        with registry.db.transaction() as conn:
            # Recorded directly rather than by create_candidate so the row and its
            # release.imported event commit together; created_at is when it arrived here
            # (what retention ages by), the original time goes into the event.
            cur = conn.execute(
                "INSERT OR IGNORE INTO releases(id, parent, created_at, status, adapters, index_revision,"
                " router_json, lineage) VALUES (?,?,?,?,?,?,?,?)",
                (rid, rel["parent"], now_iso(), "candidate",
                 json.dumps(rel["adapters"], sort_keys=True), rel["index_revision"], rel["router_json"],
                 json.dumps(rel["lineage"], sort_keys=True, default=str)))
            if cur.rowcount:
                registry.events.append("release.imported", actor=actor, subject=rid, conn=conn,
                                       reason="imported as a candidate: this registry's gates apply",
                                       data={"file": path.name, "parent": rel["parent"],
                                             "adapters": rel["adapters"],
                                             **_origin_summary(record, digests[INDEX])})
    return registry.get(rid)

