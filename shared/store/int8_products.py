"""Exact int8 matrix products for the embedding scan, by ONNX Runtime's ``MatMulInteger``.

The scan compares every query with every stored embedding (``shared.store.vectors``). Its
int8 values multiplied as int8 (AVX-512 VNNI or AVX2 kernels in ONNX Runtime's MLAS) cost
about a third of the CPU of the same product in float32 BLAS (docs/benchmarks.md) and are
exact: the int32 sums are the dot products themselves, no rounding to allow for.

ONNX Runtime is already here for the SSCD model and has the best int8 GEMM among our
dependencies (numpy has none). It takes a model; the one node it needs is written below as
protobuf bytes, rather than installing the ``onnx`` package (and its protobuf classes) to
make them.
"""

from __future__ import annotations

import os
import threading

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


def _model() -> bytes:
    """Y[q, s] = sum_k (A[q, k] - a_zero_point) * B[k, s], A uint8, B int8, Y int32."""
    node = (_field(1, "A") + _field(1, "B") + _field(1, "a_zero_point") + _field(2, "Y")
            + _field(4, "MatMulInteger"))
    graph = (_field(1, node) + _field(2, "int8_products")
             + _field(11, _tensor("A", _UINT8, ("queries", "dims")))
             + _field(11, _tensor("B", _INT8, ("dims", "stored")))
             + _field(11, _tensor("a_zero_point", _UINT8, ()))
             + _field(12, _tensor("Y", _INT32, ("queries", "stored"))))
    return _field(1, 7) + _field(8, _field(1, "") + _field(2, 13)) + _field(7, graph)  # IR 7, opset 13


_session = None
_session_lock = threading.Lock()
_ZERO = np.array(128, np.uint8)


def _session_of():
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = len(os.sched_getaffinity(0))  # the scan is the process's work then
            options.inter_op_num_threads = 1
            # its threads sleep between products instead of spinning (as OpenBLAS's did, burning
            # more CPU than local mode's main process: docs/benchmarks.md)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            _session = ort.InferenceSession(_model(), options, providers=["CPUExecutionProvider"])
        return _session


def products(left: np.ndarray, right: np.ndarray, room: np.ndarray | None = None) -> np.ndarray:
    """``left`` (m x d, uint8: int8 values plus 128, as the kernels take them) times ``right``
    (d x n, int8, C-contiguous): the exact int32 dot products of the int8 values (m x n). The
    product is written straight into the array returned (an output bound to it): returned by
    ``run``, it was made in ONNX Runtime's memory and copied. ``room``: a flat int32 array of
    at least m x n to write it in, which a scan reuses block after block (a fresh array's first
    writes, the kernel's page faults, cost a third of the product's CPU here)."""
    shape = (len(left), right.shape[1])
    out = np.empty(shape, np.int32) if room is None else room[: shape[0] * shape[1]].reshape(shape)
    session = _session_of()
    binding = session.io_binding()
    for name, array in (("A", left), ("B", right), ("a_zero_point", _ZERO)):
        binding.bind_cpu_input(name, array)
    binding.bind_output("Y", "cpu", 0, np.int32, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)
    return out
