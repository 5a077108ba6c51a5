"""The one rule for what footage is protected (S34), used by every part that deletes or shows.

A file is protected when its recorder marked it important (IMP in its name), a
person graded it `important` or `evidence`, it is under a legal hold, or an
administrator put it in one of the 2016 rules' permanent retention categories
(`CATEGORIES`). Retention never deletes a protected file; a person may delete one
only after confirming twice; nobody deletes a file under a legal hold until it is
released, nor one in a permanent category until an administrator takes it out of
it (both logged); and only an administrator may lower a protected grade.
"""

from __future__ import annotations

from enum import StrEnum


class Level(StrEnum):
    """A file's grade, in rising order of protection (stored as its value)."""

    NORMAL = "normal"
    IMPORTANT = "important"
    EVIDENCE = "evidence"


LEVELS = tuple(Level)  # in rising order of protection
PROTECTED_LEVELS = frozenset({Level.IMPORTANT, Level.EVIDENCE})

# The Ministry of Public Security's 2016 rules (article 13): footage kept permanently
CATEGORIES = {
    "case_evidence": "evidence in an administrative or criminal case",
    "obstruction": "obstruction of duty",
    "major_incident": "a major emergency or mass incident",
    "major_case": "another major or complex case",
}
PERMANENT_CATEGORIES = frozenset(CATEGORIES)


def is_permanent(category: str | None) -> bool:
    """True for a 2016 category whose footage is kept permanently (never deleted)."""
    return category in PERMANENT_CATEGORIES


def is_protected(important: bool, level: str, legal_hold: str | None, category: str | None) -> bool:
    """The rule: IMP, a protected grade, a legal hold or a permanent retention category.

    `category` (the file's `retention_category`) has no default: a caller that forgot it
    once showed a permanent file as unprotected."""
    return (
        bool(important) or level in PROTECTED_LEVELS or bool(legal_hold) or is_permanent(category)
    )


def lowers_protection(old_level: str, new_level: str) -> bool:
    """True when a change of grade takes away protection the file had."""
    return old_level in PROTECTED_LEVELS and _rank(new_level) < _rank(old_level)


def _rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else 0
