"""Symbol ↔ index table in fairseq's ``dict.*.txt`` format (fairseq's ``fairseq.data.Dictionary``).

A Dictionary starts with the four specials ``<s>`` (0, also the CTC blank), ``<pad>`` (1), ``</s>`` (2)
and ``<unk>`` (3); the file then lists one ``<symbol> <count>`` per line, split on the **last** space
so that a symbol may contain spaces, optionally followed by the flag ``#fairseq:overwrite``.

The object holds only plain lists, dicts, strings and ints, under fairseq's attribute names, so that
checkpoints can store it in ``task_state`` and load it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from typing import IO, Callable, Iterable, List, Optional, Union

import torch

from fairseq_lite.data.data_utils import post_process
from fairseq_lite.errors import DataError

OVERWRITE_FLAG = "#fairseq:overwrite"


def tokenize_line(line: str) -> List[str]:
    """Whitespace tokenisation used for label lines (fairseq's ``tokenize_line``)."""
    return line.split()


class Dictionary:
    """fairseq's Dictionary: specials first, then symbols in file order."""

    def __init__(
        self,
        *,
        bos: str = "<s>",
        pad: str = "<pad>",
        eos: str = "</s>",
        unk: str = "<unk>",
        extra_special_symbols: Optional[Iterable[str]] = None,
        add_special_symbols: bool = True,
    ):
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = bos, unk, pad, eos
        self.symbols: List[str] = []
        self.count: List[int] = []
        self.indices: dict = {}
        if add_special_symbols:
            self.bos_index = self.add_symbol(bos)
            self.pad_index = self.add_symbol(pad)
            self.eos_index = self.add_symbol(eos)
            self.unk_index = self.add_symbol(unk)
            for symbol in extra_special_symbols or ():
                self.add_symbol(symbol)
        self.nspecial = len(self.symbols)

    # -- lookup -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dictionary) and self.indices == other.indices and self.symbols == other.symbols

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.indices

    def __getitem__(self, idx: int) -> str:
        return self.symbols[idx] if 0 <= idx < len(self.symbols) else self.unk_word

    def index(self, symbol: str) -> int:
        """The index of ``symbol``, or ``unk()`` when it is not in the dictionary."""
        return self.indices.get(symbol, self.unk_index)

    def bos(self) -> int:
        return self.bos_index

    def pad(self) -> int:
        return self.pad_index

    def eos(self) -> int:
        return self.eos_index

    def unk(self) -> int:
        return self.unk_index

    def unk_string(self, escape: bool = False) -> str:
        """``<unk>``, or ``<<unk>>`` when escaped so that it cannot be mistaken for the real token."""
        return f"<{self.unk_word}>" if escape else self.unk_word

    # -- building -----------------------------------------------------------------------------

    def add_symbol(self, word: str, n: int = 1, overwrite: bool = False) -> int:
        """Add ``word`` (or add ``n`` to its count) and return its index.

        With ``overwrite`` an existing word gets a new index, as fairseq's ``#fairseq:overwrite`` does.
        """
        if word in self.indices and not overwrite:
            idx = self.indices[word]
            self.count[idx] += n
            return idx
        idx = len(self.symbols)
        self.indices[word] = idx
        self.symbols.append(word)
        self.count.append(n)
        return idx

    @classmethod
    def load(cls, f: Union[str, os.PathLike, IO[str]], add_special_symbols: bool = True) -> "Dictionary":
        """Read a ``dict.*.txt`` file (a path or an open text file)."""
        d = cls(add_special_symbols=add_special_symbols)
        d.add_from_file(f)
        return d

    def add_from_file(self, f: Union[str, os.PathLike, IO[str]]) -> None:
        """Append the ``<symbol> <count> [#fairseq:overwrite]`` lines of ``f``."""
        if isinstance(f, (str, os.PathLike)):
            try:
                with open(f, encoding="utf-8") as fd:
                    self._add_lines(fd, str(f))
            except FileNotFoundError:
                raise DataError(f"dictionary file {f} does not exist: create it (scripts/make_labels.py writes one)")
            except UnicodeDecodeError as e:
                raise DataError(f"dictionary file {f} is not UTF-8 text ({e.reason} at byte {e.start})")
            return
        self._add_lines(f, getattr(f, "name", "<stream>"))

    def _add_lines(self, lines: Iterable[str], where: str) -> None:
        for lineno, raw in enumerate(lines, start=1):
            line = raw.rstrip("\r\n").rstrip()
            if not line:
                continue
            word, sep, field = line.rpartition(" ")
            overwrite = field == OVERWRITE_FLAG
            if overwrite:
                word, sep, field = word.rpartition(" ")
            if not sep or not word or not field.lstrip("-").isdigit():
                raise DataError(
                    f"{where}:{lineno}: expected '<symbol> <count> [{OVERWRITE_FLAG}]', got {line!r}"
                )
            if word in self.indices and not overwrite:
                raise DataError(
                    f"{where}:{lineno}: duplicate symbol {word!r}; remove the line or add "
                    f"'{OVERWRITE_FLAG}' at its end to replace the earlier entry"
                )
            self.add_symbol(word, n=int(field), overwrite=overwrite)

    def save(self, f: Union[str, os.PathLike, IO[str]]) -> None:
        """Write the non-special symbols as ``<symbol> <count>`` lines (fairseq's format)."""
        if isinstance(f, (str, os.PathLike)):  # through a temporary file: a failed write keeps the old one
            from fairseq_lite.file_io import AtomicOutputs

            with AtomicOutputs() as outputs:
                self.save(outputs.open(os.fspath(f), "w", encoding="utf-8"))
            return
        for symbol, count in zip(self.symbols[self.nspecial:], self.count[self.nspecial:]):
            f.write(f"{symbol} {count}\n")

    # -- encoding and decoding ----------------------------------------------------------------

    def encode_line(
        self,
        line: str,
        line_tokenizer: Callable[[str], List[str]] = tokenize_line,
        add_if_not_exist: bool = False,
        append_eos: bool = False,
        reverse_order: bool = False,
    ) -> torch.IntTensor:
        """Token ids of a label line; unknown symbols become ``unk()`` unless ``add_if_not_exist``.

        Defaults are those labels need (no eos, no growth); fairseq's own defaults are True for both,
        so pass them explicitly when porting code that relied on that.
        """
        words = line_tokenizer(line)
        if reverse_order:
            words = list(reversed(words))
        if add_if_not_exist:
            ids = [self.add_symbol(w) for w in words]
        else:
            ids = [self.indices.get(w, self.unk_index) for w in words]
        if append_eos:
            ids.append(self.eos_index)
        return torch.tensor(ids, dtype=torch.int32)

    def string(
        self,
        tensor,
        bpe_symbol: Optional[str] = None,
        escape_unk: bool = False,
        extra_symbols_to_ignore: Optional[Iterable[int]] = None,
        unk_string: Optional[str] = None,
        include_eos: bool = False,
        separator: str = " ",
    ) -> str:
        """Symbols of ``tensor`` joined by ``separator``, then ``post_process(…, bpe_symbol)``.

        bos (the CTC blank) is always skipped and eos unless ``include_eos``; a 2-D input gives one
        line per row.
        """
        ids = tensor.tolist() if hasattr(tensor, "tolist") else list(tensor)
        if ids and isinstance(ids[0], list):
            return "\n".join(
                self.string(row, bpe_symbol, escape_unk, extra_symbols_to_ignore, unk_string, include_eos, separator)
                for row in ids
            )
        ignore = set(extra_symbols_to_ignore or ())
        ignore.add(self.bos_index)
        if not include_eos:
            ignore.add(self.eos_index)
        unk = unk_string if unk_string is not None else self.unk_string(escape_unk)
        words = (unk if i == self.unk_index else self[i] for i in ids if i not in ignore)
        return post_process(separator.join(words), bpe_symbol)
