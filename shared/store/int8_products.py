"""Exact int8 matrix products for the embedding scan, by ONNX Runtime's ``MatMulInteger``.

The scan compares every query with every stored embedding (``shared.store.vectors``). Its
int8 values multiplied as int8 (AMX, AVX-512 VNNI or AVX2 kernels in ONNX Runtime's MLAS) cost
about a third of the CPU of the same product in float32 BLAS (docs/benchmarks.md) and are
exact: the int32 sums are the dot products themselves, no rounding to allow for.

ONNX Runtime is already here for the SSCD model and has the best int8 GEMM among our
dependencies (numpy has none). It takes a model; the one node it needs is written below as
protobuf bytes, rather than installing the ``onnx`` package (and its protobuf classes) to
make them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

_UINT8, _INT8, _INT32 = 2, 3, 6  # ONNX TensorProto element types


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: an integer (varint) or a string, bytes or nested message."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, elem_type: int, dims: tuple[int | str, ...]) -> bytes:
    """A ValueInfoProto: name, TypeProto.tensor_type (elem_type, shape of named or fixed dims)."""
    shape = b"".join(_field(1, _field(2, d) if isinstance(d, str) else _field(1, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, elem_type) + _field(2, shape)))


def _model(right: np.ndarray | None = None) -> bytes:
    """Y[q, s] = sum_k (A[q, k] - a_zero_point) * B[k, s], A uint8, B int8, Y int32. With
    ``right``, B is that array, held by the model (an initializer) rather than given each run."""
    node = (_field(1, "A") + _field(1, "B") + _field(1, "a_zero_point") + _field(2, "Y")
            + _field(4, "MatMulInteger"))
    if right is None:
        b = _field(11, _tensor("B", _INT8, ("dims", "stored")))
    else:  # a TensorProto: dims, data_type, name, raw_data
        b = _field(5, b"".join(_field(1, n) for n in right.shape) + _field(2, _INT8) + _field(8, "B")
                   + _field(9, right.tobytes()))
    graph = (_field(1, node) + _field(2, "int8_products") + b
             + _field(11, _tensor("A", _UINT8, ("queries", "dims")))
             + _field(11, _tensor("a_zero_point", _UINT8, ()))
             + _field(12, _tensor("Y", _INT32, ("queries", "stored"))))
    return _field(1, 7) + _field(8, _field(1, "") + _field(2, 13)) + _field(7, graph)  # IR 7, opset 13


_session = None
_session_lock = threading.Lock()
_ZERO = np.array(128, np.uint8)


def _new_session(right: np.ndarray | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # a product runs on the thread that asks for it: the scan shares its stored blocks out to
    # one thread per core (``EmbeddingIndex._scan``), each product on one core, no pool
    # threads handing a product's halves over (or spinning between products, as OpenBLAS's
    # did: docs/benchmarks.md)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(_model(right), options, providers=["CPUExecutionProvider"])


def _session_of():
    global _session
    with _session_lock:
        if _session is None:
            _session = _new_session()
        return _session


def _run(session, feeds: dict[str, np.ndarray], rows: int, columns: int, room: np.ndarray | None) -> np.ndarray:
    """The product written straight into the array returned (an output bound to it): returned
    by ``run``, it was made in ONNX Runtime's memory and copied. ``room``: a flat int32 array of
    at least rows x columns to write it in, which a scan reuses block after block (a fresh
    array's first writes, the kernel's page faults, cost a third of the product's CPU here)."""
    out = np.empty((rows, columns), np.int32) if room is None else room[: rows * columns].reshape(rows, columns)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    binding.bind_output("Y", "cpu", 0, np.int32, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)
    return out


def products(left: np.ndarray, right: np.ndarray, room: np.ndarray | None = None) -> np.ndarray:
    """``left`` (m x d, uint8: int8 values plus 128, as the kernels take them) times ``right``
    (d x n, int8, C-contiguous): the exact int32 dot products of the int8 values (m x n), in
    ``room`` if given (see ``_run``)."""
    return _run(_session_of(), {"A": left, "B": right, "a_zero_point": _ZERO}, len(left), right.shape[1], room)


def products_with(right: np.ndarray) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """``products(left, right, room)`` for many ``left`` and this one ``right``: the kernels
    rearrange (pack) their right side for every product, which a session made for it does once
    (2,048 queries by 1,024 stored rows: 15 % less CPU a product; making it costs ~10 ms, the
    price of about five such products)."""
    session = _new_session(np.ascontiguousarray(right))
    columns = right.shape[1]
    return lambda left, room=None: _run(session, {"A": left, "a_zero_point": _ZERO}, len(left), columns, room)
