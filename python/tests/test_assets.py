"""Assets for the function library's init function, from Python, against a real local cluster
(shm): ``Cluster.allocate(..., assets={...})`` reaches the init function of the test library
``jobs/stateful`` (``target/<profile>/libstateful.so``), which keeps them; its refusal is
``rfaas.InitFailedError`` with the library's message."""

import hashlib
import os
import struct

import pytest

import rfaas

from conftest import TARGET, missing

STATEFUL = TARGET / "libstateful.so"


@pytest.fixture(scope="module")
def stateful():
    if not STATEFUL.exists():
        missing(f"{STATEFUL} (run `cargo build --workspace --all-features`)")
    return STATEFUL


def test_assets_reach_init_once(cluster_file, stateful):
    model = os.urandom(200_000)
    cluster = rfaas.Cluster(cluster_file)
    with cluster.allocate(
        stateful,
        ["asset", "init_count"],
        input_capacity=64,
        output_capacity=256_000,
        hot_timeout_ms=0,
        assets={"model.bin": model, "labels": bytearray(b"cat\ndog\n")},
    ) as ex:
        for _ in range(20):
            (count,) = struct.unpack("<I", ex.invoke("init_count", b""))
            assert count == 1
        got = ex.invoke("asset", b"model.bin")
        assert hashlib.sha256(got).digest() == hashlib.sha256(model).digest()
        assert ex.invoke("asset", b"labels") == b"cat\ndog\n"


def test_init_failure_is_init_failed_error(cluster_file, stateful):
    cluster = rfaas.Cluster(cluster_file)
    with pytest.raises(rfaas.InitFailedError) as e:
        cluster.allocate(stateful, ["init_count"], assets={"fail": b"no model for Python"})
    assert str(e.value) == "function library init failed: asset 'fail' says: no model for Python"
    assert isinstance(e.value, rfaas.ClusterError)
    # The cluster serves the next allocation.
    with cluster.allocate(stateful, ["init_count"], hot_timeout_ms=0, assets={}) as ex:
        assert struct.unpack("<I", ex.invoke("init_count", b"")) == (1,)


@pytest.mark.parametrize(
    "assets, word",
    [
        ({"../x": b"1"}, "invalid asset name"),
        ({"ok": "not bytes"}, 'assets["ok"]'),
        ([("a", b"1")], "a dict"),
    ],
)
def test_bad_assets_are_invalid_argument(cluster_file, stateful, assets, word):
    cluster = rfaas.Cluster(cluster_file)
    with pytest.raises(rfaas.InvalidArgumentError, match=None) as e:
        cluster.allocate(stateful, ["init_count"], assets=assets)
    assert word in str(e.value)
