#!/usr/bin/python3
"""Writes the license notices of the crates.io crates linked into some binaries.

Usage: crate-notices.py CARGO_PACKAGE...

The Rust binaries link every crate statically, so each Debian package ships
the copyright and license files of the crates in its binary. The crate list
comes from `cargo tree` (normal dependencies, without the proc-macro crates
that run only at build time), and the license files from each crate's source folder in Cargo's
registry, as `cargo metadata` reports it. Identical texts are printed once.
"""

import hashlib
import json
import pathlib
import subprocess
import sys

NOTICE_PREFIXES = ("license", "licence", "copying", "notice", "copyright", "unlicense")


def run_cargo(*args):
    """Returns the standard output of one cargo command, failing loudly."""
    return subprocess.run(["cargo", *args], check=True, capture_output=True, text=True).stdout


def linked_crates(package):
    """Returns the (name, version) pairs of the crates.io crates in `package`."""
    tree = run_cargo("tree", "--locked", "-e", "normal,no-proc-macro", "--prefix", "none", "-f", "{p}", "-p", package)
    crates = set()
    for line in tree.splitlines():
        fields = line.split()
        # Path crates of this workspace show their folder in parentheses.
        if len(fields) < 2 or (len(fields) > 2 and fields[2].startswith("(/")):
            continue
        crates.add((fields[0], fields[1].lstrip("v")))
    return crates


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: crate-notices.py CARGO_PACKAGE...")
    packages = sys.argv[1:]
    metadata = json.loads(run_cargo("metadata", "--locked", "--format-version", "1"))
    by_id = {(p["name"], p["version"]): p for p in metadata["packages"] if p.get("source")}

    texts = {}
    summary = []
    crates = set().union(*(linked_crates(package) for package in packages))
    for name, version in sorted(crates):
        crate = by_id.get((name, version))
        if crate is None:
            continue
        folder = pathlib.Path(crate["manifest_path"]).parent
        files = sorted(
            f for f in folder.iterdir() if f.is_file() and f.name.lower().startswith(NOTICE_PREFIXES)
        )
        summary.append(f"{name} {version}: {crate.get('license') or 'see its files'}")
        if not files:
            summary[-1] += " (the crate ships no license file)"
        for file in files:
            text = file.read_text(encoding="utf-8", errors="replace").strip()
            digest = hashlib.sha256(text.encode()).hexdigest()
            texts.setdefault(digest, [text, []])[1].append(f"{name} {version} ({file.name})")

    print(f"Crates from crates.io linked into {', '.join(packages)}, with their licenses.")
    if any(name == "libsqlite3-sys" for name, _ in crates):
        print("libsqlite3-sys embeds SQLite, which is in the public domain.")
    print()
    print("\n".join(summary))
    for text, users in texts.values():
        print()
        print("=" * 78)
        print("\n".join(users))
        print("-" * 78)
        print(text)


if __name__ == "__main__":
    main()
