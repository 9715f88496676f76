"""String-valued choice enums, as fairseq's ``ChoiceEnum`` (``fairseq/dataclass/constants.py``)."""

from enum import Enum
from typing import Iterable


class StrEnum(str, Enum):
    """An enum whose members compare equal to (and serialise as) their string values."""

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    def __reduce_ex__(self, protocol):
        """Pickle (and deepcopy) as the plain string: the enum types are made at run time and not importable."""
        return str, (self.value,)


def ChoiceEnum(choices: Iterable[str]) -> type:
    """Return a StrEnum type with one member per choice (fairseq's helper of the same name)."""
    return StrEnum("Choices", {choice: choice for choice in choices})


LOG_FORMAT_CHOICES = ChoiceEnum(["json", "none", "simple", "tqdm"])
DDP_BACKEND_CHOICES = ChoiceEnum(
    ["c10d", "fully_sharded", "legacy_ddp", "no_c10d", "pytorch_ddp", "slowmo"]
)
DATASET_IMPL_CHOICES = ChoiceEnum(["raw", "lazy", "cached", "mmap", "fasta", "huffman"])
ZERO_SHARDING_CHOICES = ChoiceEnum(["none", "os"])
