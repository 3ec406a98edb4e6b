"""The same client over the tcp provider (its own local cluster)."""

import struct

import numpy as np
import pytest

import rfaas
from conftest import local_cluster
from test_client import fnv1a64


@pytest.fixture(scope="module")
def tcp_cluster_file():
    yield from (c for _, c in local_cluster("tcp"))


def test_invoke_and_submit_over_tcp(tcp_cluster_file, library):
    cluster = rfaas.Cluster(tcp_cluster_file)
    assert cluster.provider == "tcp"
    with cluster.allocate(library, ["echo", "checksum"], cores=1) as ex:
        data = np.arange(512, dtype=np.uint16)
        assert ex.invoke("echo", data) == data.tobytes()
        futures = [ex.submit("checksum", bytes([i]) * i) for i in range(1, 4)]
        assert [struct.unpack("<Q", f.result())[0] for f in futures] == [
            fnv1a64(bytes([i]) * i) for i in range(1, 4)
        ]
