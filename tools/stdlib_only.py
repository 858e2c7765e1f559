#!/usr/bin/env python3
"""Fail when a Python file imports anything outside the standard library (``make lint``).

agproxy runs on machines where nothing can be installed, so its one module may import the
standard library only. Usage: ``python tools/stdlib_only.py FILE...``; exit 0 when clean, 1 if not.
"""

from __future__ import annotations

import ast
import sys
from typing import Iterator, List, Tuple


def foreign_imports(path: str) -> Iterator[Tuple[int, str]]:
    """(line, module) for each absolute import in ``path`` that is not standard library."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top != "__future__" and top not in sys.stdlib_module_names:
                yield node.lineno, name


def main(paths: List[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    bad = [(path, line, name) for path in paths for line, name in foreign_imports(path)]
    for path, line, name in bad:
        print(f"{path}:{line}: imports {name!r}, which is not in the standard library")
    if not bad:
        print(f"stdlib-only: {len(paths)} file(s), standard library imports only")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
