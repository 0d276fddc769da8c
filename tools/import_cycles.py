"""Exit 1, listing them, if the modules of a package import each other in a cycle.

    python tools/import_cycles.py [PACKAGE]      (default: danlu)

The import graph is grimp's (installed with import-linter), so it counts every import statement,
those inside functions included: a lazy import still ties the two modules together. Each strongly
connected component of more than one module is a cycle group; one shortest cycle through it is
printed as an example, with the line of each import.
"""

from __future__ import annotations

import itertools
import sys
from collections import deque

import grimp


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (import chains can be deeper than Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.append(m)
                    if m == node:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return out


def shortest_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest cycle through the group's first module, by breadth-first search inside the group."""
    members = set(group)
    start = group[0]
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")


def main(argv: list[str]) -> int:
    package = argv[0] if argv else "danlu"
    ig = grimp.build_graph(package, cache_dir=None)
    graph = {m: set(ig.find_modules_directly_imported_by(m)) for m in ig.modules}
    groups = strongly_connected(graph)
    if not groups:
        print(f"no import cycles among the {len(graph)} modules of {package}")
        return 0
    print(f"{len(groups)} import cycle group(s) among the modules of {package}:")
    for group in groups:
        print(f"\n{len(group)} modules: {', '.join(group)}")
        cycle = shortest_cycle(graph, group)
        for a, b in itertools.pairwise(cycle):
            details = ig.get_import_details(importer=a, imported=b)
            lines = ", ".join(f"l.{d['line_number']}" for d in details)
            print(f"  {a} -> {b}  ({lines})")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
