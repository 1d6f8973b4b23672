"""Run every notebook top to bottom in a fresh kernel and save it with its outputs (nbclient):

    pip install -e ".[notebooks]" && python notebooks/execute.py [notebooks/03_steering_and_search.ipynb ...]

Run it after changing a notebook, so that what GitHub and Colab show is what the code does.
"""

import glob
import os
import sys
import time

import nbclient
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def run(path: str, timeout: int = 900) -> nbformat.NotebookNode:
    """The notebook at `path` executed top to bottom in a fresh kernel (cwd: the repository root; the
    kernel inherits this process's environment). A cell that raises raises `nbclient`'s
    `CellExecutionError` naming it."""
    notebook = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": os.path.dirname(HERE)}}
    nbclient.NotebookClient(notebook, timeout=timeout, resources=resources).execute()
    nbformat.validate(notebook)
    return notebook


def execute(path: str, timeout: int = 900) -> float:
    """Execute the notebook at `path` and save it in place with its outputs; the seconds it took."""
    start = time.perf_counter()
    nbformat.write(run(path, timeout), path)
    return time.perf_counter() - start


if __name__ == "__main__":
    for path in sys.argv[1:] or sorted(glob.glob(os.path.join(HERE, "*.ipynb"))):
        print(f"{path}: {execute(path):.0f} s", flush=True)
