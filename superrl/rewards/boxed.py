"""Find the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in a LaTeX string.

Kept apart from ``math.py`` so the data adapters can read MATH ground truths without importing
math-verify (and sympy).
"""
import re

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_UNBRACED_ARGUMENT = re.compile(r"\s+([^\s$]+)")


def last_boxed_content(text: str) -> str | None:
    """Content of the last box command, braces balanced; None when absent or unbalanced."""
    commands = list(_BOX_COMMAND.finditer(text))
    if not commands:
        return None
    rest = text[commands[-1].end():]
    if rest.lstrip().startswith("{"):
        return _braced_group(rest[rest.index("{"):])
    # "\boxed 5": the argument runs to the next space or "$" (what models write, not TeX's one token).
    match = _UNBRACED_ARGUMENT.match(rest)
    return match.group(1) if match else None


def _braced_group(text: str) -> str | None:
    """Content of the brace group that ``text`` starts with, or None if it never closes."""
    depth = 0
    for position, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[1:position]
    return None
