"""EchoCLIP-R-compatible template tokenizer: a report becomes phrase ids, each followed by its values.

The authors' phrase vocabulary is under a licence that forbids redistribution, so it is never
shipped: the user points at their copy (one phrase a line, each ending with one space, values
written `<#>`). Behaviour, as EchoCLIP-R was trained with it:

1. clean: upper-case, drop `^`, `CRLF`, `‡`, square brackets; a period not between two digits
   becomes ". "; WAS->IS, WERE->ARE, AND/OR->AND, NORMALLY->NORMAL, MILDLY->MILD,
   MODERATELY->MODERATE, SEVERELY->SEVERE, PULMONARY ARTERY->PA; dates (dd/dd/dddd, dd.dd.dddd)
   and ICD codes (letter + digits.digits) removed; no space before MMHG/MM/CM/%; " + " -> "+";
   whitespace collapsed; one trailing space; runs of periods -> one; then the authors' period
   insertion: each of PERIOD_PHRASES (a `<#>` there is a number) gets a "." when none follows,
   and runs of periods collapse again (without it "LV EJECTION FRACTION IS 55%" loses its finding).
2. variables: numbers `\\d+\\.?\\d*` and severity words not preceded by a letter (MODERATE/SEVERE,
   MILD/MODERATE, MILD, MODERATE, SEVERE, VERY SEVERE) are replaced by `<#>`, values kept in order.
   Then the authors' two REWRITES (plain substring replacement on the text with `<#>`).
3. phrases: exact substrings, leftmost-longest; every unmatched span is one unknown token, dropped
   together with the values inside it.
4. ids: [BOS, phrase, its values..., phrase, ..., EOS], padded with 0 or cut to 77 with EOS last.

Id layout (the authors built both vocabularies on a WordPiece tokenizer whose ids 0-4 are
[UNK] [CLS] [SEP] [PAD] [MASK]):
- phrase id = 5 + index of the phrase among the file's distinct non-empty lines (5..774 for the
  published 770 phrases);
- value id = offset + index in VARIABLE_VOCAB, offset = 5 + number of phrases (775 published):
  0 [UNK] (an unmatched piece of a value, e.g. "VERY "), 1-4 never emitted, 5-105 "0".."100"
  (780..880), 106 the separator "‡" between the values of one phrase (881), 107-111 MILD,
  MODERATE, SEVERE, MILD/MODERATE, MODERATE/SEVERE (882..886), 112-121 ".0"..".9" (887..896),
  122-131 "00".."09" (897..906); a value is split leftmost-longest over these ("20.0" -> 20 .0,
  "2.29" -> 2 .2 9, "123" -> 12 3);
- BOS = offset + 132 (907), EOS = BOS + 1 (908): EOS is the largest id, where open_clip pools.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

from embedstore.errors import BadInput, WeightsNotFound

N_SPECIAL = 5  # [UNK] [CLS] [SEP] [PAD] [MASK]
SEPARATOR = "‡"
SEVERITIES = ("MILD", "MODERATE", "SEVERE", "MILD/MODERATE", "MODERATE/SEVERE")
VARIABLE_VOCAB: tuple[str, ...] = (
    "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]",
    *(str(i) for i in range(101)),
    SEPARATOR,
    *SEVERITIES,
    *(f".{i}" for i in range(10)),
    *(f"0{i}" for i in range(10)),
)
PLACEHOLDER = "<#>"
CONTEXT_LENGTH = 77

_REMOVE = re.compile(r"\^|CRLF|‡")
_BRACKETS = re.compile(r"[\[\]]")
_LONE_PERIOD = re.compile(r"(?<=\D)\.|\.(?=\D)")
_WORDS = (
    (re.compile(r"\bWAS\b"), "IS"),
    (re.compile(r"\bWERE\b"), "ARE"),
    (re.compile(r"\bAND/OR\b"), "AND"),
    (re.compile("NORMALLY"), "NORMAL"),
    (re.compile("MILDLY"), "MILD"),
    (re.compile("MODERATELY"), "MODERATE"),
    (re.compile("SEVERELY"), "SEVERE"),
    (re.compile("PULMONARY ARTERY"), "PA"),
    (re.compile(r"\d{2}/\d{2}/\d{4}"), ""),
    (re.compile(r"\d{2}\.\d{2}\.\d{4}"), ""),
    (re.compile(r"[A-Z]\d+\.\d*\b"), ""),
    (re.compile(r"\s+(MMHG|MM|CM|%)"), r"\1"),
    (re.compile(r"\s\."), "."),
    (re.compile(r"\s+"), " "),
    (re.compile(r"\s\+\s"), "+"),
    (re.compile(r"\+CVPMMHG"), "MMHG"),
)
_PERIODS = re.compile(r"\.+")
NUMBER = r"\d+\.?\d*"
# The authors' phrases that get a period when none follows (FACTS.md, tokenizer); <#> stands for a number.
PERIOD_PHRASES = (
    "THE PEAK TRANSAORTIC GRADIENT IS <#>MMHG", "THE MEAN TRANSAORTIC GRADIENT IS <#>MMHG",
    "LV EJECTION FRACTION IS <#>%", "ESTIMATED PA PRESSURE IS <#>MMHG", "RESTING SEGMENTAL WALL MOTION ANALYSIS",
    "THE IVC DIAMETER IS <#>MM", "EST RV/RA PRESSURE GRADIENT IS <#>MMHG", "ESTIMATED PEAK RVSP IS <#>MMHG",
    "HEART FAILURE, UNSPECIFIED", "CHEST PAIN, UNSPECIFIED", "SINUS OF VALSALVA: <#>CM",
    "THE PEAK TRANSMITRAL GRADIENT IS <#>MMHG", "THE MEAN TRANSMITRAL GRADIENT IS <#>MMHG", "ASCENDING AORTA <#>CM",
    "ESTIMATED PA SYSTOLIC PRESSURE IS <#>MMHG", "ICD_CODE SHORTNESS BREATH", "ICD_CODE ABNORMAL ELECTROCARDIOGRAM ECG EKG",
    "SHORTNESS BREATH", "ABNORMAL ELECTROCARDIOGRAM ECG EKG",
    "THE LEFT ATRIAL APPENDAGE IS NORMAL IN APPEARANCE WITH NO EVIDENCE OF THROMBUS",
)
_PERIOD_AFTER = [re.compile("(" + NUMBER.join(map(re.escape, p.split("<#>"))) + r")(?!\.)") for p in PERIOD_PHRASES]
# The authors' rewrites after the values became <#>.
REWRITES = (
    ("THE INFERIOR VENA CAVA IS NORMAL IN SIZE AND SHOWS A NORMAL RESPIRATORY COLLAPSE, CONSISTENT WITH NORMAL RIGHT"
     " ATRIAL PRESSURE (<#>MMHG).", "THE INFERIOR VENA CAVA SHOWS A NORMAL RESPIRATORY COLLAPSE CONSISTENT WITH NORMAL"
     " RIGHT ATRIAL PRESSURE (<#>MMHG)."),
    ("RESTING SEGMENTAL WALL MOTION ANALYSIS.:", "RESTING SEGMENTAL WALL MOTION ANALYSIS."),
)
_VARIABLE = re.compile(
    r"(\d+\.?\d*)|((?<![A-Za-z])(?:MODERATE/SEVERE|MILD/MODERATE|MILD|MODERATE|SEVERE|VERY SEVERE))"
)


def clean_text(text: str) -> str:
    """Normalise a report the way the template vocabulary was written (step 1 above)."""
    text = _REMOVE.sub("", text.upper().strip().replace("`", "'"))
    text = _BRACKETS.sub("", _LONE_PERIOD.sub(". ", text))
    for pattern, replacement in _WORDS:
        text = pattern.sub(replacement, text)
    text = _PERIODS.sub(".", text.strip() + " ")
    for pattern in _PERIOD_AFTER:
        text = pattern.sub(r"\1.", text)
    return _PERIODS.sub(".", text)


def rewrite(text: str) -> str:
    """The authors' two rewrites of a cleaned text whose values are already <#>."""
    for old, new in REWRITES:
        text = text.replace(old, new)
    return text


