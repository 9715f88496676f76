"""A ``pickle_module`` for ``torch.save`` / ``torch.load`` that spells fairseq_lite's Dictionary as fairseq's.

Fine-tuned checkpoints keep the target dictionary in ``task_state``. Pickled under its own class name it would
need fairseq_lite to unpickle, so fairseq could not read our files; written as
``fairseq.data.dictionary.Dictionary`` (the attribute names are fairseq's) fairseq reads it as its own, and
fairseq_lite maps the name back onto its class: through the ``weights_only`` allow-list, or through
:class:`Unpickler` for a trusted full unpickle.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO

from fairseq_lite.data.dictionary import Dictionary

#: The global fairseq pickles its Dictionary under.
FAIRSEQ_DICTIONARY = "fairseq.data.dictionary.Dictionary"


class Pickler(pickle._Pickler):
    """The pure-Python pickler with one change: the Dictionary class is written as fairseq's global."""

    def save_global(self, obj: Any, name: Any = None) -> None:
        if obj is not Dictionary:
            super().save_global(obj, name)
            return
        module, qualname = FAIRSEQ_DICTIONARY.rsplit(".", 1)
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
        self.memoize(obj)


class Unpickler(pickle.Unpickler):
    """Unpickles fairseq's Dictionary global as fairseq_lite's Dictionary (fairseq need not be installed)."""

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" == FAIRSEQ_DICTIONARY:
            return Dictionary
        return super().find_class(module, name)


def load(file: BinaryIO, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()
