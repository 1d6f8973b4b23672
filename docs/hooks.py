"""mkdocs hooks: `mkdocs build --strict` fails when a public name of diffjax has no docstring or no
page in the API reference.

The public surface is what a user reaches from `import diffjax`: a package's `__all__` (its
submodules included), and for a module without `__all__` the functions and classes it defines
whose names do not start with an underscore; for each public class, its own public methods and
properties. A method that overrides a documented one (a schedule's `alpha`, a solver's `step`)
inherits that docstring, as `help()` shows it. A dataclass's generated `__doc__` ("Name(field: type,
...)") is not a docstring.
"""

import importlib
import inspect
import logging

log = logging.getLogger("mkdocs.plugins.diffjax")


def public_names(module) -> list[str]:
    """The public names of one module: its `__all__`, or the functions and classes it defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def _has_docstring(obj) -> bool:
    doc = inspect.getdoc(obj)
    if not doc:
        return False
    generated = inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(") and "\n" not in doc.strip()
    return not generated


def _members(cls):
    """A class's own public methods and properties, as (name, object) pairs."""
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, property):
            yield name, attr
        elif inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod)):
            yield name, getattr(cls, name)


def public_modules(root: str = "diffjax") -> list[str]:
    """Every module reachable from `root` through the `__all__` of public packages, `root` first."""
    found, todo = [], [root]
    while todo:
        name = todo.pop(0)
        if name in found:
            continue
        found.append(name)
        module = importlib.import_module(name)
        todo += [obj.__name__ for obj in (getattr(module, n) for n in public_names(module)) if inspect.ismodule(obj)]
    return found


def undocumented(module_name: str) -> list[str]:
    """The qualified public names of one module (and of its public classes' members) without a
    docstring. Classes are checked where they are defined, so a class exported twice is named once."""
    module = importlib.import_module(module_name)
    missing = []
    for name in public_names(module):
        obj = getattr(module, name)
        if inspect.ismodule(obj) or not (callable(obj) or inspect.isclass(obj)):
            continue  # a module is a page of its own; constants are documented in their module's docstring
        home = getattr(obj, "__module__", None) or module_name
        if home != module_name and home.split(".")[0] == module_name.split(".")[0]:
            continue  # re-exported: checked in the module that defines it
        if not _has_docstring(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            missing += [f"{module_name}.{name}.{m}" for m, attr in _members(obj) if not _has_docstring(attr)]
    return missing


def defining_modules(root: str = "diffjax") -> list[str]:
    """The public modules and every diffjax module that defines a re-exported public name."""
    names = public_modules(root)
    for module_name in list(names):
        module = importlib.import_module(module_name)
        for name in public_names(module):
            home = getattr(getattr(module, name), "__module__", None)
            if isinstance(home, str) and home.startswith(root) and home not in names:
                names.append(home)
    return names


def api_pages(root: str = "diffjax") -> dict[str, list[tuple[str, list[str]]]]:
    """The API reference: for each top-level module (the root included), its page's sections as
    (module, names rendered there). Each public name is rendered once, in its home: the most specific
    public module that exports it and contains the module defining it."""
    modules = public_modules(root)
    exporters: dict[tuple[int, str], list[str]] = {}  # keyed by name too: equal constants may be one object
    objects = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            obj = getattr(module, name)
            if not inspect.ismodule(obj):
                exporters.setdefault((id(obj), name), []).append(module_name)
                objects[(id(obj), name)] = obj
    sections: dict[str, list[str]] = {m: [] for m in modules}
    for (key, name), names in exporters.items():
        obj = objects[(key, name)]
        defined_in = getattr(obj, "__module__", None) or ""
        containing = [m for m in names if defined_in == m or defined_in.startswith(m + ".")]
        home = max(containing, key=len) if containing else names[0]
        sections[home].append(name)
    pages: dict[str, list[tuple[str, list[str]]]] = {}
    for module_name in sorted(modules, key=lambda m: (m.count(".") > 1, m)):
        top = ".".join(module_name.split(".")[:2])
        pages.setdefault(top, []).append((module_name, sorted(sections[module_name])))
    return pages


def _page_markdown(sections) -> str:
    lines = []
    for module_name, names in sections:
        members = "[" + ", ".join(names) + "]" if names else "false"
        lines += [f"::: {module_name}", "    options:", f"      members: {members}", ""]
    return "\n".join(lines)


def on_files(files, config, **kwargs):
    """Generate one API page per top-level module (`api/<name>.md`) from the public surface."""
    from mkdocs.structure.files import File

    for top, sections in api_pages().items():
        files.append(File.generated(config, f"api/{top}.md", content=_page_markdown(sections)))
    return files


def on_post_build(config, **kwargs):
    """Warn (an error under --strict) for each public name without a docstring."""
    for module_name in defining_modules():
        for name in undocumented(module_name):
            log.warning(f"{name} is public but has no docstring")
