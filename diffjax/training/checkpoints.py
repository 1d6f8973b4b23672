"""Orbax checkpoints that cannot poison a run: the training state, the resolved config as JSON and a
SHA-256 digest of every array, written together.

Saves are asynchronous and atomic (Orbax writes a temporary directory and renames it when the save
is finished), so a crash or `kill -9` never leaves a half-written checkpoint that looks finished.
At restore, every array is hashed again and checked finite: a checkpoint that is unreadable, whose
bytes changed on disk, or that holds NaN or inf is reported by its path and skipped for the one
before it. A writer (`restore_latest(..., set_aside=True)`) moves it aside to `bad-<step>` in the
same folder, where it stays: it is never rotated away and its step is free to be written again.

Rotation (`save(..., keep=k)`) deletes only complete checkpoints this module wrote (a step folder
holding the state, the config and the digests), oldest first, and never touches anything else in
the folder: an empty step folder, a stray file or a checkpoint of another tool neither counts
towards `keep` nor is deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

ITEMS = ("state", "config", "digests")
"""The items of a complete checkpoint, each a subfolder of its step folder."""

BAD_PREFIX = "bad-"
"""Checkpoints that failed to restore are moved aside to `<BAD_PREFIX><step>` (then `-2`, `-3`, ...)."""


def _orbax():
    """`orbax.checkpoint`, imported on first use (it takes 0.5 s): `import diffjax` stays fast."""
    import orbax.checkpoint

    return orbax.checkpoint


def manager(directory: str) -> ocp.CheckpointManager:
    """An Orbax checkpoint manager over `directory` with asynchronous saves and no rotation of its own
    (`save(..., keep=k)` rotates, touching only complete checkpoints of this module).

    Args:
      directory: where the step folders go (made absolute).

    Returns:
      An `orbax.checkpoint.CheckpointManager`."""
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def digests(tree) -> dict[str, str]:
    """SHA-256 of each array of `tree` (its dtype, shape and bytes), keyed by the array's path.

    Args:
      tree: a pytree of arrays; typed PRNG keys are hashed through their key data.

    Returns:
      {path: hex digest}, the path as `jax.tree_util.keystr` writes it (e.g. ".params['w']").
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
        out[jax.tree_util.keystr(path)] = digest.hexdigest()
    return out


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every floating-point entry of `tree` is finite (a boolean scalar; integers and keys pass).

    Args:
      tree: a pytree of arrays.

    Returns:
      A boolean scalar array.
    """
    floats = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(floats)) if floats else jnp.bool_(True)


def _problem(state, saved_digests) -> str | None:
    """Why a restored state is not what was saved (None when its digests match and it is finite)."""
    now = digests(state)
    if changed := sorted(k for k in now.keys() | saved_digests.keys() if now.get(k) != saved_digests.get(k)):
        more = ", ..." if len(changed) > 3 else ""
        return f"its arrays differ from the digests saved with them ({', '.join(changed[:3])}{more})"
    if not bool(all_finite(state)):
        return "it holds non-finite values"
    return None


def step_folders(directory: str) -> dict[int, str]:
    """{step: path} of every entry of `directory` named by a step number (a complete checkpoint or not).

    Args:
      directory: a checkpoint folder.

    Returns:
      The entries whose names are decimal integers, whatever they hold.
    """
    if not os.path.isdir(directory):
        return {}
    return {int(name): os.path.join(directory, name) for name in os.listdir(directory) if name.isdecimal()}


def is_complete(path: str) -> bool:
    """Whether `path` is a complete checkpoint of this module: a folder with every item of `ITEMS`.

    Args:
      path: a step folder.

    Returns:
      True when Orbax finished writing the state, the config and the digests there.
    """
    return os.path.isdir(path) and all(os.path.isdir(os.path.join(path, item)) for item in ITEMS)


def complete_steps(mngr: ocp.CheckpointManager) -> list[int]:
    """The steps of the complete checkpoints in the manager's folder, ascending.

    Args:
      mngr: a manager from `manager`.

    Returns:
      The sorted steps whose folders pass `is_complete`.
    """
    return sorted(step for step, path in step_folders(str(mngr.directory)).items() if is_complete(path))


def set_aside(mngr: ocp.CheckpointManager, step: int) -> str:
    """Move the folder (or file) of `step` to `bad-<step>` beside it, kept on disk; returns the new path.

    Args:
      mngr: a manager from `manager` (reloaded, so that the step is free to be written again).
      step: the step whose entry to move.

    Returns:
      The path it was moved to (`bad-<step>`, or `bad-<step>-<n>` if that is taken).
    """
    directory = str(mngr.directory)
    target, n = os.path.join(directory, f"{BAD_PREFIX}{step}"), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(directory, f"{BAD_PREFIX}{step}-{n}")
    os.rename(os.path.join(directory, str(step)), target)
    mngr.reload()
    return target


def rotate(mngr: ocp.CheckpointManager, keep: int) -> None:
    """Delete the oldest complete checkpoints until `keep` remain; nothing else is touched.

    Args:
      mngr: a manager from `manager`, with no save in flight.
      keep: how many complete checkpoints to keep (at least 1).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep!r}")
    for step in complete_steps(mngr)[:-keep]:
        mngr.delete(step)


