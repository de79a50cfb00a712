#!/usr/bin/env python3
"""Checks the layout promises of the README's design section, for every crate of the workspace:

- no import circles: no two Rust files reach each other through `crate::` / `super::` paths
  (directly or round a longer loop); doc comments and `//` comments are not imports;
- no folder of the operator's `src/` holds more than 12 Rust files.

Prints each circle and each crowded folder; exits 1 if there is any, 0 otherwise.
"""
import os
import re
import sys

MAX_FILES_PER_FOLDER = 12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["src", "sim/src", "testbed/src", "kubectl-ssm/src"]
PATH = re.compile(r"\b(crate|super)::((?:[a-z_0-9]+::)*[a-z_0-9]+)")


def modules(root):
    """Module path (tuple of names) -> file, for every .rs file under `root`."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split("/")
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            found[tuple(parts)] = os.path.join(folder, name)
    return found


def code_lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if not stripped.startswith("//"):
                yield line.split("//", 1)[0] if "://" not in line else line


def graph(root):
    mods = modules(root)

    def resolve(path):
        for i in range(len(path), 0, -1):
            if tuple(path[:i]) in mods:
                return tuple(path[:i])
        return None

    edges = {m: set() for m in mods}
    for module, path in mods.items():
        for line in code_lines(path):
            for kind, rest in PATH.findall(line):
                base = [] if kind == "crate" else list(module[:-1])
                target = resolve(base + rest.split("::"))
                # A file's own descendants and ancestors (mod.rs) are one unit with it.
                if target and target[: len(module)] != module and module[: len(target)] != target:
                    edges[module].add(target)
    return mods, edges


def circles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    problems = 0
    for crate in CRATES:
        root = os.path.join(ROOT, crate)
        mods, edges = graph(root)
        for component in circles(edges):
            problems += 1
            names = " <-> ".join("::".join(m) or "crate" for m in component)
            print(f"{crate}: import circle: {names}")
        for folder, _, files in os.walk(root) if crate == "src" else ():
            count = sum(1 for f in files if f.endswith(".rs"))
            if count > MAX_FILES_PER_FOLDER:
                problems += 1
                print(f"{os.path.relpath(folder, ROOT)}: {count} Rust files (at most {MAX_FILES_PER_FOLDER})")
    if problems:
        sys.exit(1)
    print(f"layout: no import circles, no folder of src/ over {MAX_FILES_PER_FOLDER} Rust files ({', '.join(CRATES)})")


if __name__ == "__main__":
    main()
