"""k-means models and labels of HuBERT's label pipeline (fairseq's learn_kmeans.py and dump_km_label.py).

The model is scikit-learn's ``MiniBatchKMeans`` with fairseq's settings, saved with ``joblib.dump`` as fairseq
saves it, so fairseq's dump_km_label.py reads ours and ours reads fairseq's. A joblib file is a pickle: load
only k-means models you trust (fairseq's tools do the same). Labels are scikit-learn's ``predict`` (the nearest
center in Euclidean distance; fairseq computes the same distances by hand). ``dict.km.txt`` is written from the
model itself (fairseq's README loop writes an empty one when its two shell variables differ, PR #4521).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Tuple

import numpy as np

from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.file_io import AtomicOutputs

logger = logging.getLogger(__name__)


def import_sklearn() -> Tuple[Any, Any]:
    """(sklearn.cluster, joblib), or one ConfigError saying which extra installs them."""
    try:
        import joblib
        import sklearn.cluster
    except ImportError as e:
        raise ConfigError(f"the k-means tools need scikit-learn and joblib ({e.name} is not installed): "
                          "pip install 'fairseq_lite[hubert]'") from None
    return sklearn.cluster, joblib


def minibatch_kmeans(n_clusters: int, init: str = "k-means++", max_iter: int = 100, batch_size: int = 10000,
                     tol: float = 0.0, max_no_improvement: int = 100, n_init: int = 20,
                     reassignment_ratio: float = 0.0, random_state: Any = None) -> Any:
    """fairseq's ``get_km_model``: ``MiniBatchKMeans`` with these settings, ``compute_labels=False``,
    ``init_size=None``, verbose. fairseq seeds numpy's global generator instead of passing ``random_state``;
    the same seeded RandomState given here draws the same numbers."""
    cluster, _ = import_sklearn()
    if n_clusters < 1:
        raise ConfigError(f"n_clusters must be ≥ 1, got {n_clusters}")
    return cluster.MiniBatchKMeans(
        n_clusters=n_clusters, init=init, max_iter=max_iter, batch_size=batch_size, verbose=1,
        compute_labels=False, tol=tol, max_no_improvement=max_no_improvement, init_size=None, n_init=n_init,
        reassignment_ratio=reassignment_ratio, random_state=random_state)


def fit_kmeans(model: Any, features: np.ndarray, source: str) -> float:
    """Fit ``model`` on N×D ``features`` (from ``source``, for messages); returns the mean inertia per frame
    that fairseq logs."""
    if len(features) < model.n_clusters:
        raise DataError(f"{source}: {len(features)} frames cannot make {model.n_clusters} clusters: use more data "
                        "(a larger --percent) or fewer clusters")
    model.fit(features)
    return float(-model.score(features) / len(features))


def save_kmeans(model: Any, path: str) -> None:
    """``joblib.dump`` of the model through a temporary file renamed to ``path`` (fairseq's km_path file)."""
    _, joblib = import_sklearn()
    with AtomicOutputs() as outputs:
        joblib.dump(model, outputs.open(path, "wb"))


def load_kmeans(path: str) -> Any:
    """A k-means model saved with joblib (by fairseq's learn_kmeans.py or ours); a missing file or one that holds
    no fitted k-means model is a DataError naming it."""
    _, joblib = import_sklearn()
    if not os.path.isfile(path):
        raise DataError(f"k-means model {path} does not exist: train it with learn_kmeans.py")
    try:
        model = joblib.load(path)
    except Exception as e:  # unpickling raises many types for a file of another kind
        raise DataError(f"{path}: not a joblib k-means model ({type(e).__name__}: {e})") from None
    centers = getattr(model, "cluster_centers_", None)
    if not isinstance(centers, np.ndarray) or centers.ndim != 2 or not hasattr(model, "predict"):
        raise DataError(f"{path} holds a {type(model).__name__}, not a fitted k-means model: train one with "
                        "learn_kmeans.py")
    return model


def check_feature_dim(model: Any, km_path: str, dim: int, feat_path: str) -> None:
    """The features must have the dimension the model was trained on (e.g. 39 for MFCC, 768 for HuBERT Base)."""
    trained = model.cluster_centers_.shape[1]
    if dim != trained:
        raise DataError(f"{km_path} clusters {trained}-dim features but {feat_path} holds {dim}-dim ones: use the "
                        "k-means model trained on this kind of feature (same model and layer)")


def predict_labels(model: Any, features: np.ndarray) -> np.ndarray:
    """The nearest cluster of each frame (scikit-learn's ``predict``), as int64."""
    return model.predict(np.asarray(features, dtype=model.cluster_centers_.dtype)).astype(np.int64)


def write_label_dictionary(path: str, n_clusters: int) -> None:
    """``dict.km.txt``: ``i 1`` for every cluster 0…n_clusters−1 (what fairseq's README loop is meant to write)."""
    if n_clusters < 1:
        raise DataError(f"cannot write {path}: the k-means model has {n_clusters} clusters")
    with AtomicOutputs() as outputs:
        outputs.open(path, "w", encoding="utf-8").write("".join(f"{i} 1\n" for i in range(n_clusters)))
