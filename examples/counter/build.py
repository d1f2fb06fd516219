#!/usr/bin/env python3
"""Build the counter example into the layout `vango build` produces.

    python3 build.py [OUT_DIR]          # default: dist/ next to this file
    python3 build.py --write-schema-hash

OUT_DIR/public/ gets every file of src/public/ renamed name.<first 8 hex of sha256>.ext,
OUT_DIR/manifest.json maps each source name to its fingerprinted name, and the server and
the Vango state files are copied beside them. The same sources always give the same bytes.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "src" / "public"
SCHEMA = "vango_state_schema.json"
COPIED = ["server.py", SCHEMA, "vango_state_manifest.json"]


def schema_hash(schema):
    """sha256 of the schema's canonical JSON: every field but schemaHash, keys sorted, no spaces."""
    content = {key: value for key, value in schema.items() if key != "schemaHash"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def fingerprinted(relative, data):
    """dir/name.ext -> dir/name.<8 hex>.ext, the hex being the start of the content's sha256."""
    digest = hashlib.sha256(data).hexdigest()[:8]
    stem, dot, ext = relative.name.partition(".")
    return str(relative.with_name(f"{stem}.{digest}{dot}{ext}"))


def write_schema_hash():
    path = ROOT / SCHEMA
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["schemaHash"] = schema_hash(schema)
    path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    print(f"{SCHEMA}: schemaHash = {schema['schemaHash']}")


def build(out):
    schema = json.loads((ROOT / SCHEMA).read_text(encoding="utf-8"))
    expected = schema_hash(schema)
    if schema.get("schemaHash") != expected:
        sys.exit(f"{SCHEMA}: schemaHash is stale: it says {schema.get('schemaHash')}, the content "
                 f"hashes to {expected}; run `python3 build.py --write-schema-hash`")

    if out == ROOT or out in ROOT.parents:
        sys.exit(f"refusing to build into {out}: it contains the sources")
    shutil.rmtree(out, ignore_errors=True)
    (out / "public").mkdir(parents=True)

    manifest = {}
    for source in sorted(p for p in ASSETS.rglob("*") if p.is_file()):
        relative = source.relative_to(ASSETS)
        data = source.read_bytes()
        name = fingerprinted(relative, data)
        target = out / "public" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        manifest[relative.as_posix()] = Path(name).as_posix()
        print(f"asset  {relative.as_posix()} -> public/{name} ({len(data)} bytes)")

    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for name in COPIED:
        shutil.copyfile(ROOT / name, out / name)
        print(f"copy   {name}")
    print(f"built  {out} ({len(manifest)} assets, state {expected})")


def main(argv):
    if argv[1:] == ["--write-schema-hash"]:
        write_schema_hash()
    elif len(argv) <= 2:
        build(Path(argv[1]).resolve() if len(argv) == 2 else ROOT / "dist")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
