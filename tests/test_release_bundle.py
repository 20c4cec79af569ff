"""Release bundles: export, verified import, refusal of corrupt or hostile files."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from twinloop.kernel.atomic import sha256_bytes
from twinloop.kernel.db import Database
from twinloop.kernel.errors import IntegrityError, InvalidInputError
from twinloop.release.artifacts import ArtifactStore
from twinloop.release.bundle import export_bundle, import_bundle
from twinloop.release.registry import ReleaseRegistry


def registry(root) -> ReleaseRegistry:
    return ReleaseRegistry(Database(root / "t.db"), ArtifactStore(root / "artifacts"))


def adapter(reg: ReleaseRegistry, tmp_path, name: str) -> str:
    folder = tmp_path / "src" / name
    (folder / "nested").mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "adapter_model.safetensors").write_bytes(name.encode() * 100)
    (folder / "nested" / "ewc_state.json").write_text('{"lambda": 0.4}')
    return reg.artifacts.put_dir(folder, "adapter").digest


@pytest.fixture
def source(tmp_path):
    """A registry with base → r1 (two adapters, a QA report and an approval)."""
    reg = registry(tmp_path / "staging")
    base = reg.ensure_base('{"router": 1}', 3, "tiny")
    law, med = adapter(reg, tmp_path, "law"), adapter(reg, tmp_path, "medical")
    r1 = reg.create_candidate(base.id, {"law": law, "medical": med}, 3, '{"router": 1}',
                              {"job_id": "job_1", "domains": {"law": {"samples": ["ab" * 32]}}, "seed": 0})
    reg.add_report(r1.id, "qa", True, {"pass_rate": 0.9}, status="qa_passed")
    reg.approve(r1.id, "cli:alice", "reviewed")
    return reg, base.id, r1.id


def release_rows(reg: ReleaseRegistry) -> int:
    return reg.db.conn.execute("SELECT COUNT(*) FROM releases").fetchone()[0]


def adapter_folders(reg: ReleaseRegistry) -> list[str]:
    root = reg.artifacts.root / "adapter"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def members(path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def pack(path, files: dict[str, bytes], *, rehash: bool = True, extra: list[tarfile.TarInfo] = ()) -> None:
    """Write a bundle-shaped tar; with ``rehash`` its bundle.json lists the files as they now are."""
    if rehash:
        index = json.loads(files["bundle.json"])
        index["files"] = {n: sha256_bytes(b) for n, b in files.items() if n != "bundle.json"}
        files = {**files, "bundle.json": json.dumps(index).encode()}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)


def test_round_trip_into_a_fresh_data_dir(tmp_path, source):
    src, base, r1 = source
    (tmp_path / "out").mkdir()
    base_file = export_bundle(src, base, tmp_path / "out", actor="cli:ops")
    r1_file = export_bundle(src, r1, tmp_path / "out" / "r1.tgz", actor="cli:ops")
    assert base_file.name == f"{base}.tar.gz" and r1_file.name == "r1.tgz"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "no temporary left"
    assert len(src.events.list(action="release.exported")) == 2

    dst = registry(tmp_path / "prod")
    assert import_bundle(dst, base_file, actor="cli:ops").id == base
    rel = import_bundle(dst, r1_file, actor="cli:ops")
    original = src.get(r1)
    assert (rel.id, rel.parent, rel.adapters, rel.lineage, rel.router_json, rel.index_revision) == (
        original.id, original.parent, original.adapters, original.lineage, original.router_json,
        original.index_revision)
    # A candidate here: the source's QA report and approval do not count as this registry's gates.
    assert rel.status == "candidate" and dst.reports(r1) == [] and dst.approvals(r1) == []
    for digest in rel.adapters.values():
        folder = dst.artifacts.get("adapter", digest)  # verified against its manifest
        assert (folder / "nested" / "ewc_state.json").read_text() == '{"lambda": 0.4}'
    assert dst.training_data(r1) == {"law": ["ab" * 32]}
    ev = dst.events.list(action="release.imported", subject=r1)[0]
    assert ev.data["origin_status"] == "qa_passed" and ev.data["origin_approvals"] == 1
    assert [(r["kind"], r["passed"]) for r in ev.data["origin_reports"]] == [("qa", True)]
    assert dst.events.verify().ok


def test_export_is_reproducible(tmp_path, source):
    src, _base, r1 = source
    a = export_bundle(src, r1, tmp_path / "a.tar.gz", actor="cli:ops")
    b = export_bundle(src, r1, tmp_path / "b.tar.gz", actor="cli:ops")
    assert a.read_bytes() == b.read_bytes()
    assert list(members(a))[:2] == ["bundle.json", "release.json"]


def test_importing_twice_is_idempotent(tmp_path, source):
    src, base, _r1 = source
    path = export_bundle(src, base, tmp_path / "base.tar.gz", actor="cli:ops")
    dst = registry(tmp_path / "prod")
    first = import_bundle(dst, path, actor="cli:ops")
    second = import_bundle(dst, path, actor="cli:ops")
    assert first == second and release_rows(dst) == 1
    assert len(dst.events.list(action="release.imported")) == 1


def test_unknown_parent_is_refused(tmp_path, source):
    src, base, r1 = source
    path = export_bundle(src, r1, tmp_path / "r1.tar.gz", actor="cli:ops")
    dst = registry(tmp_path / "prod")
    with pytest.raises(InvalidInputError, match=f"parent '{base}'.*import the parent's bundle first"):
        import_bundle(dst, path, actor="cli:ops")
    assert release_rows(dst) == 0 and adapter_folders(dst) == []


def test_a_flipped_byte_is_refused_and_nothing_imported(tmp_path, source):
    src, base, r1 = source
    dst = registry(tmp_path / "prod")
    import_bundle(dst, export_bundle(src, base, tmp_path / "base.tar.gz", actor="cli:ops"), actor="cli:ops")
    # r1's parent is present in dst, so only the damage can stop the import.
    good = export_bundle(src, r1, tmp_path / "r1.tar.gz", actor="cli:ops").read_bytes()
    for offset in (len(good) // 3, len(good) // 2, len(good) - 12):
        bad = bytearray(good)
        bad[offset] ^= 0x40
        damaged = tmp_path / f"bad{offset}.tar.gz"
        damaged.write_bytes(bytes(bad))
        with pytest.raises(IntegrityError, match="corrupt or truncated|SHA-256"):
            import_bundle(dst, damaged, actor="cli:ops")
    truncated = tmp_path / "short.tar.gz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(IntegrityError, match="corrupt or truncated"):
        import_bundle(dst, truncated, actor="cli:ops")
    assert release_rows(dst) == 1 and adapter_folders(dst) == []  # only the base, which has no adapters


def test_edited_member_fails_its_sha256(tmp_path, source):
    src, _base, r1 = source
    files = members(export_bundle(src, r1, tmp_path / "r1.tar.gz", actor="cli:ops"))
    name = next(n for n in files if n.endswith("adapter_model.safetensors"))
    files[name] = b"backdoored weights"
    pack(tmp_path / "edited.tar.gz", files, rehash=False)
    dst = registry(tmp_path / "prod")
    dst.ensure_base('{"router": 1}', 3, "tiny")
    with pytest.raises(IntegrityError, match=f"bundle member '{name}' fails its SHA-256 check"):
        import_bundle(dst, tmp_path / "edited.tar.gz", actor="cli:ops")
    assert adapter_folders(dst) == []


def test_consistently_forged_adapter_does_not_hash_to_its_name(tmp_path, source):
    src, base, r1 = source
    files = members(export_bundle(src, r1, tmp_path / "r1.tar.gz", actor="cli:ops"))
    name = next(n for n in files if n.endswith("adapter_model.safetensors"))
    files[name] = b"backdoored weights"
    pack(tmp_path / "forged.tar.gz", files)  # bundle.json re-hashed: only the content address catches it
    dst = registry(tmp_path / "prod")
    import_bundle(dst, export_bundle(src, base, tmp_path / "base.tar.gz", actor="cli:ops"), actor="cli:ops")
    with pytest.raises(IntegrityError, match="does not hash to its name"):
        import_bundle(dst, tmp_path / "forged.tar.gz", actor="cli:ops")
    assert release_rows(dst) == 1 and adapter_folders(dst) == []


def _edit_lineage(files):
    record = json.loads(files["release.json"])
    record["release"]["lineage"]["seed"] = 1
    files["release.json"] = json.dumps(record).encode()


def _edit_index_release(files):
    index = json.loads(files["bundle.json"])
    index["release"] = "rel_0000000000000000"
    files["bundle.json"] = json.dumps(index).encode()


@pytest.mark.parametrize("edit", [_edit_lineage, _edit_index_release], ids=["lineage", "index-release"])
def test_edited_record_does_not_match_its_release_id(tmp_path, source, edit):
    src, base, r1 = source
    files = members(export_bundle(src, r1, tmp_path / "r1.tar.gz", actor="cli:ops"))
    edit(files)
    pack(tmp_path / "forged.tar.gz", files)
    dst = registry(tmp_path / "prod")
    with pytest.raises(IntegrityError, match="bundle release id does not match its content"):
        import_bundle(dst, tmp_path / "forged.tar.gz", actor="cli:ops")
    assert release_rows(dst) == 0 and adapter_folders(dst) == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("hostile, words", [
    (_member("../evil"), "unsafe path"),
    (_member("artifacts/adapter/../../evil"), "unsafe path"),
    (_member("/etc/evil"), "unsafe path"),
    (_member("artifacts/adapter/x", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_member("release.lnk", tarfile.LNKTYPE, "release.json"), "is a link"),
    (_member("fifo", tarfile.FIFOTYPE), "not a plain file"),
    (_member("notes.txt"), "not part of a release bundle"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo", "stray-file"])
def test_hostile_members_are_refused(tmp_path, source, hostile, words):
    src, base, _r1 = source
    files = members(export_bundle(src, base, tmp_path / "base.tar.gz", actor="cli:ops"))
    pack(tmp_path / "hostile.tar.gz", files, extra=[hostile])
    dst = registry(tmp_path / "prod")
    with pytest.raises(InvalidInputError, match=f"bundle member {hostile.name!r} .*{words}"):
        import_bundle(dst, tmp_path / "hostile.tar.gz", actor="cli:ops")
    assert release_rows(dst) == 0
    assert not (tmp_path / "evil").exists() and not (tmp_path / "prod" / "evil").exists()


def test_not_a_bundle(tmp_path):
    dst = registry(tmp_path / "prod")
    with pytest.raises(InvalidInputError, match="no bundle file"):
        import_bundle(dst, tmp_path / "missing.tar.gz", actor="cli:ops")
    plain = tmp_path / "plain.tar.gz"
    plain.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(IntegrityError, match="corrupt or truncated"):
        import_bundle(dst, plain, actor="cli:ops")
