#!/usr/bin/env python3
"""Build agproxy.pyz from zipapp.spec, reproducibly: same inputs, same bytes.

Entries are written in a fixed order with a fixed timestamp and permissions, and the
``__main__.py`` that calls the spec's entry point is generated here. Each module also goes in as
bytecode for the building Python (an unchecked-hash ``.pyc``, which zipimport prefers when the
running Python matches and ignores otherwise): compiling a 5,000-line module at every start costs
about 10 MB of memory and tens of milliseconds. PYTHONHASHSEED is pinned so the bytecode is
the same bytes each time.

Usage: build_pyz.py SPEC OUTPUT
"""
import os
import py_compile
import sys
import tempfile
import zipfile

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
INTERPRETER = b"#!/usr/bin/env python3\n"


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


def bytecode(path):
    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "module.pyc")
        py_compile.compile(path, cfile=target, dfile=os.path.basename(path), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        with open(target, "rb") as f:
            return f.read()


def main(spec, output):
    entry, files = read_spec(spec)
    module, function = entry.split(":", 1)
    main_py = f"import sys\nfrom {module} import {function}\n\nsys.exit({function}())\n"
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
                    add(archive, os.path.basename(name) + "c", bytecode(os.path.join(base, name)), compress=False)
    os.chmod(temporary, 0o755)
    os.replace(temporary, output)
    print(f"built {output} ({os.path.getsize(output)} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    if os.environ.get("PYTHONHASHSEED") != "0":  # set ordering inside bytecode follows the hash seed
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))
    main(sys.argv[1], sys.argv[2])
