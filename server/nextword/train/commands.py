"""The `nextword finetune` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nextword.train.data import DEFAULT_INCLUDE
from nextword.train.finetune import FinetuneOptions, finetune, print_progress
from nextword.train.lora import TARGETS

DEFAULTS = FinetuneOptions(data=[], out=Path())


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    d = DEFAULTS
    p = sub.add_parser("finetune", help="fine-tune the model on your own writing (LoRA)",
                       description="Train LoRA adapters on a person's files and write a merged model (or, with "
                       "--adapter-only, an adapter for --adapter). Several processes: "
                       "torchrun --nproc-per-node N -m nextword finetune ...")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="files or folders (searched recursively) of your writing")
    p.add_argument("--out", type=Path, required=True, help="the model (or adapter) file to write")
    p.add_argument("--base", type=Path, help="model to start from (default: $NEXTWORD_MODEL or the built SmolLM2-135M)")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help=f"file names to read in folders, repeatable (default: {' '.join(DEFAULT_INCLUDE)})")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="paths or names to leave out, repeatable (e.g. 'drafts/*')")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (default %(default)s)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha; the update is scaled by alpha/rank "
                   "(default %(default)s)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated layer names to adapt (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the data (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per sequence (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="sequences per step, over all processes (default %(default)s)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of paragraphs held out for validation (default %(default)s)")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="validations without improvement before stopping early (default %(default)s)")
    p.add_argument("--eval-every", type=int, help="steps between validations (default: once per epoch)")
    p.add_argument("--seed", type=int, default=d.seed, help="the same seed, data and options give the same "
                   "model (default %(default)s)")
    p.add_argument("--adapter-only", action="store_true",
                   help="write only the LoRA adapter (a few MB), to load with --adapter on top of the base")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--checkpoint-dir", type=Path, help="where checkpoints go (default: OUT.checkpoints)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints (default %(default)s; also after each validation)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default auto)")
    p.add_argument("--eval-text", type=Path, nargs="+", default=[],
                   help="more texts to measure before and after, e.g. general English")
    p.add_argument("--eval-chars", type=int, default=d.eval_chars,
                   help="characters of each text typed for KSR@3 (default %(default)s; ~0.15 s a key on a CPU)")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity and KSR measurements")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    p.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    opts = FinetuneOptions(
        data=args.data, out=args.out, base=args.base, include=args.include, exclude=args.exclude, rank=args.rank,
        alpha=args.alpha, lr=args.lr, epochs=args.epochs, seq_len=args.seq_len, batch_size=args.batch_size,
        val_fraction=args.val_fraction, seed=args.seed, targets=tuple(t for t in args.targets.split(",") if t),
        adapter_only=args.adapter_only, resume=args.resume, checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, patience=args.patience,
        device=args.device, eval_texts=args.eval_text, eval_chars=args.eval_chars, no_eval=args.no_eval)
    report = finetune(opts, progress=print_progress, log=lambda m: print(m, file=sys.stderr, flush=True))
    if "out" not in report:  # a torchrun worker other than the first: it only trains
        return 0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print_report(report)
    return 0


def print_report(report: dict) -> None:
    t = report["training"]
    print(f"trained {t['steps']}/{t['total_steps']} steps{' (stopped early)' if t['stopped_early'] else ''} "
          f"in {t['seconds']:.0f} s on {t['device']} x{t['processes']}; best validation loss {t['best_val_loss']:.3f}")
    if "before" not in report or "after" not in report:
        return
    print(f"{'text':<28} {'perplexity':>21} {'KSR@3':>15} {'chars':>6}")
    for name, before in report["before"].items():
        after = report["after"][name]
        print(f"{Path(name).name:<28} {before['perplexity']:>9.2f} -> {after['perplexity']:<9.2f} "
              f"{before['ksr@3']:>6.3f} -> {after['ksr@3']:<6.3f} {after['ksr_chars']:>6}")
