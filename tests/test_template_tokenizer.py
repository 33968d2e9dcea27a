"""EchoCLIP-R template tokenizer: ids worked out by hand from the rules in FACTS.md.

The test vocabulary has 770 lines like the published one (its first 8 are real-looking phrases,
the rest fillers that never match), so the ids are those of the published layout:
  phrase id  = 5 + line index            -> lines 0..7 are ids 5..12
  value id   = 775 + index in VARIABLE_VOCAB:
               "n" (0..100) -> 780 + n;  "‡" -> 881;  MILD 882, MODERATE 883, SEVERE 884,
               MILD/MODERATE 885, MODERATE/SEVERE 886;  ".d" -> 887 + d;  "0d" -> 897 + d;  [UNK] -> 775
  BOS = 907, EOS = 908, pad 0, context 77.
"""
from __future__ import annotations

import pytest
import torch

from embedstore.encoders.template_tokenizer import VARIABLE_VOCAB, TemplateTokenizer, clean_text, extract_variables
from embedstore.errors import WeightsNotFound

PHRASES = [
    "LV EJECTION FRACTION IS <#>%. ",  # 5
    "LV EJECTION FRACTION IS ",  # 6: a prefix of line 0, to check longest-match
    "<#> DILATED LEFT VENTRICLE. ",  # 7
    "THE AORTIC ROOT IS <#>CM. ",  # 8
    "ESTIMATED PA SYSTOLIC PRESSURE IS <#>MMHG. ",  # 9
    "<#> MITRAL REGURGITATION. ",  # 10
    "THE LEFT ATRIUM MEASURES <#> X <#>CM. ",  # 11
    "THE STUDY IS TECHNICALLY DIFFICULT. ",  # 12
]
BOS, EOS = 907, 908


def _filler(i: int) -> str:
    """Letters only (no digits, no <#>), so a filler never matches the test reports."""
    return "FILLER " + "".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[int(d)] for d in f"{i:04d}") + " "


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> TemplateTokenizer:
    lines = PHRASES + [_filler(i) for i in range(770 - len(PHRASES))]
    path = tmp_path_factory.mktemp("vocab") / "template_vocab.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return TemplateTokenizer(path)


def ids(tok: TemplateTokenizer, text: str) -> list[int]:
    """The non-padding ids of one report, after checking the row is padded with zeros to 77."""
    row = tok([text])
    assert row.shape == (1, 77) and row.dtype == torch.long
    values = row[0].tolist()
    n = values.index(EOS) + 1
    assert values[n:] == [0] * (77 - n)
    return values[:n]


def test_layout_matches_the_published_numbers(tok):
    assert len(VARIABLE_VOCAB) == 132
    assert (tok.variable_offset, tok.bos, tok.eos) == (775, 907, 908)
    assert tok.phrase_ids[PHRASES[0]] == 5 and tok.phrase_ids[_filler(761)] == 774


def test_number_and_longest_phrase(tok):
    # "LV ejection fraction was 55%." -> upper, WAS->IS, "%." -> "%. " -> "LV EJECTION FRACTION IS 55%. "
    # values ["55"]: text "LV EJECTION FRACTION IS <#>%. "; both line 0 and line 1 start at 0,
    # the longer (line 0, id 5) wins; "55" -> 780 + 55 = 835.
    assert ids(tok, "LV ejection fraction was 55%.") == [BOS, 5, 835, EOS]


def test_decimal_20_0(tok):
    # "THE AORTIC ROOT IS 20.0CM. " (space before CM removed; the period between digits kept)
    # "20.0" -> "20" (800) ".0" (887)
    assert ids(tok, "The aortic root is 20.0 cm.") == [BOS, 8, 800, 887, EOS]


def test_decimal_2_29(tok):
    # "2.29" -> leftmost-longest: "2" (782), ".2" (889), "9" (789); ".29" is not in the value vocabulary
    assert ids(tok, "the aortic root is 2.29 cm.") == [BOS, 8, 782, 889, 789, EOS]


def test_number_123_and_pa(tok):
    # PULMONARY ARTERY -> PA; "123 MMHG" -> "123MMHG"; "123" -> "12" (792) "3" (783); "100" is the only 3-digit value
    assert ids(tok, "Estimated pulmonary artery systolic pressure is 123 mmHg.") == [BOS, 9, 792, 783, EOS]
    # "100" is one value: 880
    assert ids(tok, "Estimated pulmonary artery systolic pressure is 100 mmHg.") == [BOS, 9, 880, EOS]


