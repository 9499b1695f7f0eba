"""Scenario schema: typed, frozen config objects with their ranges.

Every section is a frozen pydantic dataclass with `extra="forbid"`, so an unknown key, a wrong type or an
out-of-range value fails at load time with the key path (see `fedsim.scenario.load`). Defaults are what a
user gets by leaving a key out; `config.yaml` in every run directory holds the fully resolved values.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

_CFG = ConfigDict(extra="forbid")

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Prob = Annotated[float, Field(ge=0, le=1)]
Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True, config=_CFG)
class ModelConfig:
    """Base model: a catalog name (see `fedsim/catalog/models.json`) or a local Hugging Face model directory."""

    name: str = "fedsim-tiny-llama"
    dtype: Dtype = "float32"
    quantization: Literal["none", "int8", "nf4"] = "none"
    # Book virtual costs as if the base were this (larger) catalog model or config, while the trained proxy
    # stays `name` (FedScale-style). None: costs of `name` itself.
    cost_as: str | None = None
    pretrain_steps: NonNegInt = 300  # only for fedsim-tiny-llama: central pre-training before federation
    # Quantizations a client that cannot hold the base at `quantization` may fall back to, tried in order
    # (virtual plane: memory and eligibility; the proxy still trains unquantized).
    fallback_quantization: tuple[Literal["int8", "nf4"], ...] = ()


@dataclass(frozen=True, config=_CFG)
class PeftConfig:
    """PEFT method applied with `peft`: LoRA (Hu et al. 2021), prompt tuning (Lester et al. 2021), prefix
    tuning (Li and Liang 2021), P-tuning (Liu et al. 2021), IA3 (Liu et al. 2022)."""

    method: Literal["lora", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3"] = "lora"
    r: PosInt = 8
    alpha: PosFloat = 16.0
    dropout: Prob = 0.0
    # LoRA and IA3 adapt these modules (IA3: None = peft's default for the architecture)
    target_modules: tuple[str, ...] | None = ("q_proj", "v_proj")
    feedforward_modules: tuple[str, ...] | None = None  # IA3: which targets scale their input (None: peft's)
    num_virtual_tokens: PosInt = 20  # prompt / prefix / P-tuning: trained virtual tokens (lengthen the sequence)
    # How LoRA is federated: standard (A and B trained and averaged); ffa (FFA-LoRA, Sun et al. 2024: A frozen at
    # its shared seeded initialisation, only B trained and sent); fedsa (FedSA-LoRA, Guo et al. 2025: both trained,
    # only A shared and averaged, B personal, kept in the client-state store); with clients of different ranks
    # (`ranks`): hetlora (Cho et al. 2024: truncate / zero-pad, norm-weighted mean), flexlora (Bai et al. 2024:
    # mean of B A, SVD back to each rank), flora (Wang et al. 2024: stacking, merged into every client's base)
    federation: Literal["standard", "ffa", "fedsa", "hetlora", "flexlora", "flora"] = "standard"
    # Each client's LoRA rank (hetlora / flexlora / flora; `r` is the server's, the largest): None (all r), a
    # table {device class: rank}, or a rule -- "memory" (the largest of rank_choices the device can hold) or
    # "compute" (rank tiers by the device's effective FLOP/s in the population). A device that cannot hold its rank
    # falls back to a smaller one of rank_choices before a fallback quantization.
    ranks: dict[str, PosInt] | Literal["memory", "compute"] | None = None
    rank_choices: tuple[PosInt, ...] | None = None  # None: the table's ranks, or r, r/2, r/4 for a rule
    # HetLoRA's rank self-pruning (Cho et al. 2024): gamma, the share of a client's top ranks it regularises with
    # pruning_lambda x ||B_tail A_tail||_F and prunes once their norm falls during its local training (0: off)
    rank_pruning: Annotated[float, Field(ge=0, lt=1)] = 0.0
    pruning_lambda: NonNegFloat = 0.01
    encoder_hidden_size: PosInt = 128  # P-tuning: the prompt encoder's MLP width


@dataclass(frozen=True, config=_CFG)
class SamplesPerClient:
    """Client dataset sizes: lognormal with this mean and log-space sigma, clipped to [min, max]."""

    mean: PosFloat = 24.0
    sigma: NonNegFloat = 0.5
    min: PosInt = 4
    max: PosInt = 512


@dataclass(frozen=True, config=_CFG)
class DataConfig:
    """Where samples come from and how they are partitioned across clients."""

    source: str = "synthetic"  # "synthetic" | a .json/.jsonl/.parquet file | a hub dataset name (online only)
    split: str = "train"
    prompt_field: str = "prompt"
    response_field: str = "response"
    label_field: str = "task"  # the column a Dirichlet partition skews over
    user_field: str = "user"  # partition "natural": one client per distinct value of this column
    # iid | dirichlet (Hsu et al. 2019: label shares ~ Dir(alpha x label prior)) | natural (one client per user)
    partition: Literal["iid", "dirichlet", "natural"] = "dirichlet"
    dirichlet_alpha: PosFloat = 0.5
    samples_per_client: SamplesPerClient = Field(default_factory=SamplesPerClient)
    eval_samples: PosInt = 256


@dataclass(frozen=True, config=_CFG)
class TrainingConfig:
    """The local step every trained client runs."""

    local_steps: PosInt = 5
    batch_size: PosInt = 8
    seq_len: Annotated[int, Field(ge=8)] = 48
    lr: PosFloat = 3e-3
    # adamw: fp32 moments (8 B per trained parameter); adamw8bit: bitsandbytes' block-wise 8-bit moments (Dettmers
    # et al. 2022, "8-bit Optimizers via Block-wise Quantization"; ~2 B; a worker without a GPU or bitsandbytes
    # trains with adamw and says so; not with runtime.engine deepspeed); sgd: no state
    optimizer: Literal["adamw", "adamw8bit", "sgd"] = "adamw"
    weight_decay: NonNegFloat = 0.0
    gradient_checkpointing: bool = False
    # The attention kernel: eager materialises the softmax scores (b x heads x s x s); sdpa (torch's fused
    # scaled_dot_product_attention, transformers' default) and flash (FlashAttention-2 on CUDA) keep only the
    # output and the log-sum-exp and recompute the scores in backward (Dao 2023); a worker without a GPU, the
    # flash_attn package or a 16-bit train dtype runs sdpa for flash and says so
    attention: Literal["eager", "sdpa", "flash"] = "sdpa"
    # full: the LM head's logits for every token, upcast to fp32, with their gradient (transformers' loss);
    # chunked: the cross-entropy fused with a frozen LM head over `loss_chunks` slices of the tokens, gradients
    # computed slice by slice in the forward (as Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024):
    # logits never whole; refused when peft trains the LM head. loss_chunks: slices of the batch's tokens (chunked)
    loss: Literal["full", "chunked"] = "full"
    loss_chunks: PosInt = 8
    # Mixed-precision master weights: with a 16-bit model, the trained parameters and their gradients are 16-bit
    # and the optimizer updates an fp32 master copy, copied back after each step (Micikevicius et al. 2018; no loss
    # scaling); False: peft's default, trained parameters in fp32 (no master copy needed). No effect on a float32
    # model; runtime.engine torch only
    master_weights: bool = False
    # FedProx (Li et al. 2020): mu/2 ||w - w_global||^2 added to every client's local objective; 0 = FedAvg
    proximal_mu: NonNegFloat = 0.0
    # FedKSeed (Qin et al. 2024, server.strategy fedkseed): K shared seeds (the paper's K = 4096) and the
    # perturbation scale eps of the two-point zeroth-order estimate
    zo_pool_size: PosInt = 4096
    zo_eps: PosFloat = 1e-3


@dataclass(frozen=True, config=_CFG)
class TracesConfig:
    """FedScale-format traces overriding the sampled speed/bandwidth and availability (see fedsim.traces)."""

    device: str | None = None  # client_device_capacity pickle
    behavior: str | None = None  # client_behave_trace pickle
    reference_forward_flops: PosFloat = 2.92e8  # FLOPs per sample of the model the trace was measured with


@dataclass(frozen=True, config=_CFG)
class HazardConfig:
    """Failure rates per hour while a client is in each phase (exponential time to failure)."""

    download: NonNegFloat = 0.0
    compute: NonNegFloat = 0.0
    upload: NonNegFloat = 0.0


@dataclass(frozen=True, config=_CFG)
class DiurnalConfig:
    """Availability that follows local time: p(t) = availability x (1 + amplitude cos(2 pi (h - peak)/24))."""

    amplitude: Annotated[float, Field(ge=0, le=1)] = 0.0
    peak_hour: Annotated[float, Field(ge=0, lt=24)] = 20.0
    timezones: dict[str, NonNegFloat] = Field(default_factory=lambda: {"0": 1.0})  # UTC offset (h) -> share


@dataclass(frozen=True, config=_CFG)
class AdversaryConfig:
    """Malicious clients (see fedsim.adversary): a fixed fraction that sends an attacked update when trained."""

    fraction: Prob = 0.0
    attack: Literal["sign_flip", "scale", "noise"] = "sign_flip"
    scale: PosFloat = 1.0  # sign_flip / scale: the factor; noise: the standard deviation


@dataclass(frozen=True, config=_CFG)
class PopulationConfig:
    """Virtual clients as data: mixtures over the catalog's device and network classes."""

    # Upper bound: beyond any real federation, and keeps every per-client count and byte total far inside int64;
    # whether this machine can hold the population's arrays is checked at load (`check_population_memory`).
    num_clients: Annotated[int, Field(gt=0, le=10**12)] = 1000
    devices: dict[str, NonNegFloat] = Field(
        default_factory=lambda: {"phone-budget": 0.3, "phone-flagship": 0.3, "laptop": 0.3, "gpu-workstation": 0.1}
    )
    networks: dict[str, NonNegFloat] | None = None  # None: each device class's own mixture from the catalog
    compute_sigma: NonNegFloat = 0.3  # lognormal spread of speed within a device class
    bandwidth_sigma: NonNegFloat = 0.5  # lognormal spread of bandwidth within a network class
    round_jitter_sigma: NonNegFloat = 0.1  # per-round lognormal noise on compute time
    dropout: Prob = 0.1  # probability a selected client fails during the round (at a uniform instant)
    hazard_per_hour: HazardConfig = Field(default_factory=HazardConfig)
    diurnal: DiurnalConfig = Field(default_factory=DiurnalConfig)
    availability: Annotated[float, Field(gt=0, le=1)] = 1.0  # probability a client is online when sampled
    catalog: str | None = None  # YAML merged over fedsim/catalog/defaults.yaml
    traces: TracesConfig = Field(default_factory=TracesConfig)
    adversaries: AdversaryConfig = Field(default_factory=AdversaryConfig)


