"""Command line of the generator: ``python -m codegen {generate,check,bundle,openapi}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bundle import bundle
from .generate import SCHEMA_DIR, check, generate
from .openapi import to_openapi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codegen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="rewrite generated/ and PROTOCOL.md's tables from schema/")
    sub.add_parser("check", help="fail when generated/ is stale")
    for name, what in (("bundle", "the self-contained JSON Schema"), ("openapi", "OpenAPI 3.1")):
        p = sub.add_parser(name, help=f"write {what} to a file (or stdout)")
        p.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate()
        return 0
    if args.command == "check":
        return check()
    b = bundle(SCHEMA_DIR)
    doc = b if args.command == "bundle" else to_openapi(b)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
