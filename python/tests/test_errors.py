"""Bad input gets an exception of the rfaas.Error hierarchy, never a crash or a hang."""

import builtins
import gc
import json
import struct

import numpy as np
import pytest

import rfaas


@pytest.fixture(scope="module")
def executor(cluster_file, library):
    ex = rfaas.Cluster(cluster_file).allocate(
        library, ["echo", "panic", "sleep_us"], cores=1, input_capacity=1024,
        output_capacity=1024, timeout=30,
    )
    yield ex
    ex.close()


def test_hierarchy():
    for cls in [
        rfaas.ConfigError, rfaas.ClusterError, rfaas.InvalidArgumentError,
        rfaas.InputTooLargeError, rfaas.UnknownFunctionError, rfaas.InvocationError,
        rfaas.OutputTooLargeError, rfaas.FunctionFailedError, rfaas.TimeoutError,
        rfaas.ExecutorGoneError, rfaas.BusyError, rfaas.ClosedError, rfaas.SessionError,
    ]:
        assert issubclass(cls, rfaas.Error) and cls.__doc__
    assert issubclass(rfaas.InvalidArgumentError, ValueError)
    assert issubclass(rfaas.InvalidArgumentError, TypeError)
    assert issubclass(rfaas.UnknownFunctionError, KeyError)
    assert issubclass(rfaas.TimeoutError, builtins.TimeoutError)


def test_bad_cluster_files(tmp_path):
    with pytest.raises(rfaas.ConfigError):
        rfaas.Cluster(tmp_path / "does-not-exist.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(rfaas.ConfigError):
        rfaas.Cluster(bad)


def test_bad_allocation_arguments(cluster_file, library, tmp_path):
    cluster = rfaas.Cluster(cluster_file)
    with pytest.raises(rfaas.ConfigError, match="cannot read"):
        cluster.allocate(tmp_path / "missing.so", ["echo"])
    with pytest.raises(rfaas.InvalidArgumentError):
        rfaas.Cluster(42)
    with pytest.raises(rfaas.InvalidArgumentError):
        cluster.allocate(library, [])
    with pytest.raises(rfaas.InvalidArgumentError):
        cluster.allocate(library, "echo")
    with pytest.raises(rfaas.InvalidArgumentError):
        cluster.allocate(library, ["echo"], slots=0)
    with pytest.raises(rfaas.InvalidArgumentError):
        cluster.allocate(library, ["echo"], timeout=-1)
    with pytest.raises(rfaas.InvalidArgumentError):
        cluster.allocate(12345, ["echo"])
    # More cores than the cluster has: the resource manager says no.
    with pytest.raises(rfaas.ClusterError, match="capacity"):
        cluster.allocate(library, ["echo"], cores=4096)


def test_bad_invocations(executor):
    with pytest.raises(rfaas.UnknownFunctionError, match="nope"):
        executor.invoke("nope", b"")
    with pytest.raises(rfaas.UnknownFunctionError):
        executor.invoke(3, b"")
    with pytest.raises(rfaas.InvalidArgumentError):
        executor.invoke(1.5, b"")
    with pytest.raises(rfaas.InputTooLargeError):
        executor.invoke("echo", bytes(1025))
    with pytest.raises(rfaas.InvalidArgumentError):
        executor.invoke("echo", "a str is not bytes")
    with pytest.raises(rfaas.InvalidArgumentError):
        executor.invoke("echo", 42)
    with pytest.raises(rfaas.InvalidArgumentError):  # not contiguous
        executor.invoke("echo", np.arange(16, dtype=np.uint8)[::2])
    with pytest.raises(rfaas.InvalidArgumentError):  # read-only output
        executor.invoke("echo", b"abc", out=b"xyz")
    with pytest.raises(rfaas.OutputTooLargeError):
        executor.invoke("echo", bytes(100), out=bytearray(10))
    with pytest.raises(rfaas.InvalidArgumentError):
        executor.submit("echo", b"", output_size=4096)
    # The executor still works after all of that.
    assert executor.invoke("echo", b"still fine") == b"still fine"


def test_function_panic_is_an_error_and_the_executor_survives(executor):
    with pytest.raises(rfaas.FunctionFailedError):
        executor.invoke("panic", b"")
    f = executor.submit("panic", b"")
    assert isinstance(f.exception(), rfaas.FunctionFailedError)
    assert executor.invoke("echo", b"after panic") == b"after panic"


def test_timeout(cluster_file, library):
    # timeout=0.5 s at allocation; the function sleeps 3 s.
    with rfaas.Cluster(cluster_file).allocate(library, ["sleep_us"], timeout=0.5) as ex:
        with pytest.raises(rfaas.TimeoutError):
            ex.invoke("sleep_us", struct.pack("<Q", 3_000_000))


def test_dead_executor_and_closed_executor(cluster_file, library):
    ex = rfaas.Cluster(cluster_file).allocate(library, ["echo", "segfault"], timeout=30)
    assert ex.invoke("echo", b"x") == b"x"
    with pytest.raises(rfaas.ExecutorGoneError):
        ex.invoke("segfault", b"")
    ex.close()
    ex.close()  # idempotent
    assert ex.closed
    with pytest.raises(rfaas.ClosedError):
        ex.invoke("echo", b"x")
    with pytest.raises(rfaas.ClosedError):
        ex.submit("echo", b"x")
    # The cores came back: a new allocation of the same size succeeds.
    with rfaas.Cluster(cluster_file).allocate(library, ["echo"]) as again:
        assert again.invoke("echo", b"y") == b"y"


def test_busy_slots_and_dropped_futures(cluster_file, library):
    with rfaas.Cluster(cluster_file).allocate(library, ["echo"], slots=1) as ex:
        f = ex.submit("echo", b"one")
        with pytest.raises(rfaas.BusyError):
            ex.submit("echo", b"two")  # the only slot holds "one" until it is collected
        assert f.result() == b"one"
        f = ex.submit("echo", b"three")
        del f  # never collected: dropping it frees its slot
        gc.collect()
        assert ex.submit("echo", b"four").result() == b"four"