def extract_variables(text: str) -> tuple[list[str], str]:
    """(values in order, text with each value replaced by <#>)."""
    values = [m.group(0) for m in _VARIABLE.finditer(text)]
    return values, _VARIABLE.sub(PLACEHOLDER, text)


def _longest_first(strings: Iterable[str]) -> re.Pattern:
    """A regex that matches leftmost-longest over literal strings (longer alternatives are tried first)."""
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))


class TemplateTokenizer:
    """Reports -> LongTensor [N, 77] for EchoCLIP-R's text tower."""

    def __init__(self, vocab: str | Path, context_length: int = CONTEXT_LENGTH):
        path = Path(vocab).expanduser()
        if not path.is_file():
            raise WeightsNotFound(
                f"EchoCLIP-R template vocabulary {path} not found; get template_vocab.txt from the EchoCLIP"
                " authors (echonet/echo_CLIP, academic licence) and point EMBEDSTORE_ECHOCLIP_R_VOCAB at it"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        phrases = list(dict.fromkeys(line for line in lines if line))
        if not phrases:
            raise BadInput(f"{path}: template vocabulary is empty; expected one phrase a line")
        self.path = path
        self.context_length = context_length
        self.phrase_ids = {p: N_SPECIAL + i for i, p in enumerate(phrases)}
        self.variable_offset = N_SPECIAL + len(phrases)
        self.bos = self.variable_offset + len(VARIABLE_VOCAB)
        self.eos = self.bos + 1
        self._phrases = _longest_first(phrases)
        self._values = _longest_first(VARIABLE_VOCAB[N_SPECIAL:])
        self._value_index = {v: i for i, v in enumerate(VARIABLE_VOCAB)}

    def encode(self, text: str) -> list[int]:
        """[BOS, ids..., EOS] for one report, neither padded nor cut."""
        values, text = extract_variables(clean_text(text))
        text = rewrite(text)
        ids, pos, taken = [self.bos], 0, 0
        for match in self._phrases.finditer(text):
            taken += text.count(PLACEHOLDER, pos, match.start())  # values of the unknown span: dropped
            phrase = match.group(0)
            n = phrase.count(PLACEHOLDER)
            ids.append(self.phrase_ids[phrase])
            ids.extend(self._value_ids(values[taken : taken + n]))
            taken, pos = taken + n, match.end()
        return ids + [self.eos]

    def _value_ids(self, values: Sequence[str]) -> list[int]:
        """Values of one phrase joined by the separator, split leftmost-longest; an unmatched piece -> [UNK]."""
        joined, pos, index = SEPARATOR.join(values), 0, []
        for match in self._values.finditer(joined):
            if match.start() > pos:
                index.append(0)
            index.append(self._value_index[match.group(0)])
            pos = match.end()
        if pos < len(joined):
            index.append(0)
        return [self.variable_offset + i for i in index]

    def __call__(self, texts: str | Sequence[str]):
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > self.context_length:
                ids = ids[: self.context_length - 1] + [self.eos]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
