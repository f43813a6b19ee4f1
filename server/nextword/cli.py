"""`nextword serve | predict | explain | demo | weights | eval | bench | finetune`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nextword.model.weights_file import WeightsError
from nextword.predict.text import as_finished


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

    p = sub.add_parser("explain", help="the likeliest next words and the context words the model attended to")
    p.add_argument("text", help="the text; the words that follow it are predicted and explained")
    p.add_argument("--png", type=Path, help="also write a heatmap of the attention over the context")
    p.add_argument("--layers", type=int, nargs="+", metavar="L",
                   help="layers to average, 0-based, negative from the end (default: the last quarter)")
    p.add_argument("--head", type=int, help="one attention head (default: the mean of all heads)")
    p.add_argument("--n", type=int, default=5, help="number of suggestions and of attended words (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _model_options(p)
    p.set_defaults(func=_explain)

    p = sub.add_parser("serve", help="run the language server (on stdio unless --tcp or --ws)")
    transport = p.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk LSP on stdin/stdout (the default)")
    transport.add_argument("--tcp", metavar="HOST:PORT", help="listen for one client on a TCP port")
    transport.add_argument("--ws", metavar="HOST:PORT", help="listen for one client on a WebSocket")
    p.add_argument("--log-file", type=Path, help="write the log here instead of stderr")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level (default INFO)")
    _model_options(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="type in the terminal and watch the suggestions; Tab accepts the first")
    _model_options(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("eval", help="keystroke savings and word-start accuracy on texts, nextword against its peers")
    p.add_argument("--text", type=Path, nargs="+", required=True, help="UTF-8 text file(s)")
    p.add_argument("--predictors", help="comma-separated, from nextword, presage, word-based, frequency "
                   "(default: all that can run here)")
    p.add_argument("--n", type=int, default=3, help="suggestions shown per keystroke (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    p.add_argument("--out", type=Path, help="also write the JSON to this file, and a bar chart next to it (.png)")
    p.add_argument("--no-speculate", action="store_true",
                   help="don't use the pause after each keystroke to prepare the next word")
    p.add_argument("--start", type=int, default=0, help="evaluate from this character of each text (default 0)")
    p.add_argument("--chars", type=int, help="evaluate only this many characters of each text (default: all)")
    p.add_argument("--cache-model", default="document", choices=["off", "document", "workspace"],
                   help="which words the cache model counts (default document; see README)")
    _model_options(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser("lsp", help="language server latency over stdio while typing a corpus text")
    p.add_argument("--text", type=Path, nargs="+", required=True, help="UTF-8 text file(s); the first "
                   "--context-chars characters are the context, the following ones are typed")
    p.add_argument("--chars", type=int, default=600, help="characters to type (default 600)")
    p.add_argument("--context-chars", type=int, default=6000,
                   help="characters of the text opened before typing starts (default %(default)s)")
    p.add_argument("--n", type=int, default=3, help="suggestions per request (default 3)")
    p.add_argument("--pace-ms", type=float, default=120.0,
                   help="milliseconds between keystrokes in the paced run (default %(default)g: a fast typist)")
    p.add_argument("--out", type=Path, default=Path("results/bench-lsp.json"), help="JSON report (default %(default)s)")
    p.add_argument("--model", type=Path, help="model file for the server (default: its default)")
    p.add_argument("--inline", action="store_true",
                   help="also ask for inline completion at every keystroke, as VS Code does, and time it")
    p.set_defaults(func=_bench_lsp)
    p = bench.add_parser("compare", help="nextword against the naive and llama.cpp peer servers, same client and texts")
    p.add_argument("--text", type=Path, nargs="+", required=True, help="UTF-8 text file(s), as for `bench lsp`")
    p.add_argument("--servers", default="nextword,naive,llamacpp",
                   help="comma-separated servers to run (default %(default)s)")
    p.add_argument("--chars", type=int, default=600, help="characters typed per text (default 600)")
    p.add_argument("--naive-chars", type=int, default=40, help="characters typed per text for the naive "
                   "server, which recomputes the whole context per request (seconds each; default 40)")
    p.add_argument("--n", type=int, default=3, help="suggestions per request (default 3)")
    p.add_argument("--pace-ms", type=float, default=120.0,
                   help="milliseconds between keystrokes in the paced runs (default %(default)g: a fast typist)")
    p.add_argument("--device", default="cpu", help="passed to the servers: cpu or cuda (default cpu; the "
                   "llama.cpp peer is a CPU build)")
    p.add_argument("--model", type=Path, help="model file for nextword and the naive server (default: theirs)")
    p.add_argument("--out", type=Path, default=Path("results/bench.json"), help="JSON report (default %(default)s)")
    p.add_argument("--plot", type=Path, default=Path("results/bench.png"),
                   help="latency CDF, PNG (default %(default)s; needs the `plot` extra)")
    p.add_argument("--no-model-bench", action="store_true", help="skip the bandwidth and decode-step measurement")
    p.set_defaults(func=_bench_compare)
    p = bench.add_parser("model", help="memory read bandwidth and the model's decode step against its floor")
    p.add_argument("--context-tokens", type=int, default=1500, help="cached context length (default 1500)")
    p.add_argument("--repeats", type=int, default=15, help="timed repetitions per step (default 15)")
    p.add_argument("--text", type=Path, help="text for the context (default: built-in prose, repeated)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _model_options(p)
    p.set_defaults(func=_bench_model)

    from nextword.weights.commands import add_weights_parser
    add_weights_parser(sub)
    from nextword.train.commands import add_finetune_parser
    add_finetune_parser(sub)

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
    p.add_argument("--adapter", type=Path, help="a LoRA adapter from `nextword finetune --adapter-only`, "
                   "merged into the model while loading")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, or int8 (int8 weights and integer products: less "
                   "memory, faster steps on CPUs without bf16) (default: bfloat16 where the hardware "
                   "computes it, else int8 on x86 CPUs and float32 elsewhere; training: float32)")
    p.add_argument("--max-context-tokens", type=int, default=1024, help="context window in tokens (default 1024)")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's choice; 1 is "
                   "steadier when other programs keep the cores busy)")


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)


def _load(args: argparse.Namespace):
    from nextword.predict.predictor import Predictor
    _set_threads(args)
    return Predictor.load(args.model, args.device, args.dtype, args.adapter, max_context_tokens=args.max_context_tokens)


def _predict(args: argparse.Namespace) -> int:
    predictor = _load(args)
    suggestions = predictor.predict(args.text if args.partial else as_finished(args.text), args.n)
    if args.json:
        print(json.dumps([{"word": s.word, "probability": s.probability} for s in suggestions]))
    else:
        for s in suggestions:
            print(f"{s.word}\t{s.probability:.3f}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from nextword.predict.explain import explain, save_heatmap
    predictor = _load(args)
    e = explain(predictor, as_finished(args.text), args.n, args.layers, args.head, top_words=args.n)
    if args.png:
        try:
            save_heatmap(e, args.png)
        except ImportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({"words": [{"word": s.word, "probability": s.probability} for s in e.suggestions],
                          "layers": e.layers, "head": e.head,
                          "attended": [{"word": w.word, "offset": w.start, "share": w.weight} for w in e.attended]}))
        return 0
    for s in e.suggestions:
        print(f"{s.word}\t{s.probability:.3f}")
    heads = "mean of all heads" if e.head is None else f"head {e.head}"
    layers = f"layer{'s' if len(e.layers) > 1 else ''} {_ranges(e.layers)}"
    print(f"\nattended most ({layers}, {heads}; the document-start token left out):")
    for w in e.attended:
        print(f"{w.word}\t{w.weight:.3f}")
    if args.png:
        print(f"\nheatmap: {args.png}")
    return 0


def _ranges(numbers: list[int]) -> str:
    """[22, 23, 24, 29] -> "22-24, 29"."""
    runs: list[list[int]] = []
    for x in numbers:
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _eval(args: argparse.Namespace) -> int:
    from nextword.eval.compare import compare, make_contenders, markdown_table, parse_predictors, read_texts, write_plot

    def load_nextword():
        predictor = _load(args)
        predictor.cache_model = args.cache_model
        return predictor

    texts = read_texts(args.text, args.start, args.chars)
    contenders = make_contenders(parse_predictors(args.predictors), args.n, load_nextword,
                                 speculate=not args.no_speculate)
    report = {"start": args.start, "chars": args.chars, "cache_model": args.cache_model,
              **compare(contenders, texts, args.n)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        write_plot(report, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else markdown_table(report))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    from nextword.lsp.server import server
    from nextword.lsp.settings import Settings
    _set_threads(args)
    logging.basicConfig(filename=args.log_file, level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # pygls logs every message body at INFO
        logging.getLogger("pygls").setLevel(logging.WARNING)
    server.settings = Settings(model_path=str(args.model) if args.model else None, device=args.device,
                               adapter_path=str(args.adapter) if args.adapter else None,
                               dtype=args.dtype, max_context_tokens=args.max_context_tokens)
    if args.tcp or args.ws:
        host, _, port = (args.tcp or args.ws).rpartition(":")
        serve = server.serve_tcp if args.tcp else server.serve_ws
        return serve(host or "127.0.0.1", int(port))
    return server.serve_stdio()


def _bench_lsp(args: argparse.Namespace) -> int:
    from nextword.eval.bench_lsp import print_report, run_bench
    command = [sys.executable, "-m", "nextword", "serve", "--log-level", "WARNING"]
    if args.model:
        command += ["--model", str(args.model)]
    reports = []
    for path in args.text:
        reports.append(run_bench(path, command, args.chars, args.n, inline=args.inline,
                                 context_chars=args.context_chars, pace_ms=args.pace_ms))
        print_report(reports[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=2))
    return 0


def _model_bench_report(model: Path | None, device: str, dtype: str | None, context_tokens: int, repeats: int,
                        text: str | None) -> dict:
    from nextword.eval.bench_compare import llamacpp_missing
    from nextword.eval.bench_model import decode_step, llamacpp_decode_step, memory_bandwidth_gbs
    from nextword.weights.paths import default_model_path
    bandwidth = memory_bandwidth_gbs(device if device != "auto" else "cpu")
    report = decode_step(model or default_model_path(), device, dtype, context_tokens, repeats=repeats, text=text,
                         bandwidth_gbs=bandwidth)
    if llamacpp_missing() is None:
        from nextword.eval.peers.llamacpp import default_gguf
        cpu_bandwidth = bandwidth if report["device"] == "cpu" else memory_bandwidth_gbs("cpu")
        report["llamacpp"] = llamacpp_decode_step(default_gguf(), context_tokens, repeats, text, cpu_bandwidth)
    return report


def _bench_model(args: argparse.Namespace) -> int:
    from nextword.eval.bench_model import print_model_report
    _set_threads(args)
    text = args.text.read_text(encoding="utf-8") if args.text else None
    report = _model_bench_report(args.model, args.device, args.dtype, args.context_tokens, args.repeats, text)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_model_report(report)
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    from nextword.eval.bench_compare import SERVERS, markdown_table, plot_cdf, run_compare, write_report
    from nextword.eval.bench_model import print_model_report
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := [s for s in servers if s not in SERVERS]:
        raise ValueError(f"unknown server(s) {', '.join(unknown)} (expected some of {', '.join(SERVERS)})")
    report = run_compare(args.text, servers, args.chars, args.naive_chars, args.n, args.device, args.model,
                         args.pace_ms)
    if not args.no_model_bench:
        context = args.text[0].read_text(encoding="utf-8")
        report["model"] = _model_bench_report(args.model, args.device, None, 1500, 15, context)
        print_model_report(report["model"])
    write_report(report, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        plot_cdf(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    print(f"\nMachine: {report['machine']['cpu']} ({report['machine']['cores']} cores), device {args.device}; "
          "milliseconds unless MB, ratios are peer / nextword.\n")
    print(markdown_table(report))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nextword.demo import run_demo
    return run_demo(_load(args))


if __name__ == "__main__":
    sys.exit(main())
