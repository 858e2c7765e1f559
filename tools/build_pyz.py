#!/usr/bin/env python3
"""Build agproxy.pyz from zipapp.spec, reproducibly: same inputs, same bytes.

Entries are written in a fixed order with a fixed timestamp and permissions, and the
``__main__.py`` that calls the spec's entry point is generated here. Each module also goes in as
bytecode for the building Python (an unchecked-hash ``.pyc``, which zipimport prefers when the
running Python matches and ignores otherwise): compiling a 5,000-line module at every start costs
about 10 MB of memory and tens of milliseconds. That bytecode leaves out what only a reader of the
code needs, which every agproxy would otherwise hold in memory for its lifetime (0.6 MB of 1.5):
functions' docstrings (classes keep theirs: a dataclass without one has its signature worked out
at import) and the column ranges of Python 3.11+ (``-X no_debug_ranges``: a traceback names the
line but marks no columns); the source beside it keeps both. PYTHONHASHSEED is pinned so the
bytecode is the same bytes each time.

Usage: build_pyz.py SPEC OUTPUT
"""
import ast
import importlib.util
import marshal
import os
import sys
import zipfile

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
INTERPRETER = b"#!/usr/bin/env python3\n"
#: The archive's __main__.py. It loads the entry's module itself rather than importing it: zipimport
#: (3.11) would read and unmarshal its bytecode twice, once for the file name its spec names and once
#: to run it, ~8% of agproxy's start. The collector is off meanwhile: all that the module makes lives on.
MAIN = """import sys
if sys.version_info < (3, 9):  # before anything an older Python cannot read, a sentence rather than a traceback
    sys.exit("agproxy needs Python 3.9 or newer; this is Python %d.%d" % sys.version_info[:2])
import gc
from importlib.machinery import ModuleSpec
from importlib.util import module_from_spec

gc.disable()
spec = ModuleSpec("{module}", __loader__, origin=__loader__.archive + "/{module}.py")
spec.has_location = True
module = sys.modules["{module}"] = module_from_spec(spec)
exec(__loader__.get_code("{module}"), module.__dict__)
gc.enable()

sys.exit(module.{function}())
"""


def read_spec(path):
    entry, files = None, []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, value = line.partition(" ")
            value = value.strip()
            if key == "entry" and ":" in value:
                entry = value
            elif key == "file" and value:
                files.append(value)
            else:
                sys.exit(f"{path}:{number}: expected 'entry MODULE:FUNCTION' or 'file PATH'")
    if entry is None or not files:
        sys.exit(f"{path}: needs one 'entry' line and at least one 'file' line")
    return entry, files


def add(archive, name, data, compress=True):
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    archive.writestr(info, data)


def without_docstring(function):
    """``function`` (an ast node) without its docstring; ``pass`` if that was all of its body."""
    body = function.body
    first = body[0].value if isinstance(body[0], ast.Expr) else None
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        function.body = body[1:] or [ast.copy_location(ast.Pass(), body[0])]


def bytecode(path, archive_name):
    """The module at ``path`` as an unchecked-hash ``.pyc``, its functions' docstrings left out. Its
    code names the file ``archive_name/module.py``, a path that is no file on disk: a bare
    ``module.py`` sends traceback and linecache to the current directory, which would quote the lines
    of whatever file has that name there; this one makes them ask the archive's loader for its source."""
    with open(path, "rb") as f:
        source = f.read()
    tree = ast.parse(source, path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            without_docstring(node)
    code = compile(tree, archive_name + "/" + os.path.basename(path), "exec", dont_inherit=True)
    unchecked_hash = (1).to_bytes(4, "little")  # PEP 552 flags: hash-based, source not checked
    return importlib.util.MAGIC_NUMBER + unchecked_hash + importlib.util.source_hash(source) + marshal.dumps(code)


def main(spec, output):
    entry, files = read_spec(spec)
    module, function = entry.split(":", 1)
    main_py = MAIN.format(module=module, function=function)
    base = os.path.dirname(os.path.abspath(spec))
    temporary = output + ".tmp"
    with open(temporary, "wb") as raw:
        raw.write(INTERPRETER)
        with zipfile.ZipFile(raw, "w") as archive:
            add(archive, "__main__.py", main_py)
            for name in sorted(files):
                with open(os.path.join(base, name), "rb") as f:
                    add(archive, os.path.basename(name), f.read())
                if name.endswith(".py"):
                    # stored, not deflated: inflating 1.2 MB of bytecode took ~9 ms of every start
                    add(archive, os.path.basename(name) + "c", bytecode(os.path.join(base, name), module + ".pyz"),
                        compress=False)
    os.chmod(temporary, 0o755)
    os.replace(temporary, output)
    print(f"built {output} ({os.path.getsize(output)} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    # set ordering inside bytecode follows the hash seed; no column ranges in it (Python 3.11+)
    pinned = {"PYTHONHASHSEED": "0", "PYTHONNODEBUGRANGES": "1"}
    if any(os.environ.get(name) != value for name, value in pinned.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, **pinned))
    main(sys.argv[1], sys.argv[2])
