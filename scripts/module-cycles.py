#!/usr/bin/env python3
"""Dependency cycles between the library's top-level modules.

Reads src/lib.rs's modules and every `crate::<module>` path in their files
(unit-test blocks left out), then prints the strongly connected groups of
more than one module. Exits 1 when any of the modules named on the command
line share such a group (default: every module, so CI keeps the library's
module graph acyclic: the basic types depend on nothing above them, the
pipeline on nothing that runs it). Comments are not read: a doc link is
not a dependency.

    python3 scripts/module-cycles.py [module ...]
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def modules():
    lib = (SRC / "lib.rs").read_text()
    return re.findall(r"^pub mod (\w+);", lib, re.M)


def files_of(module):
    single = SRC / f"{module}.rs"
    files = [single] if single.exists() else []
    folder = SRC / module
    if folder.is_dir():
        files += sorted(folder.rglob("*.rs"))
    return files


def without_tests(text):
    # A file's unit tests sit at its end, after `#[cfg(test)]` + `mod tests`.
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    return text[: m.start()] if m else text


def references(text, names):
    # Comments (docs' links included) are not dependencies.
    text = re.sub(r"(?m)(^|\s)//.*$", "", text)
    found = set(re.findall(r"crate::(\w+)", text))
    for group in re.findall(r"crate::\{([^}]*)\}", text, re.S):
        found.update(re.findall(r"\b(\w+)\b", group))
    return found & names


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    names = set(modules())
    graph = {}
    for m in names:
        deps = set()
        for f in files_of(m):
            deps |= references(without_tests(f.read_text()), names)
        graph[m] = deps - {m}
    groups = [g for g in sccs(graph) if len(g) > 1]
    for g in groups:
        print("cycle:", " <-> ".join(g))
    watched = set(sys.argv[1:]) or names
    bad = [g for g in groups if len(watched & set(g)) > 1]
    if bad:
        print("modules that must not share a cycle do:", bad, file=sys.stderr)
        return 1
    print("no cycle among", ", ".join(sorted(watched)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
