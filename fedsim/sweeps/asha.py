"""ASHA whose rungs survive a resumed sweep.

Ray Tune saves a search algorithm's state with the experiment, but not a scheduler's: a restored sweep gets the
scheduler as it was pickled when the sweep began, with empty rungs, so after Ctrl-C ASHA would compare the
remaining trials only with each other and could stop different trials than an uninterrupted sweep. This one
writes its state (Tune's own `save`: the scheduler's attributes) to a file in the sweep directory after every
result, and reads it back whenever it is unpickled (Tune's restore unpickles it).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

from fedsim.atomic import atomic_write_bytes


class ResumableASHA(ASHAScheduler):
    """Ray Tune's ASHAScheduler (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"), its
    rungs kept in `state_path` across an interrupted and resumed sweep."""

    def __init__(self, state_path: str | Path, **kwargs):
        super().__init__(**kwargs)
        self._state_path = str(state_path)

    def on_trial_result(self, tune_controller, trial, result):
        """ASHA's decision at a rung, then the rungs saved."""
        action = super().on_trial_result(tune_controller, trial, result)
        self._persist()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        """ASHA records a finished trial's last result, then the rungs are saved."""
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()

    def _persist(self) -> None:
        atomic_write_bytes(Path(self._state_path), pickle.dumps(self.__dict__))

    def __setstate__(self, state: dict) -> None:
        """Unpickled (Tune restoring the sweep): the rungs as last saved, if any were."""
        self.__dict__.update(state)
        saved = Path(self._state_path)
        if saved.is_file():
            self.__dict__.update(pickle.loads(saved.read_bytes()))
