"""`python -m nextword.eval.peers naive|llamacpp`: a peer language server on stdio."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nextword.eval.peers", description=__doc__)
    parser.add_argument("peer", choices=["naive", "llamacpp"])
    parser.add_argument("--model", type=Path, help="naive: nextword model file (default: the built default)")
    parser.add_argument("--gguf", type=Path, help="llamacpp: GGUF file (default: the default model's Q4_1 GGUF)")
    parser.add_argument("--device", default="cpu", help="naive: cpu or cuda (llamacpp: CPU build only)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's / all cores)")
    parser.add_argument("--n", type=int, default=3, help="suggestions per request (default 3)")
    parser.add_argument("--max-context-tokens", type=int, default=1024,
                        help="context window in tokens, as nextword's default (default 1024)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from nextword.eval.peers.adapter import serve_stdio
    if args.peer == "naive":
        def load():
            import torch

            from nextword.eval.peers.naive import NaiveBackend
            from nextword.weights.paths import default_model_path
            if args.threads:
                torch.set_num_threads(args.threads)
            return NaiveBackend(args.model or default_model_path(), args.device)
    else:
        def load():
            from nextword.eval.peers.llamacpp import LlamaCppBackend, default_gguf
            return LlamaCppBackend(args.gguf or default_gguf(), args.max_context_tokens, args.threads)
    return serve_stdio(args.peer, load, args.n, args.max_context_tokens)


if __name__ == "__main__":
    sys.exit(main())
