"""ASHA's rungs survive a resumed sweep: Tune restores a scheduler by unpickling the copy it saved when the sweep
began, so without its own state file ASHA would forget every result reported before the interruption."""

import pickle
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from fedsim.sweeps.asha import ResumableASHA


def _asha(path):
    return ResumableASHA(path, time_attr="round", metric="train_loss", mode="min", grace_period=1,
                         reduction_factor=2, max_t=10**9)


def test_rungs_are_restored_when_tune_unpickles_the_scheduler(tmp_path):
    good, bad = SimpleNamespace(trial_id="t_good"), SimpleNamespace(trial_id="t_bad")
    asha = _asha(tmp_path / "asha.pkl")
    as_saved_at_start = pickle.dumps(asha)  # what Tune keeps in tuner.pkl: empty rungs
    for trial in (good, bad):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, good, {"round": 1, "train_loss": 5.0}) == TrialScheduler.CONTINUE
    # Ctrl-C here; the resumed sweep unpickles the scheduler of the start, which reads the rungs back
    resumed = pickle.loads(as_saved_at_start)
    assert resumed.on_trial_result(None, bad, {"round": 1, "train_loss": 8.0}) == TrialScheduler.STOP
    # without the state file the same result would have been the first at its rung, and gone on
    (tmp_path / "asha.pkl").unlink()
    forgetful = pickle.loads(as_saved_at_start)
    forgetful.on_trial_add(None, bad)
    assert forgetful.on_trial_result(None, bad, {"round": 1, "train_loss": 8.0}) == TrialScheduler.CONTINUE
