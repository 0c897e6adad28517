#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Keeps the code shown in README.md and docs/*.md identical to compiled sources.

A fenced block preceded by the line

    <!-- snippet: examples/quickstart.cpp quickstart -->

shows the lines between the two `//! [quickstart]` markers of that file (the markers Doxygen's
@snippet uses), verbatim. The sources are built and run by ctest, so the documentation cannot show
code that does not compile.

    python3 docs/snippets.py --check   # exit 1 and name every block that differs (ctest docs_snippets)
    python3 docs/snippets.py --update  # rewrite the blocks from the sources

--check also fails on a Markdown line that starts with a Doxygen @snippet command: on GitHub such a
line shows as text instead of code.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- snippet: (\S+) (.+?) -->$")


def region(path: str, name: str) -> list[str]:
    """The lines between the two `//! [name]` markers of ROOT/path."""
    lines = (ROOT / path).read_text().splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip() == f"//! [{name}]"]
    if len(marks) != 2:
        raise SystemExit(f"{path}: expected two '//! [{name}]' markers, found {len(marks)}")
    return lines[marks[0] + 1 : marks[1]]


def process(md: pathlib.Path, update: bool) -> tuple[list[str], int]:
    """Returns the problems found in one Markdown file and the number of blocks checked; rewrites it if update."""
    lines = md.read_text().splitlines()
    out, problems, blocks, i = [], [], 0, 0
    rel = md.relative_to(ROOT)
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if line.lstrip().startswith("@snippet"):
            problems.append(f"{rel}:{i + 1}: a Doxygen @snippet line shows as text in Markdown: use a snippet block")
        m = MARKER.match(line)
        i += 1
        if not m:
            continue
        if i >= len(lines) or not lines[i].startswith("```"):
            problems.append(f"{rel}:{i}: a snippet marker must be followed by a fenced code block")
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            problems.append(f"{rel}:{i + 1}: unterminated code block")
            break
        blocks += 1
        want = region(m.group(1), m.group(2))
        if lines[i + 1 : end] != want:
            problems.append(f"{rel}:{i + 2}: the block differs from '{m.group(2)}' in {m.group(1)}")
        out.append(lines[i])
        out.extend(want)
        out.append(lines[end])
        i = end + 1
    if update:
        md.write_text("\n".join(out) + "\n")
    return problems, blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true")
    group.add_argument("--update", action="store_true")
    args = parser.parse_args()
    problems, blocks = [], 0
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        p, b = process(md, args.update)
        problems += p
        blocks += b
    if args.update:
        print(f"snippets: {blocks} blocks rewritten from their sources")
        return 0
    if blocks == 0:
        problems.append("no snippet block found: the check would prove nothing")
    for p in problems:
        print(p)
    if problems:
        print("snippets: FAILED (python3 docs/snippets.py --update rewrites the blocks from the sources)")
        return 1
    print(f"snippets: OK ({blocks} blocks identical to their sources)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
