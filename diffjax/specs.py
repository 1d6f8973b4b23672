"""Build objects from short config strings: "name" or "name(key=value, ...)" with literal values.

Configs name solvers, schedules and grids this way (`config.solver = "ddim(eta=1.0)"`), so a
whole method is one overridable string, e.g. `--config.solvers="('euler', 'ddim(eta=0.5)')"`.
"""

import ast
import functools
import inspect
from collections.abc import Callable, Mapping

MAX_LENGTH = 1000  # characters of a spec string
MAX_DEPTH = 20  # nesting levels of its expression (calls, lists, tuples, dicts)


def _depth(node: ast.AST) -> int:
    """How deeply calls and containers (lists, tuples, dicts, sets) nest in an expression, iteratively."""
    nesting = (ast.Call, ast.List, ast.Tuple, ast.Dict, ast.Set)
    deepest, stack = 0, [(node, 0)]
    while stack:
        node, level = stack.pop()
        level += isinstance(node, nesting)
        deepest = max(deepest, level)
        stack.extend((child, level) for child in ast.iter_child_nodes(node))
    return deepest


def parse(field: str, spec: str, registry: Mapping[str, Callable]) -> functools.partial:
    """`registry[name]` with the spec's keyword arguments bound (not yet called).

    Args:
      field: the config field the spec came from, named in errors (e.g. "config.sample.solver").
      spec: "name" or "name(key=literal, ...)".
      registry: names -> builders (functions or classes).

    Returns:
      A `functools.partial` of the builder with the keywords bound; a ValueError its call raises names
      the field and the spec.

    Raises:
      ValueError: naming the field, for a spec that is not of that form, is longer than `MAX_LENGTH`
        characters or nests deeper than `MAX_DEPTH` levels, a name not in the registry, or a keyword
        the builder does not take (listing those it does).
    """
    if isinstance(spec, str) and len(spec) > MAX_LENGTH:
        raise ValueError(
            f"{field} must be a spec of at most {MAX_LENGTH} characters, got {len(spec)}: {spec[:60]!r}..."
        )
    try:
        node = ast.parse(spec, mode="eval").body if isinstance(spec, str) else None
    except (SyntaxError, RecursionError, MemoryError):  # CPython refuses ~200 nested parentheses itself
        node = None
    if node is not None and _depth(node) > MAX_DEPTH:
        raise ValueError(f"{field} must nest at most {MAX_DEPTH} levels deep, got {spec!r}")
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
    _check_keywords(field, spec, name, registry[name], kwargs)
    return _Bound(registry[name], field=field, spec=spec, **kwargs)


class _Bound(functools.partial):
    """A partial whose call re-raises a ValueError with the field and spec it came from in front."""

    def __new__(cls, builder, /, *, field: str, spec: str, **kwargs):
        self = super().__new__(cls, builder, **kwargs)
        self.field, self.spec = field, spec
        return self

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ValueError as error:
            raise ValueError(f"{self.field}={self.spec!r}: {error}") from error


def _check_keywords(field: str, spec: str, name: str, builder: Callable, kwargs: dict) -> None:
    """A ValueError naming the keyword if `builder` (a function or class) accepts none of that name."""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in allowed:
            raise ValueError(f"{field}={spec!r}: {name} has no argument {key!r}; its arguments are {allowed}")