@dataclass(frozen=True, config=_CFG)
class AsyncConfig:
    """FedBuff: `concurrency` clients in flight, aggregate every `buffer_size` arrivals, staleness-discounted."""

    concurrency: PosInt = 32
    buffer_size: PosInt = 10
    max_staleness: NonNegInt = 10  # updates staler than this are discarded (booked as waste, not trained)
    staleness_weight: Literal["constant", "inverse_sqrt", "inverse", "polynomial"] = "inverse_sqrt"
    staleness_exponent: PosFloat = 0.5  # polynomial: (1 + s)^-exponent


@dataclass(frozen=True, config=_CFG)
class OortSelection:
    """Oort's guided participant selection (Lai et al. 2021, §4); defaults are the paper's / FedScale's."""

    exploration: Prob = 0.9  # initial share of each cohort spent on clients never tried
    exploration_decay: Prob = 0.98  # per round
    exploration_min: Prob = 0.3
    straggler_penalty: NonNegFloat = 2.0  # alpha in (T / t_i)^alpha for clients slower than T
    pacer_window: PosInt = 20  # W: rounds between pacer decisions
    round_threshold: Annotated[float, Field(gt=0, le=100)] = 30.0  # percentile of durations giving T


@dataclass(frozen=True, config=_CFG)
class ServerConfig:
    """Server strategy and sync schedule (Bonawitz et al. 2019 over-selection and deadline)."""

    rounds: PosInt = 20
    clients_per_round: PosInt = 16
    over_selection: Annotated[float, Field(ge=1.0)] = 1.3
    deadline_s: PosFloat | None = None
    schedule: Literal["sync", "async"] = "sync"
    min_quorum: PosInt = 1  # sync: fewer completed updates -> the round fails, the model is unchanged
    target_loss: PosFloat | None = None  # report the virtual time at which eval loss first reaches it
    # "async" is FedBuff (Nguyen et al. 2022): `rounds` counts server aggregations.
    async_: AsyncConfig = Field(default_factory=lambda: AsyncConfig(), alias="async")
    # The client objective: fedavg (plain local training), fedprox (training.proximal_mu; Li et al. 2020),
    # scaffold (control variates; Karimireddy et al. 2020), fedkseed (zeroth-order steps from a shared pool of
    # seeds, (seed, scalar) pairs sent; Qin et al. 2024). See fedsim.strategies.
    strategy: Literal["fedavg", "fedprox", "scaffold", "fedkseed"] = "fedavg"
    # Who is asked to train: uniform among online clients; eligible (only devices that can hold the model check
    # in, as in production: Bonawitz et al. 2019); oort (Lai et al. 2021: statistical x system utility).
    selection: Literal["uniform", "eligible", "oort"] = "uniform"
    oort: OortSelection = Field(default_factory=OortSelection)
    # A client's weight in the mean: its number of samples (McMahan et al. 2017) or 1 (uniform; what DP-FedAvg's
    # sensitivity bound needs). FedBuff's staleness discount multiplies either.
    weighting: Literal["samples", "uniform"] = "samples"
    # None: 1 for sgd (FedAvg), 1 - momentum for momentum (effective rate lr / (1 - momentum) = 1, as Hsu et al.
    # 2019 keep it), 1e-2 for adagrad/adam/yogi (whose steps are ~lr per coordinate; Reddi et al. 2021 tune it).
    server_lr: PosFloat | None = None
    # Server optimizer on the mean client delta (Reddi et al. 2021): sgd (FedAvg), momentum (FedAvgM), adagrad,
    # adam, yogi; beta1/beta2/tau are the paper's defaults (0.9, 0.99, 1e-3).
    optimizer: Literal["sgd", "momentum", "adagrad", "adam", "yogi"] = "sgd"
    # How a round's updates combine: the sample-weighted mean (streaming, memory O(adapter)) or a robust rule
    # that holds the round's updates (O(cohort x adapter)): coordinate-wise median or trimmed mean (Yin et al.
    # 2018), (multi-)Krum (Blanchard et al. 2017); clip_norm bounds each update's L2 norm first (any rule).
    aggregation: Literal["mean", "median", "trimmed_mean", "krum"] = "mean"
    trim_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    krum_byzantine: NonNegInt = 1  # f: the Byzantine clients Krum's scores allow for
    krum_select: PosInt = 1  # m: multi-Krum averages the m best-scored updates (1: Krum)
    clip_norm: PosFloat | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: PosFloat = 1e-3
    eval_every: NonNegInt = 5  # 0: only initial and final evaluation
    # per-client evaluation when the global model is evaluated: up to this many of the round's trained clients
    # evaluate the model they use (the global one; FedSA-LoRA: global A with their own B) on their own held-out
    # rows (mean and spread in rounds.jsonl); synthetic data, or table data under FedSA-LoRA (20% held out)
    client_eval_clients: NonNegInt = 8
    retry_after_s: PosFloat = 60.0  # a round that finds nobody online waits this long before the next one

    @property
    def selected_per_round(self) -> int:
        """Clients a sync round selects: ceil(clients_per_round x over_selection)."""
        return math.ceil(self.clients_per_round * self.over_selection)


