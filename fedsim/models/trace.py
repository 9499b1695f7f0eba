"""Traced costs: one real training step of any HF causal-LM config, run on fake tensors.

`trace_step` builds the model from its config on the `meta` device, applies what fedsim's worker applies (the
quantized base's storage, peft's adapter, activation checkpointing, the attention kernel, the loss, the
optimizer), moves it into torch's `FakeTensorMode` (tensors with shapes and dtypes but no memory and no compute)
and runs two optimizer steps (forward, backward, optimizer) under `LiveBytes` (the peak of live tensor bytes and
who holds them), the first also under torch's `FlopCounterMode` (the FLOPs of every matmul and attention kernel).
A Llama-3.1-8B LoRA step traces in about 13 s on a 2-core laptop. Results are cached on disk by configuration
and library versions, and `fedsim cost` and estimate mode use a cached trace when one matches (`cached_trace`).

What the trace cannot see, it stands in for, with the same bytes: bitsandbytes' quantized linear layers
(`QuantLinear`: LLM.int8's int8 weight with one fp32 scale per row, Dettmers et al. 2022; NF4 with double
quantization, Dettmers et al. 2023: 4-bit codes, an 8-bit absmax per 64 weights and an fp32 constant per 256 of
those), its 8-bit AdamW (`Adam8bitState`: two uint8 moments and fp32 absmax per 256 values), and
FlashAttention-2 (torch's fused CPU attention kernel has its memory and FLOP signature: output and log-sum-exp
saved, scores recomputed in backward), and the kernel CUDA picks for sdpa (`_cuda_attention_kernels`).
"""

from __future__ import annotations

import contextlib
import json

import torch

from fedsim.costs.traced import TraceResult, TraceSetup, cached_trace, trace_path


def trace(setup: TraceSetup, refresh: bool = False) -> TraceResult:
    """The trace of `setup`, from the cache or traced now (and cached)."""
    hit = None if refresh else cached_trace(setup)
    if hit is not None:
        return hit
    from fedsim.atomic import atomic_write_text

    result = trace_step(setup)
    atomic_write_text(trace_path(setup), json.dumps(result.as_dict()))
    return result


def trace_step(setup: TraceSetup) -> TraceResult:
    """Trace `setup`'s step on fake tensors (two steps: see `_memory_pass`); see the module docstring."""
    import time

    from torch._subclasses.fake_tensor import FakeTensorMode

    from fedsim.logs import quiet_libraries
    from fedsim.models.standins import register_cpu_attention_flops

    quiet_libraries()
    register_cpu_attention_flops()
    start = time.perf_counter()
    model = build_model(setup, device="meta")
    with FakeTensorMode(allow_non_fake_inputs=True), _masks_as_on_real_tensors(), \
            _cuda_attention_kernels(setup):
        materialize(model, "cpu")
        parts, layers, peak, phase, (forward, total) = _memory_pass(model, setup)
    return TraceResult(peak_bytes=int(peak), parts=parts, layers=layers, peak_phase=phase, flops=float(total),
                       forward_flops=float(forward), seconds=time.perf_counter() - start)


def build_model(setup: TraceSetup, device: str = "meta"):
    """The PEFT-wrapped causal LM of `setup`, as fedsim's worker prepares it (`fedsim.models.local`), with
    stand-ins for a quantized base; on `meta` (for tracing) or `cpu` (random weights, for measuring)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from fedsim.models.local import enable_checkpointing
    from fedsim.models.shapes import freeze_for_federation, hf_config, peft_config

    hf = hf_config(setup.config)
    hf.use_cache = False
    attn = "eager" if setup.training.attention == "eager" else "sdpa"  # flash: the fused kernel's signature
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf, dtype=getattr(torch, setup.dtype), attn_implementation=attn)
    if setup.training.gradient_checkpointing:
        enable_checkpointing(model)
    quantized = setup.quantization != "none"
    # peft adds an fp32 adapter to a bitsandbytes layer whatever autocast says (its weight is not a float)
    model = get_peft_model(model, peft_config(setup.peft),
                           autocast_adapter_dtype=quantized or not setup.training.master_weights)
    freeze_for_federation(model, setup.peft)
    if quantized:
        from fedsim.models.standins import quantize_linears

        # peft's prepare_model_for_kbit_training (which the worker calls before adding the adapter) casts every
        # 16-bit parameter of the base left unquantized -- norms, embeddings, the LM head -- to fp32, and makes
        # the inputs require grad
        quantize_linears(model, setup.quantization)
        for name, p in model.named_parameters():
            if "lora_" not in name and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.to(torch.float32)
        if setup.training.gradient_checkpointing:
            model.enable_input_require_grads()
    model.train()
    return model


def _cuda_attention_kernels(setup: TraceSetup):
    """sdpa's kernels as a CUDA GPU picks them, which the trace stands for: the fused ones (flash, memory-
    efficient: output and log-sum-exp kept) take fp32 inputs only without grouped-query attention, so fp32
    grouped-query attention -- an fp32 model, or a quantized base's fp32 residual stream -- runs torch's math
    kernel, which keeps the full softmax. The CPU's fused kernel would take it and hide that cost."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = setup.config
    grouped = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) < cfg["num_attention_heads"]
    fp32 = setup.dtype == "float32" or setup.quantization != "none"
    sdpa = setup.training.attention == "sdpa"  # FlashAttention-2 casts fp32 inputs to 16 bits and stays fused
    cuda = setup.device == "cuda"  # a trace standing for a CPU run keeps the CPU's own choice
    return sdpa_kernel(SDPBackend.MATH) if cuda and sdpa and grouped and fp32 else contextlib.nullcontext()


