"""``python tests/pause_in_save.py STEP MAIN_ARGS…``: ``main.py MAIN_ARGS…`` whose save of the checkpoint of
step STEP stops after all its files are written and before orbax makes it final.

For ``tests/test_preemption.py``, which SIGKILLs the process there. orbax-checkpoint 0.12 writes a
checkpoint into ``<step>.orbax-checkpoint-tmp*`` and calls each item handler's ``finalize`` before renaming
it to ``<step>``; here ``StandardCheckpointHandler.finalize`` (patched on the class: orbax matches save
arguments to handlers by exact class, so a subclass would not be used) prints :data:`PAUSE_MARKER` to stderr
and sleeps when the temporary directory is the one of STEP. The production code knows nothing of this.
"""

from __future__ import annotations

import os
import re
import runpy
import sys
import time

import orbax.checkpoint as ocp

PAUSE_MARKER = "PAUSE_IN_SAVE: paused before finalising"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pause_in_save(pause_step: int) -> None:
    finalize = ocp.StandardCheckpointHandler.finalize

    def finalize_or_pause(self, directory) -> None:
        match = re.search(r"(\d+)\.orbax-checkpoint-tmp", str(directory))
        if match and int(match.group(1)) == pause_step:
            print(f"{PAUSE_MARKER} step {pause_step} in {directory}", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)
        finalize(self, directory)

    ocp.StandardCheckpointHandler.finalize = finalize_or_pause


if __name__ == "__main__":
    pause_in_save(int(sys.argv[1]))
    sys.argv = [os.path.join(REPO, "main.py"), *sys.argv[2:]]
    sys.path.insert(0, REPO)
    runpy.run_path(os.path.join(REPO, "main.py"), run_name="__main__")
