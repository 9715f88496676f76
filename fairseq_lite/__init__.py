"""fairseq_lite: the wav2vec family of fairseq (wav2vec, vq-wav2vec, wav2vec 2.0, CTC) for today's stack.

Importing the package registers every task, model, criterion, optimizer and LR scheduler.
"""

__version__ = "0.1.0"

from fairseq_lite.errors import CheckpointError, ConfigError, DataError, FairseqLiteError  # noqa: E402,F401
from fairseq_lite import criterions, models, optim, tasks  # noqa: E402,F401
from fairseq_lite.optim import lr_scheduler  # noqa: E402,F401
