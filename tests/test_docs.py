"""The docs site: `mkdocs build --strict` passes (no broken reference, no undocumented public name),
the check it runs catches what it should, and the how-to pages' code runs as printed."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", os.path.join(ROOT, "docs", "hooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code(page):
    """The page's python blocks, in order, as one program."""
    text = open(os.path.join(ROOT, "docs", page)).read()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))


def _run(code):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_the_docs_build_strictly(tmp_path):
    """Every page, snippet and cross-reference resolves, every public module has its API page and every
    public name a docstring: any warning fails a strict build."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    solvers = open(tmp_path / "site" / "api" / "diffjax.solvers" / "index.html").read()
    assert "dpmpp_2m" in solvers and "Lu et al." in solvers  # the reference is rendered from docstrings
    getting_started = open(tmp_path / "site" / "getting_started" / "index.html").read()
    assert "fk_steer" in getting_started  # README's example, included as a snippet


def test_the_check_finds_undocumented_names_and_accepts_inherited_docstrings(tmp_path, monkeypatch):
    """A package whose __all__ holds an undocumented function, a dataclass with only its generated
    __doc__, and a class whose override inherits a documented base method: exactly the first two (and
    the undocumented property) are reported."""
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent('''
        """A package."""
        from toypkg.things import Base, Child, Plain, documented, undocumented
        __all__ = ["Base", "Child", "Plain", "documented", "undocumented", "things"]
        from toypkg import things
    ''')
    )
    (pkg / "things.py").write_text(
        textwrap.dedent('''
        """Things."""
        import dataclasses

        def documented():
            """Has one."""

        def undocumented():
            pass

        def _private():
            pass

        class Base:
            """A base."""

            def alpha(self):
                """Documented here."""

        class Child(Base):
            """A child."""

            def alpha(self):
                return 1

            @property
            def size(self):
                return 2

        @dataclasses.dataclass
        class Plain:
            x: int
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = _hooks()
    assert hooks.public_modules("toypkg") == ["toypkg", "toypkg.things"]
    missing = [name for module in hooks.defining_modules("toypkg") for name in hooks.undocumented(module)]
    assert sorted(missing) == ["toypkg.things.Child.size", "toypkg.things.Plain", "toypkg.things.undocumented"]
    pages = hooks.api_pages("toypkg")  # each name rendered once, where it is defined
    things = ["Base", "Child", "Plain", "documented", "undocumented"]
    assert pages == {"toypkg": [("toypkg", [])], "toypkg.things": [("toypkg.things", things)]}


def test_diffjax_has_no_undocumented_public_name():
    """The same check on diffjax itself, without building the site (names it, if one is missing)."""
    hooks = _hooks()
    assert [name for module in hooks.defining_modules() for name in hooks.undocumented(module)] == []


def test_the_concepts_page_prints_what_it_says():
    lines = _run(_code("concepts.md"))
    assert lines == ["(4, 2) [0.5 0.5]", "True", "2.0 True"]


def test_the_sampling_how_to_runs_and_its_solvers_rank_as_it_says():
    """Against the exact ODE at 10 NFE: the second-order solvers beat Euler (measured 4.4e-2 for Euler,
    2.8e-2 for dpmpp_2m, 1.1e-2 for UniPC; Heun 2.8e-2 at 19 NFE)."""
    lines = _run(_code("howto/sample.md"))
    rmse = {line.split()[0]: (int(line.split()[2]), float(line.split()[-1])) for line in lines[:4]}
    assert rmse["euler"][0] == rmse["dpmpp_2m"][0] == rmse["unipc"][0] == 10 and rmse["heun"][0] == 19
    assert rmse["unipc"][1] < rmse["dpmpp_2m"][1] < rmse["euler"][1] < 0.1
    assert lines[4:] == ["(11, 256, 2) (10, 256, 2)", "float32 bfloat16",
                         "sample: x became non-finite at step 6 (t = 0.1406 -> 0.0536)"]  # fmt: skip


@pytest.mark.filterwarnings("ignore")
def test_the_steering_how_to_runs_and_steers():
    """The custom reward equals the built-in quadratic (same particles), and steering raises the mean
    reward above unsteered samples' (measured: FK -0.22, best-of-8 -0.36, unsteered -4.27)."""
    lines = _run(_code("howto/steer.md"))
    assert lines[0].startswith("(16, 2) (16, 8, 2) (16, 8)") and lines[1] == "True"
    reward = {line.split()[0]: float(line.split()[-1]) for line in lines[2:5]}
    assert reward["fk"] > reward["unsteered"] + 2 and reward["best-of-8"] > reward["unsteered"] + 2
    assert lines[5] == "16 16" and lines[6].startswith("(16, 2)") and lines[6].endswith(" 128")
    assert lines[7] == "(2, 16)" and lines[8].startswith("(16, 8, 2)")
