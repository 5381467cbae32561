#!/usr/bin/env python3
"""Dependency cycles between the library's top-level modules, and between
the files within each of them.

Reads src/lib.rs's modules and every `crate::<module>` path in their files
(unit-test blocks left out), then prints the strongly connected groups of
more than one module. Exits 1 when any of the modules named on the command
line share such a group (default: every module, so CI keeps the library's
module graph acyclic: the basic types depend on nothing above them, the
pipeline on nothing that runs it). Comments are not read: a doc link is
not a dependency.

Then the same within each of those modules that is a folder: its files
(and sub-folders, one node each) are the nodes, and a file depends on a
sibling it names through `super::<sibling>`, `crate::<module>::<sibling>`
or an item the module's root re-exports from that sibling (`pub use
sibling::Item`). The root (`mod.rs`, or `<module>.rs` beside the folder)
is not a node: it declares the files and puts them to work, and its own
items (e.g. the pipeline's shared context) are what its files have in
common, so a file naming them depends on nothing beside it. Exits 1 on any
cycle among a module's files (`chain.rs` <-> `retry.rs`).

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
    # A file's unit tests sit at its end, after `#[cfg(test)]` + `mod tests`
    # (or `pub(super) mod tests`, shared with a sibling's tests).
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(\w+\))?\s+)?mod tests", text)
    return text[: m.start()] if m else text


def references(text, names):
    # Comments (docs' links included) are not dependencies.
    text = re.sub(r"(?m)(^|\s)//.*$", "", text)
    found = set(re.findall(r"crate::(\w+)", text))
    for group in re.findall(r"crate::\{([^}]*)\}", text, re.S):
        found.update(re.findall(r"\b(\w+)\b", group))
    return found & names


def root_of(module):
    for root in (SRC / module / "mod.rs", SRC / f"{module}.rs"):
        if root.exists():
            return root
    return None


def children_of(module):
    """The module's direct files and sub-folders: {name: [files]}."""
    folder = SRC / module
    out = {}
    for f in sorted(folder.glob("*.rs")):
        if f.name != "mod.rs":
            out[f.stem] = [f]
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        out[d.name] = sorted(d.rglob("*.rs"))
    return out


def top_level_items(group):
    """The first name of each comma-separated element of a `{...}` group."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(group + ","):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            m = re.match(r"\s*(\w+)", group[start:i])
            if m:
                items.append(m.group(1))
            start = i + 1
    return items


def groups_after(text, prefix):
    """Names right after `prefix::`, one or a `{...}` group's first ones."""
    found = []
    for m in re.finditer(re.escape(prefix) + r"::(\w+|\{)", text):
        if m.group(1) != "{":
            found.append(m.group(1))
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found += top_level_items(text[m.end() : i - 1])
    return found


def reexports(root, children):
    """Items the root re-exports, by the child they come from."""
    out = {}
    text = re.sub(r"(?m)(^|\s)//.*$", "", root.read_text())
    for child, rest in re.findall(r"pub use (?:self::)?(\w+)::([^;]*);", text):
        if child in children:
            for name in re.findall(r"(?:\bas\s+)?\b(\w+)\b", rest):
                out[name] = child
    return out


def within(module):
    """Cycles among `module`'s files, as sorted groups of child names."""
    root = root_of(module)
    if not (SRC / module).is_dir() or root is None:
        return []
    children = children_of(module)
    exported = reexports(root, children)
    graph = {}
    for child, files in children.items():
        deps = set()
        for f in files:
            text = re.sub(r"(?m)(^|\s)//.*$", "", without_tests(f.read_text()))
            names = groups_after(text, f"crate::{module}")
            # `super::` in a direct file is the module; deeper, it is not.
            if f.parent == SRC / module:
                names += groups_after(text, "super")
            for n in names:
                target = n if n in children else exported.get(n)
                if target:
                    deps.add(target)
        graph[child] = deps - {child}
    return [g for g in sccs(graph) if len(g) > 1]


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
    inner = {m: within(m) for m in sorted(watched)}
    for m, cycles in inner.items():
        for g in cycles:
            print(f"cycle in {m}/:", " <-> ".join(g))
    if bad or any(inner.values()):
        return 1
    print("no cycle among", ", ".join(sorted(watched)), "nor among any one's files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
