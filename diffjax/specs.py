"""Build objects from short config strings: "name" or "name(key=value, ...)" with literal values.

Configs name solvers, schedules and grids this way (`config.solver = "ddim(eta=1.0)"`), so a
whole method is one overridable string, e.g. `--config.solvers="('euler', 'ddim(eta=0.5)')"`.
"""

import ast
import functools
from collections.abc import Callable, Mapping


def parse(field: str, spec: str, registry: Mapping[str, Callable]) -> functools.partial:
    """`registry[name]` with the spec's keyword arguments bound (not yet called)."""
    try:
        node = ast.parse(spec, mode="eval").body if isinstance(spec, str) else None
    except SyntaxError:
        node = None
    if isinstance(node, ast.Name):
        name, kwargs = node.id, {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        try:
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            kwargs = None
        name = node.func.id
    else:
        kwargs = None
    if kwargs is None or None in kwargs:
        raise ValueError(f"{field} must look like 'name' or 'name(key=literal, ...)', got {spec!r}")
    if name not in registry:
        raise ValueError(f"{field} must name one of {sorted(registry)}, got {name!r} in {spec!r}")
    return functools.partial(registry[name], **kwargs)