def test_severities(tok):
    # MILDLY -> MILD -> value MILD (882); MODERATELY -> MODERATE (883)
    assert ids(tok, "Mildly dilated left ventricle.") == [BOS, 7, 882, EOS]
    assert ids(tok, "Moderately dilated left ventricle.") == [BOS, 7, 883, EOS]
    # MODERATE/SEVERE is one value (tried before MODERATE): 886, not MODERATE + "/" + SEVERE
    assert ids(tok, "Moderate/severe mitral regurgitation.") == [BOS, 10, 886, EOS]
    # "VERY SEVERE" is one value; its "VERY " piece is not in the value vocabulary -> [UNK] 775, then SEVERE 884
    assert ids(tok, "Very severe dilated left ventricle.") == [BOS, 7, 775, 884, EOS]


def test_two_values_in_one_phrase_use_the_separator(tok):
    # values ["4.5", "3.2"] joined "4.5‡3.2" -> 4 (784) .5 (892) ‡ (881) 3 (783) .2 (889)
    assert ids(tok, "The left atrium measures 4.5 x 3.2 cm.") == [BOS, 11, 784, 892, 881, 783, 889, EOS]


def test_unmatched_span_dropped_with_its_values(tok):
    # text "LV EJECTION FRACTION IS <#>%. HEART RATE IS <#> BPM. <#> DILATED LEFT VENTRICLE. "
    # values [55, 72, MILD]; "HEART RATE IS <#> BPM. " matches no phrase: dropped with 72
    text = "LV ejection fraction is 55%. Heart rate was 72 bpm. Mildly dilated left ventricle."
    assert ids(tok, text) == [BOS, 5, 835, 7, 882, EOS]


def test_dates_removed(tok):
    # the date goes before variables are taken, so it neither splits the phrase nor adds values
    assert ids(tok, "LV ejection fraction 01/02/2020 is 55%.") == [BOS, 5, 835, EOS]
    assert ids(tok, "LV ejection fraction 03.04.2021 is 55%.") == [BOS, 5, 835, EOS]


def test_punctuation_cleaning(tok):
    # "%." before a letter -> "%. "; "55 %" -> "55%"; brackets dropped; runs of spaces collapsed
    text = "[LV ejection fraction is 55 %.Mildly   dilated left ventricle.]"
    assert ids(tok, text) == [BOS, 5, 835, 7, 882, EOS]
    assert ids(tok, "the study was technically difficult...") == [BOS, 12, EOS]  # "..." -> "."


def test_clean_text_and_extract_variables():
    assert clean_text("mildly [dilated] LV; pulmonary artery   pressure was 30 mmHg") == (
        "MILD DILATED LV; PA PRESSURE IS 30MMHG "
    )
    assert clean_text("valves were normally thin and/or mobile") == "VALVES ARE NORMAL THIN AND MOBILE "
    assert extract_variables("MILD/MODERATE AR, 2.5CM, EF 55%") == (
        ["MILD/MODERATE", "2.5", "55"],
        "<#> AR, <#>CM, EF <#>%",
    )


def test_empty_report_and_padding(tok):
    row = tok("")
    assert row[0, :2].tolist() == [BOS, EOS] and row[0, 2:].eq(0).all()
    assert tok(["LV ejection fraction is 55%.", ""]).shape == (2, 77)


def test_truncation_keeps_eos_last(tok):
    # 40 x (5, 835) + BOS + EOS = 82 ids -> first 76 kept ([BOS] + 37 pairs + 5), then EOS
    row = tok("LV ejection fraction is 55%. " * 40)[0].tolist()
    assert row == [BOS] + [5, 835] * 37 + [5, EOS]


def test_offset_follows_the_vocabulary_size(tmp_path):
    # as the authors' tokenizer: values start after the phrases (5 + 3 = 8), BOS/EOS after the values
    path = tmp_path / "small.txt"
    path.write_text("".join(p + "\n" for p in PHRASES[:3]), encoding="utf-8")
    small = TemplateTokenizer(path)
    assert (small.variable_offset, small.bos, small.eos) == (8, 140, 141)
    assert small("LV ejection fraction is 55%.")[0, :4].tolist() == [140, 5, 8 + 5 + 55, 141]


def test_missing_vocabulary_names_the_env_var(tmp_path):
    with pytest.raises(WeightsNotFound) as err:
        TemplateTokenizer(tmp_path / "nope.txt")
    assert "EMBEDSTORE_ECHOCLIP_R_VOCAB" in str(err.value) and "\n" not in str(err.value)
