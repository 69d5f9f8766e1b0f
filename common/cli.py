"""``groupnets`` command line: verify, summary, list, convert — every subcommand and the exit codes.

Exit status: 0 success; 1 an equivalence bound was exceeded; 2 bad input (the message says which
file / name / option and why; no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .check import backends
from .check.train_verify import verify_train
from .check.verify import verify
from .errors import GroupnetsError
from .files.convert import FORMATS, convert, model_of, read_weights, read_weights_without_model
from .files.inspect import inspect_file
from .spec.params import count_parameters
from .spec import megvii
from .spec.registry import get_spec, list_models
from .spec.summary import summarize
from .weights.heads import infer_num_classes

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2


def _size(values: Sequence[int]) -> tuple[int, int]:
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise GroupnetsError("--size takes H or H W")


def _prepare_environment(args: argparse.Namespace) -> None:
    """Settings frameworks read at import time, so they must be set before any backend is imported; and
    no framework start-up log lines in the command's output (TF_CPP_MIN_LOG_LEVEL for what TensorFlow
    logs later; the import itself is quiet through ``backends.QUIET_IMPORTS``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    backends.QUIET_IMPORTS = True
    backend = getattr(args, "keras_backend", None)
    if backend is None and "KERAS_BACKEND" not in os.environ:
        backend = getattr(args, "default_keras_backend", None)  # a command's own default (convert: jax)
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    if "float64" in (getattr(args, "dtypes", None) or ()) or backend == "jax":
        # JAX computes float64 in float32 unless x64 mode is on before arrays are made
        os.environ.setdefault("JAX_ENABLE_X64", "1")


def _cmd_verify(args: argparse.Namespace) -> int:
    frameworks = tuple(f.strip() for f in args.frameworks.split(",") if f.strip())
    weights = None
    if args.weights and not args.models and not args.all:  # the model the file's keys and shapes fit
        weights, _ = read_weights_without_model(args.weights)
        args.models = [model_of(args.weights, weights)]
    models = list_models() if args.all else (args.models or ["shufflenet_v2_x1_0"])
    if args.weights and weights is None:
        if len(models) != 1:
            raise GroupnetsError("--weights verifies one model; name it")
        weights, source_model = read_weights(args.weights, model=models[0])
        if source_model and source_model != models[0]:
            raise GroupnetsError(f"{args.weights}: holds weights for {source_model!r}, not {models[0]!r}")
    train = args.mode == "train"
    h, w = _size(args.size or [128 if train else 224])
    batch = args.batch if args.batch is not None else (4 if train else 2)
    reports = []
    with _progress(len(models) * len(args.dtypes) * len(frameworks)) as step:
        for name in models:
            if args.mode == "train":
                report = verify_train(name, frameworks, args.dtypes, weights, (max(batch, 2), 3, h, w),
                                      args.seed, freeze=args.freeze, num_classes=args.num_classes, progress=step)
                table = report.format_table(failures_only=args.failures_only)
            else:
                classes = args.num_classes or (infer_num_classes(weights) if weights is not None else None) or 1000
                spec = get_spec(name, classes)
                report = verify(spec, frameworks, args.dtypes, weights, (batch, spec.in_channels, h, w),
                                args.seed, args.taps, progress=step)
                table = report.format_table()
            reports.append(report)
            if not args.json:
                print(table, flush=True)
    if args.json:
        print(json.dumps([{"model": name, **r.as_dict()} for name, r in zip(models, reports)], indent=2))
    return EXIT_OK if all(r.ok for r in reports) else EXIT_MISMATCH


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None] | None]:
    """A progress bar on stderr while frameworks run, only when stderr is a terminal (never in a pipe,
    a log or a test): rich, which Keras already depends on."""
    if total == 0 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("verify", total=total)
        started = False

        def step(label: str) -> None:
            nonlocal started
            bar.update(task, advance=1 if started else 0, description=label)
            started = True

        yield step


def _cmd_summary(args: argparse.Namespace) -> int:
    for name in args.models:
        print(summarize(get_spec(name, args.num_classes), _size(args.size)).format_table())
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    for name in list_models(args.pattern):
        note = megvii.DIFFERENCES.get(name)
        print(f"{name:<30}{count_parameters(get_spec(name)):>14,} params" + (f"  {note}" if note else ""))
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    if len(args.paths) not in (2, 3):
        raise GroupnetsError("convert takes [MODEL] SOURCE DESTINATION")
    model, source, destination = ([None] + args.paths)[-3:]
    with _progress(2 * 3 if args.verify else 0) as step:  # --verify: two dtypes × three frameworks
        result = convert(model, source, destination, source_format=args.from_format,
                         destination_format=args.to_format, num_classes=args.num_classes, overwrite=args.force,
                         verify=args.verify, verify_size=args.size, state_dict_key=args.state_dict, progress=step)
    print(f"{result.source} ({result.source_format}) -> {result.destination} ({result.destination_format}): "
          f"{result.model}, {result.num_classes} classes, {result.tensors} tensors, {result.parameters:,} values")
    if result.container and result.container != "a plain state_dict":
        print(f"read {result.container}")
    if result.note:
        print(result.note)
    if result.report is not None:
        print(result.report.format_table())
        return EXIT_OK if result.report.ok else EXIT_MISMATCH
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    report = inspect_file(args.file, args.from_format, state_dict_key=args.state_dict)
    print(report.to_json() if args.json else report.format_text())
    return EXIT_OK


