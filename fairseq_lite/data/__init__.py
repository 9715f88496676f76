"""The audio data pipeline: dictionary, label and audio reading, datasets, batching and iterators."""

from fairseq_lite.data.data_utils import post_process  # noqa: F401
from fairseq_lite.data.dictionary import Dictionary  # noqa: F401
