"""`nextword serve | predict | demo | weights | eval | bench | finetune`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nextword.model.weights_file import WeightsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nextword", description="Next-word prediction for writers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="print the words most likely to follow a text")
    p.add_argument("text", help="the text; the words that follow it are predicted")
    p.add_argument("--partial", action="store_true",
                   help="treat a word at the end of TEXT as unfinished and complete it instead")
    p.add_argument("--n", type=int, default=3, help="number of suggestions (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _model_options(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("demo", help="type in the terminal and watch the suggestions; Tab accepts the first")
    _model_options(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("eval", help="keystroke savings and word-start accuracy on a text")
    p.add_argument("--text", type=Path, nargs="+", required=True, help="UTF-8 text file(s)")
    p.add_argument("--n", type=int, default=3, help="suggestions shown per keystroke (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    _model_options(p)
    p.set_defaults(func=_eval)

    from nextword.weights.commands import add_weights_parser
    add_weights_parser(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (WeightsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model file (default: $NEXTWORD_MODEL or the built SmolLM2-135M)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the fastest exact-enough)")
    p.add_argument("--max-context-tokens", type=int, default=1024, help="context window in tokens (default 1024)")


def _load(args: argparse.Namespace):
    from nextword.predict.predictor import Predictor
    return Predictor.load(args.model, args.device, args.dtype, max_context_tokens=args.max_context_tokens)


def _predict(args: argparse.Namespace) -> int:
    predictor = _load(args)
    text = args.text
    if not args.partial and text[-1:].isalnum():
        text += " "  # TEXT is finished: predict the next word, not a longer version of the last one
    suggestions = predictor.predict(text, args.n)
    if args.json:
        print(json.dumps([{"word": s.word, "probability": s.probability} for s in suggestions]))
    else:
        for s in suggestions:
            print(f"{s.word}\t{s.probability:.3f}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from nextword.eval.ksr import simulate
    predictor = _load(args)
    results = {}
    for path in args.text:
        text = path.read_text(encoding="utf-8")
        session = str(path)

        def predict(before: str, n: int) -> list[str]:
            return [s.word for s in predictor.predict(before, n, session=session)]

        print(f"{path}: {len(text)} characters", file=sys.stderr)
        started = time.perf_counter()
        result = simulate(predict, text, args.n, progress=True)
        results[str(path)] = {**result.summary(), "seconds": time.perf_counter() - started}
        predictor.close_session(session)
    report = {"model": str(predictor.loaded.path), "device": str(predictor.loaded.device),
              "dtype": str(predictor.loaded.dtype).removeprefix("torch."), "n": args.n, "texts": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'text':<28} {'KSR@' + str(args.n):>7} {'top-1':>6} {'top-' + str(args.n):>6} "
              f"{'ms/key p50':>10} {'word-start p50':>14}")
        for name, r in results.items():
            print(f"{Path(name).name:<28} {r['ksr']:>7.3f} {r['word_start_top1']:>6.3f} {r['word_start_topn']:>6.3f} "
                  f"{r['all_keystrokes_ms']['p50']:>10.1f} {r['word_start_ms']['p50']:>14.1f}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nextword.demo import run_demo
    return run_demo(_load(args))


if __name__ == "__main__":
    sys.exit(main())
