"""PolicyRegistry: monotonic versions, whole copies, checksummed deterministic archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lwd.config import PolicyConfig
from lwd.fleet.registry import (
    POLICY_FILES,
    InvalidArchiveError,
    InvalidPolicyError,
    PolicyIntegrityError,
    PolicyNotFoundError,
    PolicyRegistry,
    build_archive,
    extract_archive,
)
from lwd.policy.checkpoint import load_policy, save_policy, save_training_state
from lwd.policy.flow import FlowPolicy
from lwd.policy.normalizer import Normalizer

TINY = PolicyConfig(state_dim=4, action_dim=2, chunk=2, flow_steps=2, width=8, depth=1, lang_dim=4)


def make_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A tiny policy checkpoint (weights differ with ``seed``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    norm = Normalizer(4, 2).fit(rng.normal(size=(20, 4)), rng.uniform(-1, 1, (20, 2)))
    return save_policy(directory, FlowPolicy(TINY, norm), extra={"seed": seed})


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def registry(tmp_path):
    return PolicyRegistry(tmp_path / "policies")


def test_publish_get_checksum_archive(tmp_path, registry):
    assert registry.latest() is None
    ckpt = make_checkpoint(tmp_path / "a")
    save_training_state(ckpt, torch.optim.Adam(load_policy(ckpt).parameters()), step=3)
    v1 = registry.publish(ckpt)
    v2 = registry.publish(make_checkpoint(tmp_path / "b", seed=1))
    assert (v1, v2, registry.latest()) == (1, 2, 2)
    directory = registry.get(1)
    assert sorted(p.name for p in directory.iterdir()) == sorted(POLICY_FILES)  # no optimizer
    for name in POLICY_FILES:
        assert (directory / name).read_bytes() == (ckpt / name).read_bytes()
    assert load_policy(directory).cfg == TINY
    data = registry.archive(1)
    assert hashlib.sha256(data).hexdigest() == registry.checksum(1)
    assert registry.checksum(1) != registry.checksum(2)
    assert data == build_archive(ckpt)  # deterministic: same files, same bytes
    info = registry.info(2)
    assert info.version == 2 and info.size_bytes == len(registry.archive(2))
    assert [i.version for i in registry.versions()] == [1, 2]
    assert list((registry.root / "tmp").iterdir()) == []


def test_republishing_the_latest_content_is_idempotent(tmp_path, registry):
    a, b = make_checkpoint(tmp_path / "a"), make_checkpoint(tmp_path / "b", seed=1)
    assert registry.publish(a) == 1
    assert registry.publish(a) == 1  # a retry
    assert registry.publish(b) == 2
    assert registry.publish(a) == 3  # a rollback is a new version


def test_archive_round_trips_through_extract_and_publish(tmp_path, registry):
    v = registry.publish(make_checkpoint(tmp_path / "a"))
    names = extract_archive(registry.archive(v), tmp_path / "robot")
    assert names == list(POLICY_FILES)
    assert load_policy(tmp_path / "robot").cfg == TINY
    other = PolicyRegistry(tmp_path / "other")
    assert other.publish_archive(registry.archive(v)) == 1
    assert other.checksum(1) == registry.checksum(v)


def test_unknown_versions(registry, tmp_path):
    with pytest.raises(PolicyNotFoundError, match="no policy version 1 .*no policy was published"):
        registry.get(1)
    registry.publish(make_checkpoint(tmp_path / "a"))
    for call in (registry.get, registry.checksum, registry.archive):
        with pytest.raises(PolicyNotFoundError, match=r"no policy version 5 .*versions 1..1 exist"):
            call(5)
    with pytest.raises(TypeError, match="must be an int"):
        registry.get("1")  # type: ignore[arg-type]


def test_publishing_a_non_checkpoint_fails_and_leaves_nothing(tmp_path, registry):
    with pytest.raises(InvalidPolicyError, match="not a directory"):
        registry.publish(tmp_path / "nowhere")
    ckpt = make_checkpoint(tmp_path / "a")
    (ckpt / "normalizer.json").unlink()
    with pytest.raises(InvalidPolicyError, match="missing normalizer.json"):
        registry.publish(ckpt)
    ckpt = make_checkpoint(tmp_path / "b")
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InvalidPolicyError, match="does not load as a policy.*safetensors"):
        registry.publish(ckpt)
    assert registry.latest() is None
    assert list((registry.root / "versions").iterdir()) == []
    assert list((registry.root / "tmp").iterdir()) == []


def test_modified_files_are_detected(tmp_path, registry):
    v = registry.publish(make_checkpoint(tmp_path / "a"))
    (registry.get(v) / "config.json").write_text("{}")
    with pytest.raises(PolicyIntegrityError, match="no longer matches its checksum"):
        registry.archive(v)
    (registry.get(v) / "config.json").unlink()
    with pytest.raises(PolicyIntegrityError, match="missing a file"):
        registry.archive(v)


def test_versions_survive_reopening_and_orphans_are_replaced(tmp_path, registry):
    registry.publish(make_checkpoint(tmp_path / "a"))
    sha = registry.checksum(1)
    (registry.root / "versions" / "2").mkdir()  # as if a publish crashed before its commit
    (registry.root / "versions" / "2" / "junk").write_text("x")
    again = PolicyRegistry(registry.root)
    assert again.latest() == 1 and again.checksum(1) == sha
    assert again.publish(make_checkpoint(tmp_path / "b", seed=1)) == 2
    assert not (again.get(2) / "junk").exists()


@pytest.mark.parametrize(
    ("name", "kind", "match"),
    [
        ("../evil", tarfile.REGTYPE, "not a plain file name"),
        ("/etc/evil", tarfile.REGTYPE, "not a plain file name"),
        ("sub/config.json", tarfile.REGTYPE, "not a plain file name"),
        ("link", tarfile.SYMTYPE, "is a link"),
        ("hard", tarfile.LNKTYPE, "is a link"),
        ("dir", tarfile.DIRTYPE, "is a directory"),
        ("fifo", tarfile.FIFOTYPE, "is a special"),
    ],
)
def test_unsafe_archives_are_refused_before_writing(tmp_path, name, kind, match):
    ok = tarfile.TarInfo("config.json")
    bad = tarfile.TarInfo(name)
    bad.type = kind
    bad.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    with pytest.raises(InvalidArchiveError, match=match):
        extract_archive(
            _tar([(ok, b"{}"), (bad, b"" if kind != tarfile.REGTYPE else b"x")]), tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil").exists()


def test_malformed_archives(tmp_path, registry):
    with pytest.raises(InvalidArchiveError, match="not an uncompressed tar"):
        extract_archive(b"not a tar at all" * 40, tmp_path / "x")
    dup = _tar([(tarfile.TarInfo("a.json"), b"1"), (tarfile.TarInfo("./a.json"), b"2")])
    with pytest.raises(InvalidArchiveError, match="twice"):
        extract_archive(dup, tmp_path / "y")
    dot = tarfile.TarInfo(".")
    dot.type = tarfile.DIRTYPE
    assert extract_archive(
        _tar([(dot, b""), (tarfile.TarInfo("./a.json"), b"1")]), tmp_path / "z"
    ) == ["a.json"]
    good = build_archive(make_checkpoint(tmp_path / "a"))
    with pytest.raises(InvalidArchiveError):
        registry.publish_archive(good[:1000])
    with pytest.raises(InvalidPolicyError, match="policy archive: missing model.safetensors"):
        registry.publish_archive(_tar([(tarfile.TarInfo("config.json"), b"{}")]))
    assert registry.latest() is None
