"""fairseq's Python-literal config strings are parsed without eval."""

import pytest

from fairseq_lite.dataclass import parse_list, safe_eval
from fairseq_lite.errors import ConfigError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(0.9,0.98)", (0.9, 0.98)),
        ("(2, 0.5, 0.999995)", (2, 0.5, 0.999995)),
        ("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
         [(512, 10, 5), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 2, 2), (512, 2, 2)]),
        ("[(512, 2, 1)] * 2", [(512, 2, 1), (512, 2, 1)]),
        ("[0.1, -10]", [0.1, -10]),
        ("'abc'", "abc"),
    ],
)
def test_literals(text, expected):
    assert safe_eval(text) == expected


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "open('/etc/passwd')", "[1] * [2]", "x + 1",
                                  "(lambda: 1)()", "[1][0]"])
def test_code_is_refused(text):
    with pytest.raises(ConfigError, match="cannot parse"):
        safe_eval(text)


@pytest.mark.parametrize("text, expected", [("[0.1, 10]", [0.1, 10.0]), ("0.1,10", [0.1, 10.0]), ("5", [5.0]),
                                            ([1, 2], [1.0, 2.0]), (3, [3.0])])
def test_parse_list(text, expected):
    assert parse_list(text, float) == expected


@pytest.mark.parametrize("text, expected", [("ltr", ["ltr"]), ("km,ltr", ["km", "ltr"]), ("[km]", ["km"]),
                                            ("['km', 'ltr']", ["km", "ltr"]), ("", [])])
def test_a_list_of_strings_takes_bare_words_as_fairseq_flags_did(text, expected):
    """``--labels ltr`` (fairseq's HuBERT decoding command) and Hydra's ``[km]`` spelling."""
    assert parse_list(text, str) == expected


def test_a_list_of_numbers_still_refuses_words():
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_list("ten", float)
