#!/usr/bin/env python3
"""Keeps the snippets of README.md's "Calling the services" true: every fenced code block between the
checked-snippets markers (or in the whole file, if it has none) is checked, none is skipped.

- ```sh blocks run, in order, one bash script per `###` section (so TOKEN etc. carry over within a section),
  against the live services: 127.0.0.1:50051 and 127.0.0.1:50052 (the defaults the docs show) are replaced
  by $AUTH_ADDR and $POSTS_ADDR, and .venv/bin comes first on PATH.
- ```sh fails=CODE blocks must fail, with grpcurl's "Code: CODE" in their output.
- ```sh setup blocks install things: each command must appear verbatim in .ci/interop, which runs it.
- ```python, ```js and ```rust blocks must be verbatim excerpts (indentation aside) of the example that
  CI runs or compiles.
- ```sh tls blocks (and ```sh tls fails=CODE) are for services over TLS, as `watchword-dev --tls` runs them:
  they run only with --tls, against TLS services, with data/tls/ (the certificates watchword-dev writes)
  replaced by $WATCHWORD_TLS_DIR. Without --tls they are left to that run; with it, nothing else runs.

Usage: AUTH_ADDR=... POSTS_ADDR=... python3 tests/interop/docs_snippets.py [--tls] README.md
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXCERPT_SOURCES = {
    "python": ROOT / "examples/python/client.py",
    "js": ROOT / "examples/node/client.js",
    "rust": ROOT / "examples/guarded_service.rs",
}
FENCE = re.compile(r"^```(\S*)(.*)$")


def blocks(markdown):
    """Yields (section, language, attributes, code, line number) for each fenced block."""
    section, lines = "", markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("### "):
            section = lines[i][4:].strip()
        match = FENCE.match(lines[i])
        if match:
            start = i + 1
            i += 1
            while i < len(lines) and lines[i] != "```":
                i += 1
            yield section, match.group(1), match.group(2).split(), "\n".join(lines[start:i]), start
        i += 1


def stripped_lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


def is_excerpt(code, source):
    want, have = stripped_lines(code), stripped_lines(source)
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def wrap_failing(code, status):
    """A bash fragment that runs `code` in a subshell, which must fail with grpcurl's "Code: <status>"."""
    return (
        f"if out=$( ( {code}\n) 2>&1 ); then echo 'expected {status}, but it succeeded' >&2; exit 1; fi\n"
        f'printf "%s\\n" "$out"\n'
        f'grep -q "Code: {status}$" <<<"$out" || {{ echo "expected Code: {status}" >&2; exit 1; }}\n'
    )


BEGIN, END = "<!-- checked-snippets:begin -->", "<!-- checked-snippets:end -->"


def main(path, tls=False):
    doc = Path(path).read_text()
    # In a larger document (README.md) only the marked region is checked.
    if BEGIN in doc:
        doc = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    ci_script = (ROOT / ".ci/interop").read_text()
    scripts, errors, checked = {}, [], 0
    for section, language, attributes, code, line in blocks(doc):
        where = f"{path}:{line} ({section or 'no section'})"
        if tls != (language == "sh" and "tls" in attributes):
            continue  # the other run's
        checked += 1
        if language == "sh" and "setup" in attributes:
            for command in stripped_lines(code):
                command = command.split("  #")[0].strip()
                if command not in ci_script:
                    errors.append(f"{where}: setup command not run by .ci/interop: {command}")
        elif language == "sh":
            code = code.replace("127.0.0.1:50051", "$AUTH_ADDR").replace("127.0.0.1:50052", "$POSTS_ADDR")
            if tls:
                code = code.replace("data/tls/", "$WATCHWORD_TLS_DIR/")
            fails = [a.split("=", 1)[1] for a in attributes if a.startswith("fails=")]
            scripts.setdefault(section, []).append(wrap_failing(code, fails[0]) if fails else code)
        elif language in EXCERPT_SOURCES:
            source = EXCERPT_SOURCES[language]
            if not is_excerpt(code, source.read_text()):
                errors.append(f"{where}: {language} block is not an excerpt of {source.relative_to(ROOT)}")
        else:
            errors.append(f"{where}: don't know how to check a ```{language} block")

    env = dict(os.environ, PATH=f"{ROOT / '.venv/bin'}{os.pathsep}{os.environ['PATH']}")
    for section, parts in scripts.items():
        print(f"--- running the sh snippets of '{section}'", flush=True)
        script = "set -euo pipefail\n" + "\n".join(parts)
        result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            errors.append(f"the sh snippets of '{section}' failed with status {result.returncode}")

    for error in errors:
        print(f"FAIL: {error}", file=sys.stderr)
    if errors or checked == 0:
        sys.exit(1)
    print(f"docs: all {checked} {'TLS ' if tls else ''}snippets of {path} checked")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tls"]:
        main(sys.argv[2], tls=True)
    else:
        main(sys.argv[1])