def save(mngr: ocp.CheckpointManager, state, config: dict, *, keep: int | None = None) -> None:
    """Start an asynchronous save of `state`, `config` and the state's `digests` at the state's step.

    The save in flight (if any) is finished first; then, with `keep`, older complete checkpoints are
    rotated away so that `keep` remain besides the new one, and an entry already at this step that is
    not a complete checkpoint (an empty folder, a stray file) is moved aside (`set_aside`).
    `mngr.wait_until_finished()` blocks until the new save is on disk.

    Args:
      mngr: a manager from `manager`.
      state: the pytree to save (a `TrainState`).
      config: the run's config as a JSON-able dict.
      keep: how many complete checkpoints to keep besides the new one; None keeps all.
    """
    ocp = _orbax()
    mngr.wait_until_finished()
    if keep is not None:
        rotate(mngr, keep)
    step = int(jax.device_get(state.step))
    if (path := step_folders(str(mngr.directory)).get(step)) is not None:
        logging.warning("%s is not a complete checkpoint; moved to %s", path, set_aside(mngr, step))
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config), digests=ocp.args.JsonSave(digests(state))
    )
    mngr.save(step, args=args, force=True)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, *, set_aside_bad: bool = False):
    """(state, config, step) from the newest checkpoint that restores and verifies, or (None, None, None).

    Checkpoints are tried newest first. One that is unreadable, whose arrays differ from the digests
    saved with them, or that holds a non-finite value is reported (a warning naming its path and what
    is wrong) and skipped; with `set_aside_bad` it is also moved to `bad-<step>`.

    Args:
      mngr: a manager from `manager`.
      abstract_state: e.g. `jax.eval_shape` of the initial state, with shardings; it fixes the tree,
        shapes, dtypes and placement of the result.
      set_aside_bad: move a checkpoint that fails aside (for a run that writes this folder; readers of
        someone's run leave it as it is).

    Returns:
      The restored state, its saved config dict and its step; Nones when no checkpoint passes.
    """
    ocp = _orbax()
    for step in reversed(complete_steps(mngr)):
        path = os.path.join(str(mngr.directory), str(step))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            config=ocp.args.JsonRestore(),
            digests=ocp.args.JsonRestore(),
        )
        try:
            restored = mngr.restore(step, args=args)
            problem = _problem(restored.state, restored.digests)
        except Exception as error:  # whatever makes it unreadable, fall back to the previous one
            problem = f"it is unreadable ({type(error).__name__}: {error})"
        if problem is None:
            return restored.state, restored.config, step
        moved = f"; moved to {set_aside(mngr, step)}" if set_aside_bad else ""
        logging.warning("checkpoint %s is skipped: %s%s", path, problem, moved)
    return None, None, None


def restore_config(mngr: ocp.CheckpointManager):
    """(config dict, step) saved with the newest complete checkpoint whose config reads, or (None, None).

    Args:
      mngr: a manager from `manager`.

    Returns:
      The config as a JSON dict and its step (only the config is read: its state is not verified).
    """
    ocp = _orbax()
    for step in reversed(complete_steps(mngr)):
        try:
            return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config, step
        except Exception as error:
            logging.warning("config of the checkpoint at step %d is unreadable (%s); falling back", step, error)
    return None, None
