"""The task loss every local engine trains on (`training.loss`): transformers' own, or a chunked cross-entropy
fused with the frozen LM head that never holds the whole logits tensor.

`full` is the model's forward with labels: logits for every token (b x s x vocab), upcast to float32, and their
gradient, held at once. `chunked` runs the same forward with the head given no tokens, takes the head's input
(the final hidden states, after the last norm) and computes cross-entropy and its gradient slice by slice in the
forward, as Liger-Kernel's fused linear cross-entropy does (Hsu et al. 2024, "Liger Kernel: Efficient Triton
Kernels for LLM Training"): per slice the fp32 logits exist only while their loss and the gradient w.r.t. the
slice's hidden states are computed; only that gradient (b x s x hidden, the hidden dtype) is kept for backward.
The head must be frozen (its weight gradient would need the logits' gradient once more): refused at scenario load
when peft trains it (`check`) and at run time if any of its parameters requires grad anyway.

Everything here runs unchanged on fake tensors (torch's FakeTensorMode, used to count FLOPs and peak memory): no
`.item()`, no branching on tensor values, no data-dependent shapes (the count of valid tokens stays a tensor).
"""

from __future__ import annotations

import functools

from fedsim.errors import ConfigError
from fedsim.scenario.schema import Scenario, TrainingConfig

IGNORE_INDEX = -100  # transformers' (and torch's) label of a token that is not scored
HEAD_NAMES = ("lm_head", "embed_out")  # the output projections of Hugging Face causal LMs (Llama..., GPT-NeoX)


def check(s: Scenario) -> None:
    """Refuse at load time what the chunked loss cannot train (one-line ConfigError naming the key): a trained LM
    head (peft target_modules naming it), FedKSeed's forward-only clients, and loss_chunks set where the full loss
    ignores it."""
    t = s.training
    if t.loss == "full" and t.loss_chunks != TrainingConfig().loss_chunks:
        raise ConfigError("training.loss_chunks", "is read with training.loss chunked only (it is full)")
    named = [m for m in s.peft.target_modules or () if m.rsplit(".", 1)[-1] in HEAD_NAMES]
    if t.loss == "chunked" and named:
        raise ConfigError("training.loss", f"chunked fuses the loss with a frozen LM head, but peft.target_modules "
                                           f"trains {named[0]}: use training.loss full")
    if t.loss == "chunked" and s.server.strategy == "fedkseed":
        raise ConfigError("training.loss", "chunked does not apply to FedKSeed's zeroth-order steps: they compute "
                                           "no gradients (use full)")


def fused_linear_cross_entropy(hidden, weight, bias, targets, chunks: int):
    """Mean cross-entropy of logits = hidden @ weight^T (+ bias) over the tokens whose target is not -100 (NaN
    when there is none, as torch's mean), computed over `chunks` slices of the tokens with the gradient w.r.t.
    `hidden` taken in the forward (Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024): `hidden` (n, h),
    `targets` (n,) already shifted, `weight` (vocab, h) and `bias` frozen (they get no gradient)."""
    return _fused_function().apply(hidden, weight, bias, targets, chunks)


