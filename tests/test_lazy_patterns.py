"""agproxy's patterns of rare paths are compiled at their first use (_LazyPattern), not at import
(issue 22: start-up). Each must answer exactly what its pattern compiled with re.compile answers,
on its first use and after it; and a plain import compiles none of them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy

ROOT = Path(__file__).resolve().parent.parent

LAZY = sorted((name, value) for name, value in vars(agproxy).items() if isinstance(value, agproxy._LazyPattern))


def test_the_rare_paths_patterns_are_lazy() -> None:
    assert len(LAZY) >= 20, [name for name, _ in LAZY]


def _words(source: str) -> List[str]:
    """Pieces of a pattern's source that its text may well contain (so that the examples match)."""
    return [w for w in re.split(r"[\\()|?*+\[\]{}^$]+", source) if w]


@st.composite
def pattern_and_text(draw: Any) -> Tuple[str, Any, str]:
    name, lazy = draw(st.sampled_from(LAZY))
    pieces = _words(lazy._source[0]) + ["0", "12", "abc", "A", "_", "-", ".", ":", " ", "\n", "`", "é", "\ud800"]
    text = "".join(draw(st.lists(st.sampled_from(pieces) | st.text(max_size=3), max_size=8)))
    return name, lazy, text


def _answers(pattern: Any, text: str) -> List[Any]:
    spans = lambda m: None if m is None else (m.span(), m.groups())  # noqa: E731
    return [spans(pattern.search(text)), spans(pattern.match(text)), spans(pattern.fullmatch(text)),
            pattern.findall(text), [m.span() for m in pattern.finditer(text)], pattern.sub("<\\g<0>>", text),
            pattern.subn("", text), pattern.split(text)]


@settings(max_examples=400, deadline=None)
@given(pattern_and_text())
def test_a_lazy_pattern_answers_as_its_compiled_pattern(case: Tuple[str, Any, str]) -> None:
    name, lazy, text = case
    compiled = re.compile(*lazy._source)
    fresh = agproxy._LazyPattern(*lazy._source)  # its first use, then its later ones
    assert _answers(fresh, text) == _answers(compiled, text) == _answers(fresh, text), name
    assert (fresh.pattern, fresh.flags, fresh.groups) == (compiled.pattern, compiled.flags, compiled.groups)


def test_an_import_compiles_none_of_them() -> None:
    probe = ("import agproxy; print(sorted(n for n, v in vars(agproxy).items() "
             "if isinstance(v, agproxy._LazyPattern) and 'search' in vars(v)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