def _add_inspect_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help="what a weight file holds: format, container, model(s), classes, dtypes")
    p.add_argument("file")
    p.add_argument("--from", dest="from_format", choices=list(FORMATS), help="read as this format")
    p.add_argument("--state-dict", metavar="KEY", help="the entry of a PyTorch training checkpoint to read")
    p.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
    p.set_defaults(func=_cmd_inspect, default_keras_backend="jax")


def _add_convert_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert a weight file between torch / canonical / keras / flax formats")
    p.add_argument("paths", nargs="+", metavar="[MODEL] SOURCE DESTINATION",
                   help="MODEL may be left out when the file's keys and shapes fit exactly one registered model")
    p.add_argument("--from", dest="from_format", choices=list(FORMATS))
    p.add_argument("--to", dest="to_format", choices=list(FORMATS))
    p.add_argument("--num-classes", type=int, help="default: inferred from fc.weight")
    p.add_argument("--force", action="store_true", help="overwrite the destination")
    p.add_argument("--state-dict", metavar="KEY",
                   help="the entry of a PyTorch training checkpoint to read (e.g. state_dict_ema); default: "
                        "the only one, or timm's plain state_dict")
    p.add_argument("--verify", action="store_true", help="re-read the output and verify across frameworks")
    p.add_argument("--size", type=int, default=64, help="input size for --verify (default 64)")
    p.add_argument("--keras-backend", choices=["tensorflow", "jax", "torch"],
                   help="Keras backend for Keras files and --verify (default: $KERAS_BACKEND, else jax)")
    # Keras files are backend-independent (keras_impl.h5_layout) and reading / writing them computes
    # nothing, so a conversion needs Keras only imported: on JAX that costs about a third of
    # TensorFlow's memory and time (268 vs 760 MiB, measured; README "Weight files and conversion").
    p.set_defaults(func=_cmd_convert, default_keras_backend="jax")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groupnets", description=__doc__.splitlines()[0],
        epilog="exit status: 0 success; 1 an equivalence bound was exceeded; 2 bad input (the message says "
               "which file / name / option and why)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("verify", help="run one weight set in every framework and compare the outputs")
    p.add_argument("models", nargs="*", help="model names (default: shufflenet_v2_x1_0)")
    p.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--frameworks", default="torch,keras,flax",
                   help="comma-separated: torch, keras, flax, numpy (the float64 oracle)")
    p.add_argument("--dtype", dest="dtypes", action="append", choices=["float32", "float64"],
                   help="repeatable; default both")
    p.add_argument("--size", type=int, nargs="+", metavar="N",
                   help="input H [W] (default 224; with --mode train 128: see --batch)")
    p.add_argument("--batch", type=int, help="default 2; with --mode train 4, so that every BatchNorm of every "
                   "model normalises at least 64 values per channel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--taps", action="store_true", help="also compare every stage output")
    p.add_argument("--weights", help="verify these weights (any format groupnets reads) instead of random ones; "
                                     "without a model name, the model the file fits")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--mode", choices=["eval", "train"], default="eval",
                   help="train: train-mode forward, gradients, one SGD step and BN buffers")
    p.add_argument("--freeze", action="store_true", help="with --mode train: freeze the backbone first")
    p.add_argument("--failures-only", action="store_true", help="with --mode train: print only failing rows")
    p.add_argument("--json", action="store_true", help="print the whole report (every pair, tap, figure, bound) as JSON")
    p.add_argument("--keras-backend", choices=["tensorflow", "jax", "torch"],
                   help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("summary", help="per-stage shapes, parameters and multiply-adds from the spec")
    p.add_argument("models", nargs="+")
    p.add_argument("--size", type=int, nargs="+", default=[224], metavar="N")
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("list", help="registered models")
    p.add_argument("pattern", nargs="?")
    p.set_defaults(func=_cmd_list)

    _add_convert_parser(sub)
    _add_inspect_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "dtypes", None) is None and args.command == "verify":
        args.dtypes = ["float32", "float64"]
    try:
        _prepare_environment(args)
        return args.func(args)
    except GroupnetsError as error:
        print(f"groupnets {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"groupnets {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
