#!/usr/bin/env python3
"""Build the notes example into the layout Rhone deploys.

    python3 build.py [OUT_DIR]          # default: dist/ next to this file
    python3 build.py --write-schema-hash

OUT_DIR gets the server, the Vango state files and migrations/ (every *.sql file of the
repository's migrations/, down migrations included): `[migrations] dir` of rhone.toml is a
path in the build output, and Rhone reads the migrations from the artifact. The app has no
static assets, so there is no manifest.json. The same sources always give the same bytes.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MIGRATIONS = ROOT / "migrations"
SCHEMA = "vango_state_schema.json"
COPIED = ["server.py", SCHEMA, "vango_state_manifest.json"]


def schema_hash(schema):
    """sha256 of the schema's canonical JSON: every field but schemaHash, keys sorted, no spaces."""
    content = {key: value for key, value in schema.items() if key != "schemaHash"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
    (out / "migrations").mkdir(parents=True)

    for name in COPIED:
        shutil.copyfile(ROOT / name, out / name)
        print(f"copy   {name}")
    migrations = sorted(MIGRATIONS.glob("*.sql")) if MIGRATIONS.is_dir() else []
    for source in migrations:
        shutil.copyfile(source, out / "migrations" / source.name)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        print(f"copy   migrations/{source.name} (sha256 {digest}…)")
    print(f"built  {out} ({len(migrations)} migration files, state {expected})")


def main(argv):
    if argv[1:] == ["--write-schema-hash"]:
        write_schema_hash()
    elif len(argv) <= 2:
        build(Path(argv[1]).resolve() if len(argv) == 2 else ROOT / "dist")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
