"""No import cycle among the modules of `harness` and `models`, counting imports made inside
functions (grimp reads every import statement of a module, nested ones included). The layering
contracts (tests/test_architecture.py) cannot see a cycle inside one layer, such as a registry
that imports its own members; this test can."""

from __future__ import annotations

import grimp


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)
    of a directed import graph, each sorted: every cycle lies inside one of them (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        # Iterative DFS: (module, iterator over its imports)
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1 or module in edges[module]:
                    components.append(sorted(component))
    return components


def project_import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("harness", "models", include_external_packages=False)
    modules = graph.modules
    return {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules}
            for m in modules}


def test_no_import_cycle_in_harness_or_models():
    cycles = import_cycles(project_import_graph())
    assert cycles == [], f"import cycles (each a strongly connected set of modules): {cycles}"


def test_cycle_finder_finds_cycles():
    """The finder's failure path: a cycle through three modules, a self-import and a
    function-level import back to a registry are each reported; a diamond is not."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"a"}}) == [["a"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []
    assert import_cycles({"models.registry": {"models.vdvae"},
                          "models.vdvae": {"models.registry"}}) \
        == [["models.registry", "models.vdvae"]]


def test_grimp_counts_imports_inside_functions():
    """harness.cli imports its subcommands inside functions; the graph must see them."""
    graph = project_import_graph()
    assert "harness.run.runner" in graph["harness.cli"]