@dataclass(frozen=True, config=_CFG)
class DPConfig:
    """Client-level differential privacy: DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
    Recurrent Language Models"): each update clipped to `clip_norm`, Gaussian noise of std noise_multiplier x
    clip_norm on the sum (added by the server, or in shares by the clients: `noise: client`), divided by the
    expected cohort; epsilon(delta) per round from Google's dp-accounting RDP accountant."""

    enabled: bool = False
    noise_multiplier: NonNegFloat = 1.0  # z
    clip_norm: PosFloat = 0.1  # S, in L2 over the whole adapter update
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    noise: Literal["server", "client"] = "server"


@dataclass(frozen=True, config=_CFG)
class SecAggConfig:
    """Secure aggregation (Bonawitz et al. 2017): the server learns only the sum of the cohort's updates."""

    enabled: bool = False
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5  # Shamir t as a share of the cohort (U1)
    bits: Literal[32, 64] = 32  # fixed-point word: arithmetic is modulo 2^bits
    frac_bits: Annotated[int, Field(ge=0, le=48)] = 20


@dataclass(frozen=True, config=_CFG)
class PrivacyConfig:
    """Privacy mechanisms, each off by default."""

    dp: DPConfig = Field(default_factory=DPConfig)
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)


@dataclass(frozen=True, config=_CFG)
class DeepSpeedConfig:
    """runtime.engine deepspeed: how each worker's DeepSpeed engine holds the model (`fedsim.models.deepspeed_step`).

    Every worker is a DeepSpeed world of one rank, so ZeRO partitions over one rank: the stage and the offloads
    choose where the states live and which DeepSpeed code path trains, not how much one rank holds."""

    # 0: plain data parallel; 1: optimizer states partitioned (fp32 masters kept by the ZeRO optimizer); 2: and
    # gradients; 3: and parameters (the frozen base too, partitioned once per worker and gathered layer by layer)
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: Literal["none", "cpu"] = "none"  # ZeRO-Offload: optimizer states and step on the CPU (1-3)
    offload_param: Literal["none", "cpu"] = "none"  # parameters held in CPU memory (ZeRO stage 3 only)
    # ZeRO-3: tensors of at most this many elements stay whole after their first use (DeepSpeed's
    # stage3_param_persistence_threshold, its default); 0 partitions every tensor, as a large model's would be
    persistence_threshold: NonNegInt = 100_000


