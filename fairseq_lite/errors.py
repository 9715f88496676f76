"""The one error family fairseq_lite raises for problems a user can fix.

Command-line tools print ``error: <message>`` on one line for these and exit with
``exit_code``: 2 for configuration mistakes, 1 for problems found while running.
"""


class FairseqLiteError(Exception):
    """Base class: a message that says what is wrong and what to do about it."""

    exit_code = 1


class ConfigError(FairseqLiteError):
    """A bad configuration: unknown key, wrong type, missing mandatory value, bad override."""

    exit_code = 2


class DataError(FairseqLiteError):
    """Bad input data: a missing or corrupt audio file, a label file that does not match its manifest."""


class CheckpointError(FairseqLiteError):
    """A checkpoint that cannot be used here: wrong kind, unsafe pickle, incompatible shapes."""
