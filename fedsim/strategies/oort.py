"""Oort's guided participant selection (Lai et al. 2021, "Oort: Efficient Federated Learning via Guided
Participant Selection", OSDI'21, Algorithm 1 and §4), pure numpy.

Each round Oort exploits the explored clients it expects to help most and explores unexplored ones:

* statistical utility (§4.2, Eq. 2 approximated by the training loss): U_i = |B_i| sqrt(1/|B_i| sum_k loss_k^2),
  reported after each completed round (estimate mode: the loss term is 1, so U_i = |B_i|);
* Util(i) = (U_i + sqrt(0.1 log R / L_i)) * (T / t_i)^(1(T < t_i) alpha) (Algorithm 1): a temporal-uncertainty
  bonus for clients not seen since round L_i, and a penalty for clients slower than the preferred round
  duration T;
* exploitation (Algorithm 1): the (1 - eps) K best by Util, sampled with probability proportional to Util
  among every client whose Util >= c times the K(1 - eps)-th best; exploration: eps K unexplored clients
  drawn by the caller (the population may be huge; Oort never scans it), with eps decaying per round;
* the pacer (§4.2): every W rounds, if the statistical utility collected in the last W rounds did not exceed
  that of the W before, T is relaxed so slower clients with more utility get in.

Defaults, and where they come from (FedScale's Oort, SymbioticLab/FedScale thirdparty/oort/oort.py and its
config_parser.py, written by the paper's authors):

* exploration 0.9, decay 0.98 per round, minimum 0.3: FedScale's exploration_factor / exploration_decay /
  exploration_min (eps(R) = max(0.9 * 0.98^R, 0.3), decayed once per selection as there);
* straggler penalty alpha = 2: FedScale's round_penalty (the paper's Algorithm 1 alpha);
* pacer window W = 20 rounds: FedScale's pacer_step; T is the round_threshold = 30th percentile of the
  observed durations (FedScale's round_threshold; the paper starts T at Delta). Relaxing T: with
  pacer_delta_s None, by 5 percentile points (FedScale's pacer_delta = 5, applied to the percentile; at 100
  T is infinite, no penalty); with pacer_delta_s set, T = the 30th-percentile duration + (relaxations x
  pacer_delta_s) seconds, the paper's T <- T + Delta. The pacer relaxes when the last window's utility is
  <= the previous one's (the paper's test; FedScale relaxes on a change within 10% and also tightens on a
  5x change, which the paper does not do);
* cut-off c = 0.95: the paper's default c (Algorithm 1's CutOff; FedScale's cut_off_util default differs
  between its versions: 0.05, 0.7, 0.9);
* utility clipping at the 95% value of the explored clients' U (§4.3, outliers; FedScale's clip_bound
  defaults to 0.9), and, with normalize, U divided by that clip value so U lies in [0, 1] and the
  uncertainty bonus is on its scale (FedScale min-max normalizes for the same reason; the paper leaves U
  unscaled: normalize=False gives its formula verbatim). Dividing keeps sampling proportional to U.

Not implemented: the blacklist of over-selected clients (§4.3; off by default in FedScale) and FedScale's
size-prioritised exploration (the caller's explore() draws uniformly).

Per-client records live in sorted numpy arrays over explored clients only (at most rounds x cohort entries).
Draws come from fedsim.rng.stream(seed, "oort", rnd); choose() changes no state but the pacer, so a run
restored from state() chooses exactly what the original run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.rng import stream

_FIELDS = ("ids", "util", "last", "dur")


@dataclass(frozen=True)
class OortConfig:
    """Oort's hyper-parameters (module docstring: the defaults and their sources)."""

    exploration: float = 0.9  # initial eps (FedScale exploration_factor)
    exploration_decay: float = 0.98  # eps <- eps * decay per round (FedScale exploration_decay)
    exploration_min: float = 0.3  # floor of eps (FedScale exploration_min)
    straggler_penalty: float = 2.0  # alpha (FedScale round_penalty)
    pacer_window: int = 20  # W rounds (FedScale pacer_step)
    pacer_delta_s: float | None = None  # relax T by this many seconds; None: by pacer_step_pct percentile points
    pacer_step_pct: float = 5.0  # FedScale pacer_delta (percentile points)
    round_threshold: float = 30.0  # percentile of observed durations giving T (FedScale round_threshold)
    cutoff: float = 0.95  # c (the paper's default)
    clip: float = 0.95  # U clipped at this quantile of the explored clients' U (paper §4.3)
    normalize: bool = True  # divide the clipped U by the clip value (module docstring)

    def __post_init__(self) -> None:
        """Reject settings the algorithm has no meaning for."""
        if not (0 <= self.exploration_min <= 1 and 0 <= self.exploration <= 1 and 0 < self.exploration_decay <= 1):
            raise ValueError("exploration, exploration_min must lie in [0, 1] and exploration_decay in (0, 1]")
        if self.straggler_penalty < 0 or self.pacer_window < 1 or not 0 < self.round_threshold:
            raise ValueError("straggler_penalty >= 0, pacer_window >= 1 and round_threshold > 0 are required")
        if not (0 <= self.cutoff <= 1 and 0 < self.clip <= 1) or (self.pacer_delta_s is not None and self.pacer_delta_s <= 0):
            raise ValueError("cutoff in [0, 1], clip in (0, 1] and pacer_delta_s > 0 are required")


