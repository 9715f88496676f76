"""fairseq's configuration dataclasses and the helpers that merge, parse and resolve them."""

from fairseq_lite.dataclass.configs import FairseqConfig, FairseqDataclass, field_like, help_text  # noqa: F401
from fairseq_lite.dataclass.constants import ChoiceEnum  # noqa: F401
from fairseq_lite.dataclass.utils import II, parse_list, safe_eval  # noqa: F401
