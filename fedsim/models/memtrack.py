"""Live tensor bytes of one training step, op by op, with who owns them at the peak.

A `TorchDispatchMode` sees every tensor an aten op returns. Each new storage is booked with its size and a tag
(the part of the step that made it) and unbooked when its storage is freed (a weakref finalizer), so the running
sum is the live bytes a caching-free allocator would hold, and its maximum is the step's peak. It works the same
on real tensors and on `FakeTensorMode`'s fake ones (no memory, no compute), which is how `fedsim cost --trace`
measures an 8B model's step on a laptop. torch's own `MemTracker` refuses models with frozen parameters, which
is every PEFT model; this tracker has no such limit.

Tags: the caller says which phase runs (`phase`), and forward hooks on the decoder layers say which layer is
computing; at the peak the live set is copied, and `breakdown()` sorts it into weights, trainable parameters,
gradients, optimizer state, activations (by layer), logits/loss and temporaries.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class _Live:
    """One live storage: its bytes, when it was made (a sequence number) and the tag it was made under."""

    nbytes: int
    seq: int
    tag: str


@dataclass
class LiveBytes(TorchDispatchMode):
    """Books every storage an op creates; `peak` is the largest live total, `at_peak` the live set then."""

    phase: str = "setup"  # forward, backward, optimizer (set by the caller)
    where: str = ""  # "layer 3", "head" ... (set by module hooks during forward and recompute)
    live: dict = field(default_factory=dict)
    current: int = 0
    peak: int = 0
    peak_phase: str = ""
    at_peak: dict = field(default_factory=dict)
    seq: int = 0
    grads: set = field(default_factory=set)  # seq numbers of gradient storages (post-accumulate hooks)

    def __post_init__(self):
        super().__init__()

    def book(self, t: torch.Tensor, tag: str | None = None) -> None:
        """Count `t`'s storage once while it lives (views share their base's storage)."""
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        self.seq += 1
        entry = _Live(int(st.nbytes()), self.seq, tag or self._tag())
        self.live[key] = entry
        self.current += entry.nbytes
        weakref.finalize(st, self._free, key, entry.seq)
        if self.current > self.peak:
            self.peak, self.peak_phase = self.current, self.phase
            self.at_peak = dict(self.live)

    def restart_peak(self) -> None:
        """Forget the peak so far: the next one is measured from what lives now."""
        self.peak, self.peak_phase, self.at_peak = self.current, self.phase, dict(self.live)

    def _free(self, key: int, seq: int) -> None:
        entry = self.live.get(key)
        if entry is not None and entry.seq == seq:
            del self.live[key]
            self.current -= entry.nbytes

    def _tag(self) -> str:
        if self.phase == "forward":
            return f"activations:{self.where}" if self.where.startswith("layer") else \
                "logits/loss" if self.where == "head" else "activations:other"
        if self.phase == "backward" and self.where.startswith("layer"):
            return "recomputed"  # a checkpointed layer's forward, run again in backward
        return self.phase

    def mark_grad(self, t: torch.Tensor) -> None:
        """Record that `t` (a parameter's .grad) is a gradient, whichever phase made it."""
        entry = self.live.get(t.untyped_storage()._cdata)
        if entry is not None:
            self.grads.add(entry.seq)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.book(t)
        return out

    def breakdown(self) -> tuple[dict[str, int], dict[str, int]]:
        """(part -> bytes at the peak, layer -> activation bytes at the peak). Storages made in the optimizer
        phase that outlive the step are its state; the others were temporaries."""
        lasting = {e.seq for e in self.live.values()}
        parts: dict[str, int] = defaultdict(int)
        layers: dict[str, int] = defaultdict(int)
        for e in self.at_peak.values():
            tag = e.tag
            if e.seq in self.grads:
                tag = "gradients"
            elif tag == "optimizer":
                tag = "optimizer" if e.seq in lasting else "temporaries"
            elif tag in ("backward", "setup", "recomputed"):  # a checkpointed layer's rerun is transient too
                tag = "temporaries"
            if tag.startswith("activations:"):
                layers[tag.split(":", 1)[1]] += e.nbytes
                tag = "activations"
            parts[tag] += e.nbytes
        return dict(parts), dict(layers)


def track_layers(tracker: LiveBytes, layers, head=None) -> list:
    """Forward hooks telling `tracker` which decoder layer (or the LM head) is computing; returns the handles."""
    handles = []
    for i, layer in enumerate(layers):
        def enter(_m, _a, i=i):
            tracker.where = f"layer {i}"

        def leave(_m, _a, _o):
            tracker.where = ""  # between layers, and the final norm: "other"
        handles += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    if head is not None:
        handles.append(head.register_forward_pre_hook(lambda _m, _a: setattr(tracker, "where", "head")))
    return handles
