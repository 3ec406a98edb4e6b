"""rfaas.Cluster / rfaas.Executor / rfaas.Future against a real local cluster (shm)."""

import concurrent.futures
import math
import pickle  # noqa: F401  (stdlib only: expected values never come from rfaas itself)
import pydoc
import struct
import threading
import time

import numpy as np
import pytest

import rfaas
import rfaas.mpi  # does not initialise MPI by itself

# Bound on a single wait in these tests: says "did not hang", nothing about speed.
HANG_S = 60


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64, written from its definition (offset basis, prime)."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def black_scholes(s, k, r, v, t):
    """Call and put prices from the closed form with math.erf (independent of the kernel)."""
    phi = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    d1 = (math.log(s / k) + (r + 0.5 * v * v) * t) / (v * math.sqrt(t))
    d2 = d1 - v * math.sqrt(t)
    call = s * phi(d1) - k * math.exp(-r * t) * phi(d2)
    put = k * math.exp(-r * t) * phi(-d2) - s * phi(-d1)
    return call, put


@pytest.fixture(scope="module")
def executor(cluster_file, library):
    cluster = rfaas.Cluster(cluster_file)
    ex = cluster.allocate(
        library,
        ["echo", "checksum", "black_scholes", "sleep_us", "panic", "empty"],
        cores=2,
        input_capacity=8192,
        output_capacity=8192,
        slots=8,
        hot_timeout_ms=100,
    )
    yield ex
    ex.close()


def test_cluster_and_executor_describe_themselves(cluster_file, executor):
    cluster = rfaas.Cluster(str(cluster_file))
    assert cluster.provider == "shm"
    assert executor.workers == 2
    assert executor.functions == ["echo", "checksum", "black_scholes", "sleep_us", "panic", "empty"]
    assert executor.input_capacity == 8192 and executor.output_capacity == 8192
    assert not executor.closed
    assert "allocation=" in repr(executor)


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b,
        bytearray,
        memoryview,
        lambda b: memoryview(b"xx" + b + b"yy")[2:-2],
        lambda b: np.frombuffer(b, dtype=np.uint8).copy(),
        lambda b: np.frombuffer(b, dtype=np.float64).copy(),
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice", "numpy-u8", "numpy-f64"],
)
def test_invoke_echo_with_every_bytes_like(executor, make):
    payload = bytes(range(256)) * 3 + b"12345678"  # 776 bytes, a multiple of 8
    data = make(payload)
    result = executor.invoke("echo", data)
    assert type(result) is bytes
    assert result == payload


def test_invoke_by_index_and_empty_input(executor):
    assert executor.invoke(0, b"by index") == b"by index"
    assert executor.invoke("echo", b"") == b""


def test_checksum_matches_fnv1a_computed_here(executor):
    for payload in [b"", b"a", b"hello rfaas", bytes(range(256)) * 16]:
        result = executor.invoke("checksum", payload)
        assert struct.unpack("<Q", result)[0] == fnv1a64(payload)


def test_black_scholes_matches_closed_form(executor):
    rng = np.random.default_rng(7)
    n = 100
    opts = np.column_stack(
        [
            rng.uniform(50, 150, n),  # spot
            rng.uniform(50, 150, n),  # strike
            rng.uniform(0.0, 0.1, n),  # rate
            rng.uniform(0.05, 0.6, n),  # volatility
            rng.uniform(0.1, 3.0, n),  # time
        ]
    )
    prices = np.frombuffer(executor.invoke("black_scholes", opts), dtype="<f8").reshape(n, 2)
    expected = np.array([black_scholes(*row) for row in opts])
    assert np.max(np.abs(prices - expected)) < 1e-9


@pytest.mark.parametrize(
    "make_out",
    [bytearray, lambda n: np.zeros(n, dtype=np.uint8), lambda n: memoryview(bytearray(n))],
    ids=["bytearray", "numpy", "memoryview"],
)
def test_invoke_into_callers_buffer(executor, make_out):
    out = make_out(64)
    n = executor.invoke("echo", b"into your buffer", out=out)
    assert n == 16
    assert bytes(out[:n]) == b"into your buffer"
    assert bytes(out[n:]) == bytes(64 - n)


def test_submit_returns_concurrent_futures(executor):
    payloads = [f"call {i}".encode() * (i + 1) for i in range(12)]
    futures = [executor.submit("echo", p) for p in payloads]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert all(not f.cancel() for f in futures)  # running from the start
    assert [f.result() for f in futures] == payloads

    # concurrent.futures.wait and as_completed collect by themselves.
    futures = [executor.submit("checksum", p) for p in payloads]
    done, not_done = concurrent.futures.wait(futures, timeout=HANG_S)
    assert not not_done and len(done) == len(payloads)
    futures = {executor.submit("echo", p): p for p in payloads}
    seen = [f.result() for f in concurrent.futures.as_completed(futures, timeout=HANG_S)]
    assert sorted(seen) == sorted(payloads)

    # Callbacks run once the result is there.
    got = []
    event = threading.Event()
    f = executor.submit("echo", b"callback")
    f.add_done_callback(lambda fut: (got.append(fut.result()), event.set()))
    assert event.wait(HANG_S)
    assert got == [b"callback"]


def test_submit_into_out_and_result_timeout(executor):
    out = bytearray(32)
    f = executor.submit("echo", b"later", out=out)
    assert f.result() == 5 and bytes(out[:5]) == b"later"

    # A call that takes 4 s: result(timeout) gives up without losing it.
    slow = executor.submit("sleep_us", struct.pack("<Q", 4_000_000))
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.01)
    assert slow.result(timeout=HANG_S) == struct.pack("<Q", 4_000_000)
    assert slow.done() and slow.exception() is None


def test_gil_is_released_while_waiting(executor):
    # A thread invokes a function that sleeps 5 s on the executor. If invoke kept the GIL, the
    # main thread could not run until that call ended; it runs echo calls for 0.5 s instead and
    # then finds the slow call still in flight.
    started = threading.Event()
    results = []

    def slow():
        started.set()
        results.append(executor.invoke("sleep_us", struct.pack("<Q", 5_000_000)))

    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(HANG_S)
    t0 = time.monotonic()
    calls = 0
    while time.monotonic() - t0 < 0.5:
        assert executor.invoke("echo", b"meanwhile") == b"meanwhile"
        calls += 1
    assert t.is_alive(), "the slow call ended before the main thread ran: the GIL was held"
    assert calls > 0
    t.join(HANG_S)
    assert results == [struct.pack("<Q", 5_000_000)]


def test_threads_share_an_executor(executor):
    errors = []

    def work(k):
        try:
            for i in range(200):
                p = f"{k}:{i}".encode()
                assert executor.invoke("echo", p) == p
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S)
    assert errors == []


def test_help_documents_the_package():
    text = pydoc.render_doc(rfaas)
    for word in ["Cluster", "allocate", "invoke", "submit", "rfaas.mpi", "bytes-like"]:
        assert word in text, word
    assert "GIL" in pydoc.render_doc(rfaas.Executor.invoke)
    assert "ClusterError" in rfaas.errors.__doc__
    mpi_text = pydoc.render_doc(rfaas.mpi)
    for word in ["Session", "collective", "offload_async", "finish"]:
        assert word in mpi_text, word
