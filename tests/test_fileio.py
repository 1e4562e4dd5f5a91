"""cached_build: built once, renamed into place complete, nothing half-built left behind."""

import pytest

from evojax_merge.fileio import cached_build


def test_cached_build_runs_once_and_leaves_no_temp(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"x")
        return {"n": len(calls)}

    root = tmp_path / "cache" / "zoo-abc"
    assert cached_build(root, build) == {"n": 1}
    assert cached_build(root, build) == {"n": 1} and len(calls) == 1  # the second call reads the cache
    assert (root / "weights.bin").read_bytes() == b"x"
    assert sorted(p.name for p in root.parent.iterdir()) == ["zoo-abc"]


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(out):
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed half-way")

    root = tmp_path / "zoo-abc"
    with pytest.raises(RuntimeError, match="half-way"):
        cached_build(root, build)
    assert list(tmp_path.iterdir()) == []
