"""The base model: fedsim's offline tiny Llama (built once, cached) or any local Hugging Face model directory.

No weights can be downloaded here, so the default base is built from its catalog config: a byte-level BPE
tokenizer trained with `tokenizers` on the synthetic corpus, a randomly initialised Llama, and a brief central
pre-training on generic sentences (no instruction formats), so federated LoRA has something to adapt and
visibly learns the instruction tasks. The result is an ordinary HF model directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from filelock import FileLock

from fedsim import catalog
from fedsim.data.synthetic import FAMILIES, generate, pretraining_text
from fedsim.paths import cache_dir, digest
from fedsim.scenario.schema import ModelConfig

TINY = "fedsim-tiny-llama"
SPECIALS = ("<pad>", "<s>", "</s>")
_RECIPE = {"v": 3, "tokenizer_lines": 20000, "batch": 16, "seq": 64, "lr": 5e-3, "seed": 0}


def ensure_base_model(cfg: ModelConfig, log=print) -> Path:
    """Path of an HF model directory for `cfg.name`, building fedsim-tiny-llama into the cache if needed."""
    if cfg.name != TINY:
        return Path(cfg.name)
    arch = catalog.model_configs()[TINY]
    key = digest({"arch": arch, "recipe": _RECIPE, "steps": cfg.pretrain_steps})
    out = cache_dir("models") / f"{TINY}-{key}"
    with FileLock(str(out) + ".lock"):
        if not (out / "config.json").is_file():
            t0 = time.perf_counter()
            log(f"building {TINY} (pre-training {cfg.pretrain_steps} steps; cached afterwards) ...")
            _build(arch, cfg.pretrain_steps, out)
            log(f"built {TINY} in {time.perf_counter() - t0:.1f}s -> {out}")
    return out


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tasks = generate({f: 300 for f in FAMILIES}, seed=12345, name="tokenizer")
    corpus = pretraining_text(_RECIPE["tokenizer_lines"]) + tasks["prompt"] + tasks["response"]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _build(arch: dict, steps: int, out: Path) -> None:
    from fedsim.logs import quiet_libraries

    quiet_libraries()  # before transformers is imported: no progress bars on stderr (a bad input stays one line)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(_RECIPE["seed"])
    tokenizer = _train_tokenizer(arch["vocab_size"])
    cfg = {k: v for k, v in arch.items() if k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(
        arch["model_type"], **cfg, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    text = "</s>".join(pretraining_text(max(steps, 1) * 24, seed=1))
    ids = torch.tensor(tokenizer(text)["input_ids"])
    seq, batch = _RECIPE["seq"], _RECIPE["batch"]
    blocks = ids[: len(ids) // seq * seq].view(-1, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=_RECIPE["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_RECIPE["lr"], total_steps=max(steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(0, blocks.shape[0], (batch,), generator=gen)
        step_loss = model(input_ids=blocks[idx], labels=blocks[idx]).loss
        step_loss.backward()
        loss = step_loss.detach()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "fedsim_recipe.json").write_text(json.dumps({**_RECIPE, "steps": steps, "final_loss": loss.item()}))
    tmp.rename(out)