@dataclass(frozen=True, config=_CFG)
class RuntimeConfig:
    """Physical plane: the Ray actor pool."""

    num_workers: NonNegInt = 0  # 0: as many as the cluster spec's resources allow
    threads_per_worker: PosInt = 1
    cluster: str = "local"  # "local" or a path to a cluster YAML (see clusters/)
    max_inflight_per_worker: PosInt = 2
    # Where and how the proxy model trains (fedsim.models.device; model.dtype and model.quantization are what
    # the cost models book): auto = CUDA when the worker sees a GPU (reserve one with the cluster spec's worker
    # num_gpus, fractions included); auto dtype = bfloat16 on a GPU that has it, else float32 (CPUs run bf16
    # matmuls ~2x slower); a quantized base (bitsandbytes, CUDA only; "model": model.quantization). What a
    # worker cannot honour (a quantized base on a CPU) falls back with one line saying so.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    train_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    base_quantization: Literal["none", "int8", "nf4", "model"] = "none"
    checkpoint_every: NonNegInt = 5  # rounds between checkpoints (0: only when the invocation ends)
    # How workers on other nodes get the base model and the tokenized data: through Ray's object store (each
    # node unpacks one copy into its own cache) when Ray has several nodes or fedsim joined a cluster ("auto"),
    # always, or never (every node has the driver's paths: the same image, NFS). fedsim.runtime.shipping
    ship_files: Literal["auto", "always", "never"] = "auto"
    # A worker actor whose process dies is restarted by Ray up to worker_restarts times, and each client task it
    # held is rerun up to task_retries times (Ray's max_restarts / max_task_retries): a rerun trains the same
    # client from the same version with the same streams, so the run is identical to an unfaulted one. Beyond
    # that the run stops with a checkpoint (`--resume`).
    worker_restarts: NonNegInt = 3
    task_retries: NonNegInt = 2  # also reruns of a task that raised; after them its client is booked failed
    # Fault injection: these clients' tasks raise on the worker every time (to see a run book them failed and go
    # on, as a deployment must when one client's data or code path keeps failing)
    fail_clients: tuple[NonNegInt, ...] = ()
    # The local step's engine: torch (a torch optimizer loop) or deepspeed (deepspeed.initialize once per worker,
    # with runtime.deepspeed's ZeRO stage and offloads; float32: the same results within float rounding)
    engine: Literal["torch", "deepspeed"] = "torch"
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)


