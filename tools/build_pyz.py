#!/usr/bin/env python3
"""Build agproxy.pyz from zipapp.spec, reproducibly: same inputs, same bytes.

Entries are written in a fixed order with a fixed timestamp and permissions, and the
``__main__.py`` that calls the spec's entry point is generated here.

Usage: build_pyz.py SPEC OUTPUT
"""
import os
import sys
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


def add(archive, name, data):
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


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
    os.chmod(temporary, 0o755)
    os.replace(temporary, output)
    print(f"built {output} ({os.path.getsize(output)} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    main(sys.argv[1], sys.argv[2])
