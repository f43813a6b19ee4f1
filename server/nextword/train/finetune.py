"""`nextword finetune`: LoRA fine-tuning on a person's own writing.

1. Read the files (train/data.py) and split off a validation part by paragraphs.
2. Measure the base model on the held-out text: perplexity and KSR@3 (`--eval-text` adds texts,
   e.g. general English to show nothing was forgotten).
3. Train LoRA adapters (train/lora.py) on the attention and MLP projections with AdamW, a short
   warm-up and cosine decay; validate after every epoch (or `eval_every` steps), keep the best
   adapters and stop early when validation loss stops improving. Checkpoints make it resumable.
4. Write the result: a merged one-file model, or with `adapter_only` a small adapter file for
   `--adapter` — both via temp file + rename. Measure again, on the written file.

Under `torchrun --nproc-per-node N -m nextword finetune ...` each process trains on its share of
every batch and DistributedDataParallel averages the gradients (gloo on CPU, nccl on CUDA); the
first process evaluates, writes the checkpoints and the result. Every run is deterministic given
`seed` and the number of processes; a resumed run continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nextword.model.adapter import Adapter, merge_adapter, save_adapter_file
from nextword.model.llama import Transformer, fused_state_dict, unfused_state_dict
from nextword.model.loading import LoadedModel, load_model, resolve_device
from nextword.model.weights_file import SOURCE_KEY, read_model_file, save_model_file
from nextword.train.data import DataError, TextData, read_training_data
from nextword.train.lora import TARGETS, add_lora, load_lora_tensors, lora_tensors
from nextword.weights.build import sha256_file
from nextword.weights.paths import default_model_path

CHECKPOINT_FILE = "last.pt"
MIN_IMPROVEMENT = 1e-4  # validation loss must drop by this much to count as better
MIN_VAL_TOKENS = 16


@dataclass
class FinetuneOptions:
    data: list[Path]
    out: Path
    base: Path | None = None  # None: the default model
    include: list[str] | None = None  # None: data.DEFAULT_INCLUDE
    exclude: list[str] = field(default_factory=list)
    rank: int = 8
    alpha: float = 16.0
    lr: float = 1e-3
    epochs: int = 4
    seq_len: int = 256  # tokens per training sequence
    batch_size: int = 8  # sequences per optimizer step, over all processes
    val_fraction: float = 0.1
    seed: int = 0
    targets: tuple[str, ...] = TARGETS
    adapter_only: bool = False
    resume: bool = False
    checkpoint_dir: Path | None = None  # None: "<out>.checkpoints" beside the output
    checkpoint_every: int = 10  # steps between checkpoints (also written after every validation)
    eval_every: int | None = None  # steps between validations; None: once per epoch
    patience: int = 2  # validations without improvement before stopping early
    device: str = "auto"
    eval_texts: list[Path] = field(default_factory=list)  # more texts to measure before and after
    eval_chars: int = 1500  # characters of each text typed for KSR (KSR is slow: a prediction per key)
    no_eval: bool = False  # skip the before/after measurements

    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.out.with_name(self.out.name + ".checkpoints")


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model and optimizer."""
    step: int = 0
    best_val_loss: float = math.inf
    best_lora: dict[str, Tensor] | None = None
    evals_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)  # validations: step, epoch, train and val loss
    done: bool = False


# progress(step, total_steps, epoch, train_loss, val_loss or None)
ProgressFn = Callable[[int, int, int, float, float | None], None]


