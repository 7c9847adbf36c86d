"""A person's name: what the gallery accepts, and how a name is shown in a terminal or a log.

One rule for every way in (enroll_local.py, bundles, the fleet's sync, a web desk): they all
write through Gallery, which checks with checked_name; a front end may call it first to refuse
early. Names enrolled before the rule, or written to the database by other means, may still hold
anything: whatever prints or logs a name passes it through escaped().
"""
from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 200  # characters, after stripping; a long line of text is a pasted document, not a name

# Invisible formatting characters that real names need: ZERO WIDTH NON-JOINER (Persian, Kurdish)
# and ZERO WIDTH JOINER (Indic scripts). Every other format character (bidi overrides that make
# "evil.jpg" read "gpj.live", soft hyphens, byte order marks) only makes names look alike.
_NAME_FORMAT_CHARACTERS = {"\u200c", "\u200d"}
# Controls (NUL, ESC, newline, tab, DEL, C1), format characters, surrogates, line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
# unicodedata.name knows no names for the C0 and C1 controls.
_CONTROL_NAMES = {"\x00": "NUL", "\x07": "BEL", "\x08": "BACKSPACE", "\t": "TAB", "\n": "LINE FEED",
                  "\r": "CARRIAGE RETURN", "\x1b": "ESC", "\x7f": "DEL"}


def checked_name(name: object) -> str:
    """The name stripped of surrounding blanks; ValueError saying what is wrong with it."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a person's name must be a non-empty string, got {name!r}")
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"the name {escaped(name[:40])}... is {len(name)} characters long: at most "
                         f"{MAX_NAME_LENGTH} are allowed")
    for position, character in enumerate(name, 1):
        if unicodedata.category(character) in _REFUSED_CATEGORIES and character not in _NAME_FORMAT_CHARACTERS:
            label = unicodedata.name(character, _CONTROL_NAMES.get(character, "a control character"))
            raise ValueError(f"the name {name!r} holds {label} (U+{ord(character):04X}) at character {position}: "
                             "a name may not hold control or invisible formatting characters")
    return name


def escaped(text: str) -> str:
    """text with every character that is not printable (and the backslash) escaped as Python writes it,
    so a name cannot move the cursor, recolour a terminal, start a fake log line or reverse the text;
    a name checked_name accepts comes out as it went in."""
    return "".join("\\\\" if c == "\\" else c if c.isprintable() or c in _NAME_FORMAT_CHARACTERS
                   else c.encode("unicode_escape").decode("ascii") for c in text)