class Oort:
    """Oort's training-participant selector: choose() each round, feedback() with the completed clients."""

    def __init__(self, cfg: OortConfig, seed: int):
        """A selector with no explored clients; all draws derive from `seed`."""
        self.cfg, self.seed = cfg, int(seed)
        self.restore(None)

    # -- records -------------------------------------------------------------------------------------------
    def _find(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._ids, ids)
        if ids.size and (pos.max() >= self._ids.size or np.any(self._ids[pos] != ids)):
            raise ValueError(f"ids without a recorded utility: {np.setdiff1d(ids, self._ids)[:5].tolist()}")
        return pos

    def _upsert(self, ids: np.ndarray) -> np.ndarray:
        new = np.setdiff1d(ids, self._ids)
        if new.size:
            order = np.argsort(np.concatenate([self._ids, new]), kind="stable")
            self._ids = np.concatenate([self._ids, new])[order]
            self._util = np.concatenate([self._util, np.zeros(new.size)])[order]
            self._last = np.concatenate([self._last, np.ones(new.size, np.int64)])[order]
            self._dur = np.concatenate([self._dur, np.zeros(new.size)])[order]
        return self._find(ids)

    def explored(self) -> np.ndarray:
        """Ids of the clients with a recorded utility (Algorithm 1's E), sorted."""
        return self._ids.copy()

    def feedback(self, rnd: int, ids: np.ndarray, samples: np.ndarray, loss_sq_mean: np.ndarray,
                 duration_s: np.ndarray) -> None:
        """Record round `rnd`'s completed clients (Algorithm 1, UpdateWithFeedback): statistical utility
        U_i = |B_i| sqrt(loss_sq_mean) (§4.2; estimate mode passes loss_sq_mean = 1, so U_i = |B_i|),
        L_i = rnd and duration t_i. The round's summed U feeds the pacer, which runs when a later round is
        chosen, so several calls for one round add up."""
        ids = np.asarray(ids, np.int64).ravel()
        samples, loss_sq, dur = (np.broadcast_to(np.asarray(a, np.float64), ids.shape)
                                 for a in (samples, loss_sq_mean, duration_s))
        if np.unique(ids).size != ids.size:
            raise ValueError("duplicate client ids in one feedback")
        if not all(np.all(np.isfinite(a) & (a >= 0)) for a in (samples, loss_sq, dur)):
            raise ValueError("samples, loss_sq_mean and duration_s must be finite and >= 0")
        util = samples * np.sqrt(loss_sq)
        pos = self._upsert(ids)
        self._util[pos], self._last[pos], self._dur[pos] = util, max(int(rnd), 1), dur
        self._hist[int(rnd)] = self._hist.get(int(rnd), 0.0) + float(util.sum())

    def record_duration(self, ids: np.ndarray, duration_s: np.ndarray) -> None:
        """Update t_i of explored clients that did not complete (dropped at a deadline, failed): the system
        utility still learns they are slow (FedScale's update_duration). Unexplored ids are ignored."""
        ids = np.asarray(ids, np.int64).ravel()
        dur = np.broadcast_to(np.asarray(duration_s, np.float64), ids.shape)
        known = np.isin(ids, self._ids)
        self._dur[self._find(ids[known])] = dur[known]

    # -- utility -------------------------------------------------------------------------------------------
    def exploration_rate(self, rnd: int) -> float:
        """eps for round `rnd`: max(exploration * decay^rnd, exploration_min) (FedScale decays once a round)."""
        cfg = self.cfg
        return max(cfg.exploration * cfg.exploration_decay ** int(rnd), cfg.exploration_min)

    def preferred_duration(self) -> float:
        """The pacer's preferred round duration T (s): the round_threshold percentile of the recorded t_i
        (the observed value at index floor(n p / 100), as FedScale), relaxed by the pacer; inf before any
        feedback or once the percentile reaches 100."""
        cfg, n = self.cfg, self._dur.size
        pct = cfg.round_threshold + (self._relaxed * cfg.pacer_step_pct if cfg.pacer_delta_s is None else 0.0)
        if n == 0 or pct >= 100:
            return math.inf
        t = float(np.sort(self._dur)[min(int(n * pct / 100.0), n - 1)])
        return t + (self._relaxed * cfg.pacer_delta_s if cfg.pacer_delta_s is not None else 0.0)

    def utility(self, rnd: int, ids: np.ndarray) -> np.ndarray:
        """Util(i) of explored clients at round `rnd` (Algorithm 1): (U_i clipped [and normalized] +
        sqrt(0.1 log R / L_i)) * (T / t_i)^alpha where t_i > T. R and L_i are at least 1."""
        cfg, ids = self.cfg, np.asarray(ids, np.int64).ravel()
        pos = self._find(ids)
        stat = self._util[pos]
        if self._util.size:
            cap = float(np.sort(self._util)[min(int(self._util.size * cfg.clip), self._util.size - 1)])
            stat = np.minimum(stat, cap)
            if cfg.normalize and cap > 0:
                stat = stat / cap
        util = stat + np.sqrt(0.1 * math.log(max(int(rnd), 1)) / np.maximum(self._last[pos], 1))
        t_pref, dur = self.preferred_duration(), self._dur[pos]
        slow = dur > t_pref
        util[slow] *= (t_pref / dur[slow]) ** cfg.straggler_penalty
        return util

    def _pace(self, rnd: int) -> None:
        w = self.cfg.pacer_window
        while self._pacer_next < rnd:  # every W rounds, once the window's rounds are all over
            end = self._pacer_next
            prev = sum(v for r, v in self._hist.items() if end - 2 * w < r <= end - w)
            cur = sum(v for r, v in self._hist.items() if end - w < r <= end)
            if cur <= prev:  # statistical utility stopped growing: relax T (§4.2)
                self._relaxed += 1
            self._hist = {r: v for r, v in self._hist.items() if r > end - w}
            self._pacer_next += w

    # -- selection -----------------------------------------------------------------------------------------
    @staticmethod
    def _weighted(rng: np.random.Generator, ids: np.ndarray, util: np.ndarray, k: int) -> np.ndarray:
        w = np.maximum(util, 1e-12 * max(float(util.max()), 1.0))
        return ids[rng.choice(ids.size, size=k, replace=False, p=w / w.sum())]

    def choose(self, rnd: int, want: int, online_explored: np.ndarray,
               explore: Callable[[int, np.ndarray], np.ndarray], key: int = 0) -> np.ndarray:
        """Pick `want` client ids for round `rnd` (Algorithm 1, SelectParticipant), sorted.

        online_explored: explored clients online now (the caller checks availability; an id without a
        recorded utility is a ValueError). explore(k, exclude)
        returns up to k online unexplored clients drawn uniformly, none in exclude; it is called at most
        once, with k = want minus the exploitation picks. Exploitation takes want - floor(eps want) of
        online_explored (fewer if there are fewer) by utility with the cut-off; if explore returns fewer
        than asked, the rest comes from the remaining online explored clients, sampled by utility.
        Deterministic given the seed, `rnd`, `key` (FedBuff: one per refill in a step) and the state."""
        self._pace(int(rnd))
        if want <= 0:
            return np.zeros(0, np.int64)
        rng = stream(self.seed, "oort", int(rnd), int(key))
        cand = np.unique(np.asarray(online_explored, np.int64))
        util = self.utility(rnd, cand)
        n_exploit = min(want - math.floor(want * self.exploration_rate(rnd) + 1e-9), cand.size)
        picked = np.zeros(0, np.int64)
        if n_exploit > 0:
            order = np.lexsort((cand, -util))  # best first, ties by id
            pool = order[util[order] >= self.cfg.cutoff * util[order[n_exploit - 1]]]
            picked = self._weighted(rng, cand[pool], util[pool], n_exploit)
        need = want - picked.size
        if need > 0:
            got = np.asarray(explore(need, np.sort(picked)), np.int64).ravel()
            got = got[~np.isin(got, picked)]
            got = got[np.sort(np.unique(got, return_index=True)[1])][:need]  # caller's order, no repeats
            picked = np.concatenate([picked, got])
            need = want - picked.size
        rest = ~np.isin(cand, picked)
        if need > 0 and rest.any():
            picked = np.concatenate([picked, self._weighted(rng, cand[rest], util[rest], min(need, int(rest.sum())))])
        return np.sort(picked)

    # -- checkpoint ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything choose() depends on besides cfg and seed, as numpy arrays and Python scalars."""
        rounds = sorted(self._hist)
        return {"ids": self._ids.copy(), "util": self._util.copy(), "last": self._last.copy(),
                "dur": self._dur.copy(), "hist_rounds": np.array(rounds, np.int64),
                "hist_util": np.array([self._hist[r] for r in rounds], np.float64),
                "pacer_next": self._pacer_next, "relaxed": self._relaxed}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from state() (bit for bit), or start afresh with None."""
        if state is None:
            state = {"ids": np.zeros(0, np.int64), "util": np.zeros(0), "last": np.zeros(0, np.int64),
                     "dur": np.zeros(0), "hist_rounds": np.zeros(0, np.int64), "hist_util": np.zeros(0),
                     "pacer_next": 2 * self.cfg.pacer_window, "relaxed": 0}
        self._ids, self._util, self._last, self._dur = (np.array(state[k]) for k in _FIELDS)
        self._hist = {int(r): float(v) for r, v in zip(state["hist_rounds"], state["hist_util"])}
        self._pacer_next, self._relaxed = int(state["pacer_next"]), int(state["relaxed"])
