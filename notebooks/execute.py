"""Run every notebook top to bottom in a fresh kernel and save it with its outputs (nbclient):

    pip install -e ".[notebooks]" && python notebooks/execute.py [notebooks/steering.ipynb ...]

Run it after changing a notebook, so that what GitHub and Colab show is what the code does.
"""

import glob
import os
import sys
import time

import nbclient
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def execute(path: str, timeout: int = 900) -> float:
    """Execute the notebook at `path` in place (cwd: the repository root) and return the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    resources = {"metadata": {"path": os.path.dirname(HERE)}}
    nbclient.NotebookClient(notebook, timeout=timeout, resources=resources).execute()
    nbformat.validate(notebook)
    nbformat.write(notebook, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    for path in sys.argv[1:] or sorted(glob.glob(os.path.join(HERE, "*.ipynb"))):
        print(f"{path}: {execute(path):.0f} s", flush=True)
