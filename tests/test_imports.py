"""`import diffjax` stays fast: the slow optional pieces load on first use, not at import.

scikit-learn (1.5 s, the digits loader), diffrax (0.8 s, ODE solves) and orbax (0.5 s,
checkpoints) took `import diffjax` from 2.8 s to 5.0 s on the 2-core CPU; `python -X importtime -c
"import diffjax"` shows what is left (mostly jax itself). The features that use them are tested
where they live (digits in test_data, checkpoints in test_checkpoints, solves in test_likelihood).
"""

import subprocess
import sys

LAZY = ("sklearn", "diffrax", "orbax")


def test_import_loads_none_of_the_lazy_dependencies():
    code = f"import sys, diffjax; print(sorted(m for m in {LAZY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
