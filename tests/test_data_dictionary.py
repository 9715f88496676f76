"""Dictionary in fairseq's dict.*.txt format, and post_process."""

import io
import pickle

import pytest
import torch

from fairseq_lite.data import Dictionary, post_process
from fairseq_lite.errors import ConfigError, DataError

# The released dict.ltr.txt symbol order (reference §4.5).
LTR_ORDER = "| E T A O N I H S R D L U M W C F G Y P B V K ' X J Q Z".split()


def write_ltr_dict(path):
    counts = range(94802, 94802 - len(LTR_ORDER), -1)
    path.write_text("".join(f"{s} {c}\n" for s, c in zip(LTR_ORDER, counts)), encoding="utf-8")
    return path


def test_released_ltr_dict_indices(tmp_path):
    d = Dictionary.load(write_ltr_dict(tmp_path / "dict.ltr.txt"))
    assert len(d) == 32 and d.nspecial == 4
    assert [d.bos(), d.pad(), d.eos(), d.unk()] == [0, 1, 2, 3]
    assert d.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert d.index("|") == 4 and d.index("E") == 5 and d.index("Z") == 31
    assert d.count[4] == 94802
    assert d.index("é") == d.unk() and "é" not in d and "Q" in d
    assert d[999] == "<unk>"


def test_encode_string_roundtrip_and_post_process(tmp_path):
    d = Dictionary.load(write_ltr_dict(tmp_path / "dict.ltr.txt"))
    ids = d.encode_line("H E L L O | W O R L D |")
    assert ids.dtype == torch.int32 and ids.tolist()[:2] == [d.index("H"), d.index("E")]
    assert d.string(ids) == "H E L L O | W O R L D |"
    assert d.string(ids, bpe_symbol="letter") == "HELLO WORLD"
    # bos (the CTC blank) and eos are skipped; eos kept on request; 2-D gives lines
    with_specials = torch.cat([torch.tensor([0]), ids, torch.tensor([2])])
    assert d.string(with_specials) == "H E L L O | W O R L D |"
    assert d.string(with_specials, include_eos=True).endswith("| </s>")
    assert d.string(torch.stack([ids[:2], ids[:2]])) == "H E\nH E"
    unk = d.encode_line("A é", append_eos=True)
    assert unk.tolist() == [d.index("A"), 3, 2]
    assert d.string(unk) == "A <unk>" and d.string(unk, escape_unk=True) == "A <<unk>>"
    grown = d.encode_line("A é", add_if_not_exist=True)
    assert grown.tolist() == [d.index("A"), 32] and len(d) == 33


def test_file_format_last_space_overwrite_and_save(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("a b 5\nx 3\nx 7 #fairseq:overwrite\n\n", encoding="utf-8")
    d = Dictionary.load(path)
    assert d.index("a b") == 4 and d.count[4] == 5
    assert d.index("x") == 6 and len(d) == 7  # overwrite appends a new entry, as fairseq does
    out = tmp_path / "out" / "dict.txt"
    d.save(out)
    assert out.read_text(encoding="utf-8") == "a b 5\nx 3\nx 7\n"
    buf = io.StringIO("| 10\nA 4\n")
    assert Dictionary.load(buf).symbols[4:] == ["|", "A"]


@pytest.mark.parametrize(
    "text, message",
    [("| 1\n| 2\n", "dict.txt:2: duplicate symbol '|'"), ("A\n", "dict.txt:1: expected"), ("A x\n", "expected")],
)
def test_bad_dictionary_files(tmp_path, text, message):
    path = tmp_path / "dict.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        Dictionary.load(path)


def test_missing_dictionary_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Dictionary.load(tmp_path / "dict.ltr.txt")


def test_pickles_with_plain_attributes_only(tmp_path):
    d = Dictionary.load(write_ltr_dict(tmp_path / "dict.ltr.txt"))
    allowed = (list, dict, str, int)
    assert all(isinstance(v, allowed) for v in vars(d).values())
    assert pickle.loads(pickle.dumps(d)) == d
    path = tmp_path / "state.pt"
    torch.save({"task_state": {"target_dictionary": d}}, path)
    with torch.serialization.safe_globals([Dictionary]):
        loaded = torch.load(path, weights_only=True)["task_state"]["target_dictionary"]
    assert loaded == d and loaded.index("Z") == 31


@pytest.mark.parametrize(
    "symbol, text, expected",
    [
        ("letter", "H I | T H E R E |", "HI THERE"),
        ("sentencepiece", "\u2581hi \u2581the re", "hi there"),
        ("wordpiece", "_hi _the re", "hi there"),
        ("_EOW", "hi_EOW the re_EOW", "hi there"),
        ("subword_nmt", "hi the@@ re", "hi there"),
        ("@@", "hi the@@re", "hi there"),
        ("silence", "<SIL> hi  <SIL> there", "hi there"),
        ("none", "H I |", "H I |"),
        (None, "H I |", "H I |"),
    ],
)
def test_post_process(symbol, text, expected):
    assert post_process(text, symbol) == expected


def test_post_process_unknown():
    with pytest.raises(ConfigError, match="unknown post_process 'lettre'"):
        post_process("a", "lettre")


def test_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("A 5\n")
    d = Dictionary()
    d.add_symbol("B")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fairseq_lite.data.dictionary.zip", disk_full, raising=False)  # fails mid-write
    with pytest.raises(OSError):
        d.save(str(path))
    assert path.read_text() == "A 5\n" and [p.name for p in tmp_path.iterdir()] == ["dict.ltr.txt"]
    monkeypatch.undo()
    d.save(str(path))
    assert path.read_text() == "B 1\n"