@functools.cache
def _fused_function():
    """The torch.autograd.Function, built on first use (fedsim imports torch lazily: scenario checks need none).

    forward, per slice: logits in the hidden dtype, upcast to fp32; loss += sum(logsumexp - target logit) over
    scored tokens; d = (softmax - onehot) / n_valid on scored rows, 0 elsewhere; grad_h[slice] = d @ weight in
    the weight's dtype (what the head's own backward computes). Only grad_h is saved; backward scales it.
    """
    import torch

    class _Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, chunks):
            n = hidden.shape[0]
            valid = targets != IGNORE_INDEX
            n_valid = valid.sum()
            scale = 1.0 / n_valid.clamp(min=1).float()  # all ignored: loss 0/0 = NaN (as torch's), gradient 0
            safe = torch.where(valid, targets, torch.zeros_like(targets))
            grad_h = torch.empty_like(hidden)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            bounds = sorted({n * i // chunks for i in range(chunks + 1)})  # min(chunks, n) near-equal slices
            for start, end in zip(bounds, bounds[1:]):
                logits = torch.nn.functional.linear(hidden[start:end], weight, bias).float()
                t, v = safe[start:end, None], valid[start:end, None]
                # the log-sum-exp and the softmax in the logits' own buffer: one fp32 slice of logits at a time
                top = logits.amax(dim=-1, keepdim=True)
                picked = logits.gather(1, t)
                d = logits.sub_(top).exp_()
                z = d.sum(dim=-1, keepdim=True)
                total = total + ((top + z.log() - picked) * v).sum()
                d.div_(z)  # softmax
                d.scatter_add_(1, t, -v.float())  # minus the one-hot target where the token is scored
                d.mul_(v * scale)  # the mean over scored tokens; unscored rows get no gradient
                grad_h[start:end] = d.to(weight.dtype) @ weight
                del logits, d  # before the next slice's logits exist: one slice alive at a time
            ctx.save_for_backward(grad_h)
            return total / n_valid

        @staticmethod
        def backward(ctx, grad_out):
            (grad_h,) = ctx.saved_tensors
            return grad_h * grad_out.to(grad_h.dtype), None, None, None, None

    return _Fused


def chunked_loss(hidden, weight, bias, labels, chunks: int):
    """transformers' causal-LM loss (ForCausalLMLoss) of logits = hidden @ weight^T + bias, fused and chunked:
    labels padded with -100 on the left to the hidden length (prompt tuning's virtual tokens, as peft pads them)
    and at the end, then shifted by one, so position t is scored on the label of t + 1; mean over scored tokens."""
    import torch.nn.functional as F

    b, s, h = hidden.shape
    labels = F.pad(labels, (s - labels.shape[1], 1), value=IGNORE_INDEX)[:, 1:]
    return fused_linear_cross_entropy(hidden.reshape(b * s, h), weight, bias, labels.reshape(b * s), chunks)


def task_loss(model, input_ids, labels, cfg: TrainingConfig):
    """The loss of one batch under `cfg.loss`: `full`, the model's own (transformers' ForCausalLMLoss); `chunked`,
    the same value from `chunked_loss` on the LM head's input, its logits never whole (Liger-Kernel, Hsu et al.
    2024). `model` is a peft model or an engine wrapping one (DeepSpeed's forwards attribute lookups to it).

    The chunked loss runs the model's own forward (so peft's virtual tokens and prefixes, checkpointing and
    ZeRO-3's parameter gathering all apply) with two hooks on the LM head, both run before any other: before its
    forward, take its input (the final hidden states) and hand it an empty slice of tokens instead (no logits);
    after its forward, while the head still holds its weight (ZeRO-3 releases it in a later hook), compute the loss
    from that input. No gradient reaches the head itself (ZeRO-3's backward hooks of the head never fire).
    """
    if cfg.loss == "full":
        return model(input_ids=input_ids, labels=labels).loss
    head = model.get_output_embeddings()
    trained = [n for n, p in head.named_parameters() if p.requires_grad]
    if trained:
        raise RuntimeError(f"training.loss chunked needs a frozen LM head, but its {trained[0]} requires grad "
                           f"(use training.loss full)")
    hidden, out = [], []

    def take(module, args):
        hidden.append(args[0])
        return (args[0][..., :0, :], *args[1:])  # the head projects no token

    def fused(module, args, output):
        out.append(chunked_loss(hidden[-1], module.weight, module.bias, labels, cfg.loss_chunks))

    handles = [head.register_forward_pre_hook(take, prepend=True), head.register_forward_hook(fused, prepend=True)]
    try:
        model(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    if len(out) != 1:
        raise RuntimeError(f"training.loss chunked: the LM head ran {len(out)} times in one forward (expected once)")
    return out[0]