def finetune(opts: FinetuneOptions, progress: ProgressFn | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """Fine-tune, write `opts.out` and return a report (data, training, metrics before/after)."""
    log = log or (lambda message: None)
    world = _Distributed.start(opts.device)
    try:
        report = _finetune(opts, world, progress if world.is_main else None, log if world.is_main else lambda m: None)
        world.wait_for_all()
        return report
    finally:
        world.finish()


def _finetune(opts: FinetuneOptions, world: _Distributed, progress: ProgressFn | None,
              log: Callable[[str], None]) -> dict:
    base = Path(opts.base or default_model_path())
    if opts.out.resolve() == base.resolve():
        raise ValueError(f"--out {opts.out} is the base model itself; write the fine-tune to another file")
    for name in ("rank", "epochs", "seq_len", "batch_size", "checkpoint_every", "patience"):
        if getattr(opts, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(opts, name)}")
    loaded = load_model(base, str(world.device), torch.float32)  # train in fp32
    data = read_training_data(opts.data, loaded.tokenizer, opts.val_fraction, opts.seed, opts.include,
                              opts.exclude, warn=lambda m: log(f"warning: {m}"))
    if len(data.train) <= opts.seq_len or len(data.val) <= MIN_VAL_TOKENS:
        raise DataError(f"too little text: {len(data.train)} training and {len(data.val)} validation tokens; "
                        f"need more than --seq-len ({opts.seq_len}) to train on and {MIN_VAL_TOKENS} to "
                        "validate on (lower --seq-len, raise --val-fraction or add text)")
    # Validation rows may be shorter than training ones: a small held-out part still counts.
    train, val = _sequences(data.train, opts.seq_len), _sequences(data.val, min(opts.seq_len, len(data.val) - 1))
    log(f"{len(data.files)} files: {len(data.train)} training tokens ({data.train_paragraphs} paragraphs), "
        f"{len(data.val)} validation tokens ({data.val_paragraphs} paragraphs)")
    base_sha256 = sha256_file(base)
    report: dict = {"base": {"file": base.name, "sha256": base_sha256},
                    "data": {"files": len(data.files), "skipped": data.warnings, "train_tokens": len(data.train),
                             "val_tokens": len(data.val), "train_paragraphs": data.train_paragraphs,
                             "val_paragraphs": data.val_paragraphs}}
    start_id = loaded.tokenizer.document_start_id
    eval_texts = {"held-out": loaded.tokenizer.decode(data.val[data.val != start_id].tolist())} | {
        str(p): p.read_text(encoding="utf-8") for p in opts.eval_texts}
    if world.is_main and not opts.no_eval:
        log("measuring the base model ...")
        report["before"] = evaluate(loaded, eval_texts, opts.seq_len, opts.eval_chars)

    model = loaded.model
    torch.manual_seed(opts.seed)
    add_lora(model, opts.rank, opts.alpha, tuple(opts.targets))
    params = list(lora_tensors(model).values())
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    per_step = math.ceil(opts.batch_size / world.size) * world.size  # an equal share for every process
    steps_per_epoch = math.ceil(len(train) / per_step)
    total = steps_per_epoch * opts.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total))
    state = TrainState()
    fingerprint = {"base_sha256": base_sha256, "data_sha256": _tokens_sha256(data), "processes": world.size,
                   **{k: v for k, v in dataclasses.asdict(opts).items()
                      if k in ("rank", "alpha", "lr", "epochs", "seq_len", "batch_size", "val_fraction", "seed",
                               "targets", "patience", "eval_every")}}
    fingerprint["targets"] = list(fingerprint["targets"])
    checkpoint = opts.checkpoints() / CHECKPOINT_FILE
    if opts.resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint, fingerprint, model, optimizer, scheduler)
        log(f"resuming at step {state.step}/{total} from {checkpoint}")
    elif opts.resume:
        log(f"no checkpoint in {opts.checkpoints()}; starting from the beginning")

    forward: nn.Module = _CausalLM(model)
    if world.size > 1:
        # Every process loaded the same file and seeded the same adapters: no initial broadcast needed.
        forward = nn.parallel.DistributedDataParallel(forward, init_sync=False)
    started = time.perf_counter()
    eval_every = opts.eval_every or steps_per_epoch
    while not state.done:
        epoch, index = divmod(state.step, steps_per_epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(opts.seed * 7919 + epoch))
        batch = order[torch.arange(index * per_step, (index + 1) * per_step) % len(train)]  # wraps at the end
        tokens = train[batch[world.rank::world.size]].to(world.device)
        model.train()
        logits = forward(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        state.step += 1
        train_loss = world.mean(loss.detach())
        val_loss = None
        if state.step % eval_every == 0 or state.step == total:
            val_loss = validation_loss(model, val, world)
            state.history.append({"step": state.step, "epoch": epoch + (index + 1) / steps_per_epoch,
                                  "train_loss": train_loss, "val_loss": val_loss})
            if val_loss < state.best_val_loss - MIN_IMPROVEMENT:
                state.best_val_loss, state.evals_without_improvement = val_loss, 0
                state.best_lora = {k: v.detach().clone() for k, v in lora_tensors(model).items()}
            else:
                state.evals_without_improvement += 1
            state.done = state.step == total or state.evals_without_improvement >= opts.patience
        if world.is_main and (val_loss is not None or state.step % opts.checkpoint_every == 0):
            _save_checkpoint(checkpoint, fingerprint, model, optimizer, scheduler, state)
        if progress:
            progress(state.step, total, epoch + 1, train_loss, val_loss)
    stopped_early = state.step < total
    report["training"] = {"steps": state.step, "total_steps": total, "epochs": opts.epochs,
                          "stopped_early": stopped_early, "best_val_loss": state.best_val_loss,
                          "seconds": time.perf_counter() - started, "processes": world.size,
                          "device": str(world.device), "history": state.history,
                          "lora": {"rank": opts.rank, "alpha": opts.alpha, "targets": list(opts.targets),
                                   "trainable_parameters": sum(p.numel() for p in params)}}
    if not world.is_main:
        return report
    load_lora_tensors(model, state.best_lora)
    provenance = {"base_file": base.name, "base_sha256": base_sha256, "targets": list(opts.targets),
                  "data_files": len(data.files), "train_tokens": len(data.train), "steps": state.step,
                  "lr": opts.lr, "seed": opts.seed, "best_val_loss": state.best_val_loss}
    adapter = Adapter(opts.rank, opts.alpha, loaded.config,
                      {k: v.detach().float().cpu() for k, v in lora_tensors(model).items()}, provenance)
    del model, loaded, forward, optimizer
    write_result(opts.out, base, adapter, opts.adapter_only)
    log(f"wrote {opts.out}" + (" (adapter only: use it with --adapter on the base model)" if opts.adapter_only else ""))
    report["out"] = str(opts.out)
    if not opts.no_eval:
        log("measuring the fine-tuned model ...")
        after = load_model(base, str(world.device), torch.float32, adapter=opts.out) if opts.adapter_only \
            else load_model(opts.out, str(world.device), torch.float32)
        report["after"] = evaluate(after, eval_texts, opts.seq_len, opts.eval_chars)
    return report


def write_result(out: Path, base: Path, adapter: Adapter, adapter_only: bool) -> None:
    """Write the adapter file, or the base model with the adapter merged (same dtype as the base,
    Hugging Face names, the base's tokenizer and config, the fine-tune's provenance in metadata)."""
    if adapter_only:
        save_adapter_file(out, adapter)
        return
    file = read_model_file(base)
    state = fused_state_dict(file.tensors, file.config)
    merge_adapter(state, file.config, adapter, out)
    source = {"finetuned_from": {"file": base.name, "sha256": adapter.info["base_sha256"],
                                 "source": file.metadata.get(SOURCE_KEY, "")},
              "lora": {"rank": adapter.rank, "alpha": adapter.alpha}, **adapter.info}
    save_model_file(out, file.config, unfused_state_dict(state, file.config), file.tokenizer_json,
                    json.dumps(source, sort_keys=True))


def evaluate(loaded: LoadedModel, texts: dict[str, str], seq_len: int, ksr_chars: int) -> dict:
    """Perplexity and KSR@3 on each text (KSR on its first `ksr_chars` characters, cut at a space)."""
    from nextword.eval.ksr import simulate
    from nextword.predict.predictor import Predictor

    predictor = Predictor(loaded)
    out = {}
    for name, text in texts.items():
        ids = np.array([loaded.tokenizer.document_start_id, *loaded.tokenizer.encode(text)], dtype=np.int32)
        loss = validation_loss(loaded.model, _sequences(ids, min(seq_len, len(ids) - 1)), _Distributed())
        typed = text[:ksr_chars]
        if len(text) > ksr_chars and " " in typed:
            typed = typed[: typed.rindex(" ")]
        result = simulate(lambda before, n: [s.word for s in predictor.predict(before, n, session=name)], typed, 3)
        predictor.close_session(name)
        out[name] = {"perplexity": math.exp(loss), "ksr@3": result.ksr, "ksr_chars": len(typed),
                     "word_start_top3": result.summary()["word_start_topn"]}
    return out


@torch.no_grad()
def validation_loss(model: Transformer, sequences: Tensor, world: _Distributed, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over the sequences, shared out over the processes."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    mine = sequences[world.rank::world.size]
    for i in range(0, len(mine), batch_size):
        tokens = mine[i:i + batch_size].to(world.device)
        logits = model.forward_train(tokens[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum").double().cpu()
        count += tokens[:, 1:].numel()
    summed = world.sum(torch.tensor([total.item(), float(count)], dtype=torch.float64))
    return float(summed[0] / summed[1])


class _CausalLM(nn.Module):
    """The model's training forward as a module's forward, which DistributedDataParallel wraps."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model.forward_train(tokens)


class _Distributed:
    """This process's place in a torchrun launch (one process, rank 0, when not launched so)."""

    def __init__(self, rank: int = 0, size: int = 1, device: torch.device = torch.device("cpu")):
        self.rank, self.size, self.device = rank, size, device
        self.is_main = rank == 0

    @classmethod
    def start(cls, device: str) -> _Distributed:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        dev = resolve_device(device)
        if size == 1:
            return cls(0, 1, dev)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        # The first process measures the base model while the others wait: allow a long wait.
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=2))
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    def sum(self, values: Tensor) -> Tensor:
        if self.size > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()

    def mean(self, value: Tensor) -> float:
        return float(self.sum(value.double().reshape(1))[0] / self.size)

    def wait_for_all(self) -> None:
        """Wait until every process is done: one that tears down the group while another still
        writes its output or talks to it can make that one abort (gloo: "connection closed")."""
        if self.size > 1:
            dist.barrier()

    def finish(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _sequences(ids: np.ndarray, seq_len: int) -> Tensor:
    """Token ids cut into rows of seq_len + 1: a row's inputs and their next tokens (consecutive
    rows share one token). A remainder shorter than a row is left out."""
    n = max(0, (len(ids) - 1) // seq_len)
    if n == 0:
        return torch.zeros(0, seq_len + 1, dtype=torch.long)
    return torch.from_numpy(np.stack([ids[i * seq_len: i * seq_len + seq_len + 1] for i in range(n)]).astype(np.int64))


def _warmup_cosine(total: int) -> Callable[[int], float]:
    warmup = max(1, min(20, total // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def _tokens_sha256(data: TextData) -> str:
    return hashlib.sha256(data.train.tobytes() + b"|" + data.val.tobytes()).hexdigest()


def _save_checkpoint(path: Path, fingerprint: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler, state: TrainState) -> None:
    """Write atomically: an interrupted write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"fingerprint": fingerprint, "lora": {k: v.detach().cpu() for k, v in lora_tensors(model).items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "state": dataclasses.asdict(state)}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fingerprint: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler) -> TrainState:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise DataError(f"{path}: unreadable checkpoint ({e}); delete it to start afresh") from e
    differs = {k: (saved["fingerprint"].get(k), v) for k, v in fingerprint.items() if saved["fingerprint"].get(k) != v}
    if differs:
        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differs.items())
        raise DataError(f"{path}: checkpoint was made with other settings or data ({what}); "
                        "run without --resume to start afresh")
    load_lora_tensors(model, saved["lora"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return TrainState(**saved["state"])


def print_progress(step: int, total: int, epoch: int, train_loss: float, val_loss: float | None) -> None:
    """A one-line progress bar on stderr; validation results stay on their own lines."""
    width = 30
    filled = width * step // total
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] step {step}/{total} epoch {epoch} loss {train_loss:.3f}"
    if val_loss is not None:
        line += f" val {val_loss:.3f} (ppl {math.exp(val_loss):.1f})\n"
    print(line, end="", file=sys.stderr, flush=True)
