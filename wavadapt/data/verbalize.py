"""Digits and symbols as the words a speaker says for them, per language, before a transcript becomes letters.

Numbers are spelt by num2words (cardinals; English ordinals such as ``3rd``; decimals with the language's
decimal mark). Numbers of more than six digits, or with a leading zero, are read digit by digit, as phone
numbers and codes are spoken; numbers grouped by thousands (``1,000,000``) are cardinals. A few symbols
have words (``&``, ``%``, ``+``, ``@``; ``$ € £`` before or after a number are said after it). For a language
num2words does not know, digits stay, and normalisation drops and reports them.
"""

import re
from decimal import Decimal

from num2words import CONVERTER_CLASSES, num2words

# Words for symbols per language; a language without an entry keeps the symbol (reported when dropped).
SYMBOL_WORDS: dict[str, dict[str, str]] = {
    "&": {"en": "and", "nl": "en", "de": "und", "es": "y", "it": "e", "fr": "et", "cs": "a", "pt": "e", "pl": "i"},
    "%": {"en": "percent", "nl": "procent", "de": "prozent", "es": "por ciento", "it": "per cento",
          "fr": "pour cent", "cs": "procent", "pt": "por cento", "pl": "procent"},
    "+": {"en": "plus", "nl": "plus", "de": "plus", "es": "más", "it": "più", "fr": "plus", "cs": "plus",
          "pt": "mais", "pl": "plus"},
    "@": {"en": "at", "nl": "apenstaartje", "de": "at", "es": "arroba", "it": "chiocciola", "fr": "arobase",
          "cs": "zavináč", "pt": "arroba", "pl": "małpa"},
}  # fmt: skip
CURRENCY_WORDS: dict[str, dict[str, str]] = {
    "$": {"en": "dollars", "nl": "dollar", "de": "dollar", "es": "dólares", "it": "dollari", "fr": "dollars",
          "cs": "dolarů", "pt": "dólares", "pl": "dolarów"},
    "€": {"en": "euros", "nl": "euro", "de": "euro", "es": "euros", "it": "euro", "fr": "euros", "cs": "eur",
          "pt": "euros", "pl": "euro"},
    "£": {"en": "pounds", "nl": "pond", "de": "pfund", "es": "libras", "it": "sterline", "fr": "livres",
          "cs": "liber", "pt": "libras", "pl": "funtów"},
}  # fmt: skip
MAX_CARDINAL_DIGITS = 6
# Languages writing a decimal point (the others a decimal comma, with points between thousands).
_DECIMAL_POINT = {"en", "ja", "ko", "th", "he", "zh"}
_CURRENCY = re.compile(r"([$€£])\s?(\d[\d.,]*\d|\d)")
_CURRENCY_AFTER = re.compile(r"(\d)\s?([$€£])")
_PERCENT = re.compile(r"(\d)\s?%")
_ORDINAL_EN = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def spells_numbers(language: str) -> bool:
    """Whether digits of ``language`` are spelt out (num2words knows it)."""
    return language in CONVERTER_CLASSES


def verbalize(text: str, language: str) -> str:
    """``text`` with its numbers and symbols as words of ``language`` (``"$5 at 3pm"`` -> ``"five dollars at
    three pm"``); punctuation and letters are left for normalisation."""
    if spells_numbers(language):
        text = _CURRENCY.sub(lambda m: f"{m.group(2)} {CURRENCY_WORDS[m.group(1)].get(language, m.group(1))}", text)
        text = _CURRENCY_AFTER.sub(lambda m: f"{m.group(1)} {CURRENCY_WORDS[m.group(2)].get(language, m.group(2))}",
                                   text)
        if language == "en":
            text = _ORDINAL_EN.sub(lambda m: f" {num2words(int(m.group(1)), lang='en', to='ordinal')} ", text)
    for symbol, words in SYMBOL_WORDS.items():
        if language in words and symbol in text:
            text = (_PERCENT.sub(rf"\1 {words[language]}", text) if symbol == "%"
                    else text.replace(symbol, f" {words[language]} "))
    if spells_numbers(language):
        text = _NUMBER.sub(lambda m: f" {_number_words(m.group(0), language)} ", _LETTER_DIGIT.sub(" ", text))
    return text


def _number_words(number: str, language: str) -> str:
    point = "." if language in _DECIMAL_POINT else ","
    thousands = "," if point == "." else "."
    if re.fullmatch(rf"\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+", number):  # grouped: a cardinal
        return num2words(int(number.replace(thousands, "")), lang=language)
    whole, _, fraction = number.partition(point)
    if not whole.isdigit() or (fraction and not fraction.isdigit()):  # "1.2.3", a date or version: each part
        return " ".join(_number_words(part, language) for part in re.split(r"[.,]", number))
    if fraction and len(whole) <= MAX_CARDINAL_DIGITS:
        return num2words(Decimal(f"{whole}.{fraction}"), lang=language)
    return " ".join(_integer_words(part, language) for part in (whole, fraction) if part)


def _integer_words(digits: str, language: str) -> str:
    if len(digits) > MAX_CARDINAL_DIGITS or (len(digits) > 1 and digits[0] == "0"):
        return " ".join(num2words(int(d), lang=language) for d in digits)
    return num2words(int(digits), lang=language)
