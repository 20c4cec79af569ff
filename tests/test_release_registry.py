"""Content-addressed artifacts and release records with pointers."""

from __future__ import annotations

import pytest

from twinloop.db import Database
from twinloop.errors import IntegrityError, InvalidInputError
from twinloop.release.artifacts import ArtifactStore
from twinloop.release.registry import ReleaseRegistry


def adapter_folder(tmp_path, name="a", payload=b"weights-1"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "adapter_model.safetensors").write_bytes(payload)
    return folder


def test_same_content_same_address_and_verified(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    a = store.put_dir(adapter_folder(tmp_path, "a"), "adapter")
    b = store.put_dir(adapter_folder(tmp_path, "b"), "adapter")
    c = store.put_dir(adapter_folder(tmp_path, "c", b"weights-2"), "adapter")
    assert a.digest == b.digest != c.digest
    assert (store.get("adapter", a.digest) / "adapter_model.safetensors").read_bytes() == b"weights-1"
    assert not list((tmp_path / "artifacts" / "adapter").glob(".*")), "no temporary folder left"


@pytest.mark.parametrize("damage", ["edit", "delete", "extra-file"])
def test_damaged_artifact_is_refused(tmp_path, damage):
    store = ArtifactStore(tmp_path / "artifacts")
    art = store.put_dir(adapter_folder(tmp_path), "adapter")
    target = art.path / "adapter_model.safetensors"
    if damage == "edit":
        target.write_bytes(b"weights-X")
    elif damage == "delete":
        target.unlink()
    else:
        (art.path / "backdoor.py").write_text("print(1)")
    with pytest.raises(IntegrityError, match="SHA-256"):
        store.get("adapter", art.digest)


def test_release_ids_are_content_addresses_and_pointers_move(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    reg = ReleaseRegistry(Database(tmp_path / "t.db"), store)
    art = store.put_dir(adapter_folder(tmp_path), "adapter")
    r1 = reg.create_candidate(None, {"law": art.digest}, 3, '{"router": 1}', {"seed": 0})
    again = reg.create_candidate(None, {"law": art.digest}, 3, '{"router": 1}', {"seed": 0})
    assert r1.id == again.id and r1.id.startswith("rel_") and len(reg.list()) == 1
    r2 = reg.create_candidate(r1.id, {"law": art.digest}, 4, '{"router": 1}', {"seed": 0})
    assert r2.id != r1.id and r2.parent == r1.id
    assert reg.pointer("active") is None
    reg.set_pointer("active", r1.id)
    reg.set_pointer("shadow", r2.id)
    assert (reg.pointer("active"), reg.pointer("shadow")) == (r1.id, r2.id)
    with pytest.raises(InvalidInputError, match="unknown release 'rel_nope'"):
        reg.set_pointer("active", "rel_nope")
    with pytest.raises(InvalidInputError, match="unknown pointer 'canary'"):
        reg.pointer("canary")


def test_candidate_needs_verified_adapters(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    reg = ReleaseRegistry(Database(tmp_path / "t.db"), store)
    with pytest.raises(IntegrityError):
        reg.create_candidate(None, {"law": "0" * 64}, 1, "{}", {})