@dataclass(frozen=True, config=_CFG)
class CostsConfig:
    """Cost-model knobs that are not device or network facts."""

    transmit_dtype: Dtype = "float32"  # dense wire format of adapters, both directions
    upload_compression: Literal["none", "int8", "topk"] = "none"  # applied for real to client updates
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    grid_gco2_per_kwh: NonNegFloat | None = None  # None: the catalog's world average


@dataclass(frozen=True, config=_CFG)
class EstimateConfig:
    """Estimate mode (costs without training)."""

    # Above this many client-round rows, clients.parquet is replaced by clients_by_device.parquet.
    client_rows_limit: PosInt = 200_000


@dataclass(frozen=True, config=_CFG)
class Scenario:
    """A whole scenario; `fedsim.scenario.load` builds it from YAML plus --set overrides."""

    name: str = "scenario"
    seed: NonNegInt = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    peft: PeftConfig = Field(default_factory=PeftConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)


@dataclass(frozen=True, config=_CFG)
class WorkerResources:
    """Ray resources one worker actor reserves (fractions of a GPU are allowed)."""

    num_cpus: NonNegFloat = 1.0
    num_gpus: NonNegFloat = 0.0


@dataclass(frozen=True, config=_CFG)
class ClusterSpec:
    """Where the physical plane runs (clusters/*.yaml)."""

    name: str = "local"
    address: str | None = None  # None: start a local Ray; "auto" / "host:6379": join a running cluster (not ray://)
    num_cpus: PosInt | None = None  # local Ray only; None: all CPUs
    num_gpus: NonNegInt | None = None
    worker: WorkerResources = Field(default_factory=WorkerResources)
