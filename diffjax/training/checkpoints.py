"""Orbax checkpoints: the training state plus the resolved config as JSON beside it.

Saves are asynchronous and atomic (Orbax writes a temporary directory and renames it when the
save is finished), so a crash or `kill -9` never leaves a half-written checkpoint that looks
finished, and never touches the finished ones. If the newest finished checkpoint is nevertheless
unreadable (a truncated file, a bad disk), `restore_latest` says so and falls back to the one
before it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import jax

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


def _orbax():
    """`orbax.checkpoint`, imported on first use (it takes 0.5 s): `import diffjax` stays fast."""
    import orbax.checkpoint

    return orbax.checkpoint


def manager(directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1) -> ocp.CheckpointManager:
    """An Orbax checkpoint manager over `directory` with asynchronous saves.

    Args:
      directory: where the step folders go (made absolute).
      max_to_keep: how many of the newest checkpoints to keep.
      save_interval_steps: save only at steps divisible by this (`save(force=True)` overrides).

    Returns:
      An `orbax.checkpoint.CheckpointManager`."""
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, enable_async_checkpointing=True
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, state, config: dict, *, force: bool = False) -> bool:
    """Start an asynchronous save of `state` at its step; `mngr.wait_until_finished()` blocks."""
    ocp = _orbax()
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    return mngr.save(int(jax.device_get(state.step)), args=args, force=force)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
    """(state, config, step) from the newest readable checkpoint, or (None, None, None) if none.

    `abstract_state` (e.g. `jax.eval_shape` of the initial state, with shardings) fixes the tree,
    shapes, dtypes and placement of the result.
    """
    ocp = _orbax()
    for step in sorted(mngr.all_steps(), reverse=True):
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore())
        try:
            restored = mngr.restore(step, args=args)
        except Exception as error:  # whatever makes it unreadable, fall back to the previous one
            logging.warning("checkpoint at step %d is unreadable (%s: %s); falling back", step, type(error).__name__,
                            error)  # fmt: skip
            continue
        return restored.state, restored.config, step
    return None, None, None


def restore_config(mngr: ocp.CheckpointManager):
    """(config dict, step) saved with the newest readable checkpoint, or (None, None) if none."""
    ocp = _orbax()
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config, step
        except Exception as error:
            logging.warning("config of the checkpoint at step %d is unreadable (%s); falling back", step, error)
    return None, None
