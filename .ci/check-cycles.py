#!/usr/bin/env python3
"""Import graph of `runtime/src` between top-level modules; fails on a cycle or a layer breach.

Reads every `.rs` file under `runtime/src`, collects `crate::<top>` references (in `use`
trees such as `use crate::{a, b::c}` and in inline paths), resolves root re-exports such as
`crate::Ctx` through the `pub use` lines of `runtime/src/lib.rs`, prints the graph as
`a -> b, c` lines and exits non-zero if the graph has a cycle or an edge breaks the layer
rule stated in `runtime/src/lib.rs`. Python 3 standard library only.
"""

import os
import re
import sys

ROOT = (sys.argv[1] if len(sys.argv) > 1
        else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime", "src"))

# The layer rule, lowest first: a module may import only modules in its own layer or below.
LAYERS = [
    ["error", "util"],
    ["schedule"],
    ["record"],
    ["events", "report"],
    ["logs", "otel"],
    ["task"],
    ["hooks"],
    ["graph"],
    ["store"],
    ["journal"],
    ["notify"],
    ["exec"],
    ["runtime"],
    ["macro_support", "admin"],
]
# Stricter rules than the layer order, with why.
ONLY = {
    "store": ({"record", "error", "schedule", "util"},
              "storage must compile without the engine: `store` may import only "
              "record, error, schedule and util"),
}
NEVER = {
    ("exec", "store"): "the executor sees durability only through `journal`, never `store`",
}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(src):
    """Source without comments, string and char literals (keeps line structure)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = src.find('"' + m.group(1), i + len(m.group(0)))
            i = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'", src[i:i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'", src[i:i + 12])
            i += len(m.group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_heads(text, start):
    """First segments of the items in the `{...}` group opening at `text[start]`."""
    heads, depth, item = [], 0, ""
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                heads.append(item)
                break
        if depth == 1 and ch == ",":
            heads.append(item)
            item = ""
        elif depth >= 1:
            item += ch
    return [m.group(0) for h in heads for m in [re.match(IDENT, h.strip())] if m]


def crate_heads(text):
    """Every first segment after `crate::` in `text`."""
    for m in re.finditer(r"\bcrate\s*::\s*", text):
        rest = m.end()
        if text[rest:rest + 1] == "{":
            yield from group_heads(text, rest)
        else:
            ident = re.match(IDENT, text[rest:])
            if ident:
                yield ident.group(0)


def top_of(path):
    rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".rs") else first


def main():
    files = []
    for dirpath, _, names in os.walk(ROOT):
        files += [os.path.join(dirpath, f) for f in names if f.endswith(".rs")]
    modules = {top_of(f) for f in files} - {"lib"}

    # Root re-exports: `pub use module::{A, B}` in lib.rs makes `crate::A` an edge to `module`.
    lib = strip(open(os.path.join(ROOT, "lib.rs"), encoding="utf-8").read())
    reexport = {}
    for m in re.finditer(r"\bpub\s+use\s+(" + IDENT + r")\s*::\s*", lib):
        module = m.group(1)
        if module not in modules:
            continue
        rest = m.end()
        rest += re.match(r"(?:" + IDENT + r"\s*::\s*)*", lib[rest:]).end()
        if lib[rest:rest + 1] == "{":
            names = group_heads(lib, rest)
        else:
            tail = re.match(IDENT, lib[rest:])
            names = [tail.group(0)] if tail else []
        for name in names:
            # `pub use m::{self, x}` would name the module itself.
            reexport[module if name == "self" else name] = module

    graph = {m: set() for m in modules}
    unresolved = set()
    for f in sorted(files):
        src = top_of(f)
        if src == "lib":
            continue
        text = strip(open(f, encoding="utf-8").read())
        for head in crate_heads(text):
            dst = head if head in modules else reexport.get(head)
            if dst is None:
                unresolved.add((src, head))
            elif dst != src:
                graph[src].add(dst)

    for m in sorted(graph):
        print(f"{m} -> {', '.join(sorted(graph[m]))}" if graph[m] else f"{m} ->")
    for src, head in sorted(unresolved):
        print(f"note: {src}: `crate::{head}` names no module or root re-export", file=sys.stderr)

    failed = False

    # Cycles: Tarjan's strongly connected components, then one concrete cycle per component.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    for comp in sccs:
        if len(comp) < 2:
            continue
        failed = True
        members = set(comp)
        # Shortest way back to the start, by breadth-first search inside the component.
        start = comp[0]
        prev, frontier, cycle = {}, [start], None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        path = [v]
                        while path[-1] != start:
                            path.append(prev[path[-1]])
                        cycle = list(reversed(path)) + [start]
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        print(f"error: import cycle between {', '.join(comp)}: {' -> '.join(cycle)}", file=sys.stderr)

    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    for src in sorted(graph):
        for dst in sorted(graph[src]):
            if (src, dst) in NEVER:
                failed = True
                print(f"error: {src} -> {dst}: {NEVER[(src, dst)]}", file=sys.stderr)
            if src in ONLY and dst not in ONLY[src][0]:
                failed = True
                print(f"error: {src} -> {dst}: {ONLY[src][1]}", file=sys.stderr)
            if src not in rank or dst not in rank:
                continue
            if rank[dst] > rank[src]:
                failed = True
                print(f"error: {src} -> {dst}: `{src}` (layer {rank[src]}) imports `{dst}` "
                      f"from a higher layer ({rank[dst]}); see the layer rule in runtime/src/lib.rs",
                      file=sys.stderr)
    for m in sorted(modules - set(rank)):
        failed = True
        print(f"error: module `{m}` has no layer; add it to LAYERS in {sys.argv[0]}", file=sys.stderr)

    if failed:
        return 1
    print("ok: no import cycle; every edge points down the layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