@contextlib.contextmanager
def _masks_as_on_real_tensors():
    """transformers takes fake tensors for `torch.compile` tracing and then assumes the worst: packed sequences
    and a causal mask it may not skip, so sdpa would get a full mask (and grouped-query keys repeated). Real,
    unpadded training batches (positions 0..s-1, as many keys as queries) get neither: sdpa's `is_causal`, no
    mask. The trace must see what a real step does, so for its duration those two checks answer as on real
    tensors."""
    from transformers import masking_utils

    real_skip = getattr(masking_utils, "_ignore_causal_mask_sdpa", None)

    def skip(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size=None):
        if padding_mask is None and q_length == kv_length and (local_attention_size is None or
                                                                kv_length < local_attention_size):
            return True
        return real_skip(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size)

    patches = {"find_packed_sequence_indices": lambda position_ids: None,  # the batch is not packed
               "_ignore_causal_mask_sdpa": skip}
    real = {name: getattr(masking_utils, name) for name in patches if hasattr(masking_utils, name)}
    for name in real:
        setattr(masking_utils, name, patches[name])
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(masking_utils, name, fn)


def materialize(model, device: str) -> None:
    """Give every parameter and buffer of a `meta` model uninitialised storage on `device` (fake storage inside
    FakeTensorMode), keeping shared ones shared (tied embeddings). `Module.to_empty` would untie them, and
    refuses parameters something holds a weak reference to (peft's prefix encoder)."""
    new: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table, wrap in ((module._parameters, True), (module._buffers, False)):
            for name, t in list(table.items()):
                if t is None:
                    continue
                if id(t) not in new:
                    empty = torch.empty_like(t, device=device)
                    new[id(t)] = torch.nn.Parameter(empty, requires_grad=t.requires_grad) if wrap else empty
                table[name] = new[id(t)]


def _decoder_layers(model):
    base = model.get_base_model()
    inner = getattr(base, "model", base)
    return list(getattr(inner, "layers", []))


def _memory_pass(model, setup: TraceSetup):
    """Two optimizer steps under `LiveBytes`, the first also under FlopCounterMode: the FLOPs (forward, whole
    step) are the first's, the peak and its parts the second's -- it holds the optimizer state a client's later
    steps hold, and runs every op as the kernels do (the flop counter decomposes a few into several ops)."""
    from fedsim.models.memtrack import LiveBytes, track_layers

    step = make_step(model, setup)  # made before the tracker: its fp32 masters are optimizer state, booked below
    tracker = LiveBytes()
    for m in step.lm.master or []:
        tracker.book(m, "optimizer")
    for name, p in model.named_parameters():  # adapter weights, trained or not (FFA-LoRA's A), are "trainable"
        tracker.book(p, "trainable" if p.requires_grad or "lora_" in name else "weights")
    for b in model.buffers():
        tracker.book(b, "weights")
    trained = [p for p in model.parameters() if p.requires_grad]
    hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.mark_grad(p.grad)) for p in trained]
    hooks += track_layers(tracker, _decoder_layers(model), model.get_base_model().get_output_embeddings())
    t = setup.training
    flops = []
    with contextlib.ExitStack() as cleanup, tracker:
        cleanup.callback(lambda: [h.remove() for h in hooks])
        ids = torch.zeros(t.batch_size, t.seq_len, dtype=torch.long)
        for i in range(2):
            if i == 1:  # the peak is the second step's: FlopCounterMode decomposes some ops (silu_backward)
                tracker.restart_peak()
            with _flops() if i == 0 else contextlib.nullcontext() as counter:
                tracker.phase, tracker.where = "forward", ""
                loss = step.loss(ids, ids)
                if counter is not None:
                    flops.append(counter.get_total_flops())
                tracker.phase, tracker.where = "backward", ""
                _step(step, loss, tracker)
                del loss
            if counter is not None:
                flops.append(counter.get_total_flops())
    parts, layers = tracker.breakdown()
    return parts, layers, tracker.peak, tracker.peak_phase, (float(flops[0]), float(flops[1]))


def _flops():
    """torch's FlopCounterMode counting the whole step only: its per-module tracking is off, as its backward
    hooks would keep tensors alive and distort the memory measured in the same pass."""
    from torch.utils.flop_counter import FlopCounterMode

    class _Whole:
        parents = ("Global",)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _Whole()
    return counter


def _step(step, loss, tracker) -> None:
    """`TorchStep.step` with the tracker told when the optimizer runs."""
    opt_step = step.opt.step

    def tagged(*args, **kwargs):
        tracker.phase = "optimizer"
        for m in step.lm.master or []:  # the fp32 masters' gradients, made from the 16-bit ones
            if m.grad is not None:
                tracker.mark_grad(m.grad)
        return opt_step(*args, **kwargs)

    step.opt.step = tagged
    try:
        step.step(loss)
    finally:
        del step.opt.step


def make_step(model, setup: TraceSetup):
    """The worker's local step (`fedsim.models.local.TorchStep`: its loss, backward, optimizer and fp32 masters)
    on `model`, keeping the model's weights; 8-bit AdamW's state is stood in for where bitsandbytes cannot run."""
    from fedsim.models.local import TorchStep, local_model
    from fedsim.models.standins import Adam8bitState

    step = TorchStep(local_model(model, "cpu", setup.training.master_weights), setup.training, None)
    if setup.training.optimizer == "adamw8bit" and type(step.opt).__module__.startswith("torch"):
        step.opt = Adam8bitState(step.targets, lr=setup.training.lr)
    return step

