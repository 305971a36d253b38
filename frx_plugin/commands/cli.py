"""The ``frx`` command: argument parsing and :func:`main`; each command's work is in its module of :mod:`frx_plugin.commands`.

Plugins add subcommands through the ``frx_register_commands`` hook (:mod:`frx_plugin.commands.registry`).

The arguments are parsed before torch, Lightning or any plugin module is imported: frx's own
commands are parsed without loading a plugin at all; the plugins' entry points (which only name
their hooks) are loaded when the command line names another command, or none. So ``--help``,
``--version`` and an option error answer at once, and a Ctrl-C at any moment is one line (exit code 130).
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from frx_plugin import DISTRIBUTION, __version__
from frx_plugin.commands.common import (
    Interrupted,
    attribute_list,
    check_output_file,
    check_output_folder,
    command_line,
    describe_kept,
    forget_outputs,
    ignore_signals,
    open_model_and_probe,
    progress_bar,
    signal_received,
    stop_on_signals,
    watched_folders,
)
from frx_plugin.commands.messages import end_progress_line
from frx_plugin.commands.two_stage_options import (
    add_two_stage_options,
    check_two_stage_options,
    format_recovery_table,
    labelling_estimators,
    two_stage_config,
)

#: frx's own subcommands (a plugin cannot register these names).
CORE_COMMANDS = ("analyze", "explain", "benchmark", "decode", "report", "plugins")

#: Failures a command answers with one line and exit code 2: bad input or options, a missing file or
#: module, a place it cannot write (a full disk, no permission, a read-only filesystem), a failed run.
#: Any other exception is a bug: its traceback is printed, then a line asking to report it (exit code 1).
EXPECTED_ERRORS = (OSError, ValueError, KeyError, RuntimeError, MemoryError)
BUG_HINT = ("this is a bug in frx or in a plugin, not a mistake in the input; please report it on the project's issue tracker "
            "with the command line and the traceback above")

#: The AnalysisConfig fields that frx analyze's options set, and the options.
_CONFIG_OPTIONS = {"n_folds": "--folds", "n_bootstrap": "--bootstrap", "fmr": "--fmr", "C": "--C",
                   "min_class_samples": "--min-class-samples", "head": "--head"}


def _analysis_config(**fields: Any):
    """The AnalysisConfig of frx analyze's options; a value it refuses is a ValueError that also names the option."""
    from frx_plugin.passes import AnalysisConfig

    try:
        return AnalysisConfig(**fields)
    except ValueError as exc:
        text = str(exc)
        option = next((flag for name, flag in _CONFIG_OPTIONS.items() if text.startswith((f"{name} ", f"{name}:"))), None)
        raise ValueError(f"{text} (option {option})" if option else text) from None


def _analyze(args: argparse.Namespace) -> int:
    import csv

    from frx_plugin.commands.analyze import ANALYSIS_FILE, CSV_COLUMNS, analyze, format_differentials_table, format_leakage_table, leakage_rows
    from frx_plugin.specs import probe_with_kinds

    args.probe = probe_with_kinds(args.probe, args.kinds)
    attributes = attribute_list("--attributes", args.attributes)
    config = _analysis_config(n_folds=args.folds, n_bootstrap=args.bootstrap, seed=args.seed, fmr=args.fmr, head=args.head, C=args.C,
                              min_class_samples=args.min_class_samples, differentials=not args.no_differentials,
                              differential_curves=not args.no_differentials)
    if (args.embeddings is None) == (args.backbone is None):
        raise ValueError("pass --embeddings FILE or --backbone SPEC (one of them)")
    if args.embeddings is not None and (args.probe or args.pairs or args.estimator or args.counterfactuals != "off"):
        raise ValueError("--probe, --pairs, --estimator and --counterfactuals go with --backbone; an embedding file is analysed as it is")
    check_two_stage_options(args, args.backbone is not None)
    from frx_plugin.commands.analyze import TWO_STAGE_FILES

    check_output_folder(args.out, "--out", (ANALYSIS_FILE, *(TWO_STAGE_FILES if args.two_stage else ())), overwrite=args.overwrite)
    if args.embeddings is not None:
        report = analyze(args.embeddings, attributes=attributes, config=config, out_dir=args.out, progress=progress_bar(),
                         with_verification=not args.no_verification)
    else:
        from frx_plugin.probe import select_attributes

        def check(probe) -> None:  # an unknown attribute is named before the model is opened (when the probe set is given)
            if attributes is not None:
                select_attributes(probe, attributes)

        model, probe = open_model_and_probe(args.backbone, args.probe, args.pairs, labelling_estimators(args.estimator), progress_bar(),
                                            check=check)
        report = analyze(model, probe, attributes=attributes, config=config, out_dir=args.out, model_name=args.backbone,
                         with_verification=not args.no_verification, progress=progress_bar(), counterfactuals=args.counterfactuals,
                         two_stage=two_stage_config(args, args.seed, args.bootstrap))
    for message in report.warnings:
        print(f"frx analyze: warning: {message}", file=sys.stderr)
    if args.format == "json":
        print((Path(args.out) / "analysis.json").read_text(encoding="utf-8"))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(leakage_rows(report))
    else:
        print(format_leakage_table(report))
        for table in (format_differentials_table(report), format_recovery_table(report.recovery)):
            if table:
                print()
                print(table)
        print(f"wrote {Path(args.out) / ANALYSIS_FILE}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from frx_plugin.commands.benchmark import run_benchmark
    from frx_plugin.commands.common import check_count

    check_count("--bootstrap", args.bootstrap, 0)
    check_two_stage_options(args, bool(args.backbone))
    document = run_benchmark(
        args.backbone or (), args.probe, pairs=args.pairs, embedding_files=args.embeddings or (),
        estimators=labelling_estimators(args.estimator), out_dir=args.out, overwrite=args.overwrite, n_bootstrap=args.bootstrap,
        seed=args.seed, command=command_line(), progress=progress_bar(), two_stage=two_stage_config(args, args.seed, args.bootstrap),
    )
    print((Path(args.out) / "benchmark.md").read_text(encoding="utf-8"))
    files = list(document["files"])
    if not args.no_report:
        from frx_plugin.commands.report import write_report

        files.append(str(write_report(args.out, command=command_line())))
    print("wrote " + ", ".join(files))
    return 1 if any(row.get("error") for row in document["backbones"]) else 0


def _report(args: argparse.Namespace) -> int:
    from frx_plugin.commands.report import REPORT_FILE, write_report

    target = Path(args.out) if args.out is not None else Path(args.folder) / REPORT_FILE
    check_output_file(target, "--out" if args.out is not None else None, overwrite=args.overwrite)
    path = write_report(args.folder, out=target)  # the command that made the results is the one the files record
    print(f"wrote {path}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from frx_plugin.commands.registry import plugin_commands
    from frx_plugin.plugins import backbones, estimators, failed_plugins, get_plugin_manager, probe_sets

    commands = plugin_commands(reserved=CORE_COMMANDS)  # a plugin taking one of frx's own names is refused here too
    pm = get_plugin_manager()
    print("plugins:")
    for name, plugin in pm.list_name_plugin():
        print(f"  {name:<20} {getattr(plugin, '__name__', type(plugin).__name__)}")
    for name, reason in failed_plugins().items():
        print(f"  {name:<20} NOT LOADED: {reason}")
    kinds = (("backbones (--backbone KIND[:ARGUMENT])", backbones()), ("probe sets (--probe NAME[:ARGUMENT])", probe_sets()),
             ("estimators (--estimator KIND[:ARGUMENT])", estimators()))
    for title, registry in kinds:
        print(f"{title}:")
        for reg in registry.values():
            print(f"  {reg.name:<20} {reg.description}")
    print("commands (frx COMMAND):")
    for command in commands.values():
        print(f"  {command.name:<20} {command.description}")
    return 0


def _output_options(parser: argparse.ArgumentParser) -> None:
    """--verbose and --quiet, which every command takes."""
    parser.add_argument("--verbose", action="store_true", help="show every warning and library message as it comes (default: frx's "
                        "own warnings, one line each; third-party notices left out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def _model_options(parser: argparse.ArgumentParser) -> None:
    """--backbone, --probe, --pairs, --estimator (see frx_plugin.specs)."""
    parser.add_argument("--backbone", default=None, metavar="SPEC",
                        help="a model: insightface:FILE.onnx, frx:frx-demo/backbone.safetensors, torch:pkg.mod:factory@w.safetensors "
                             "(frx plugins lists the kinds)")
    parser.add_argument("--probe", default=None, metavar="SPEC",
                        help="with --backbone: the probe set, NAME[:ARGUMENT][,KEY=VALUE...] (synthetic, celeba:DIR, image-folder:DIR,csv_path=F); "
                             "default: the synthetic one")
    parser.add_argument("--pairs", default=None, metavar="FILE",
                        help="with --backbone: a verification file (lfw.bin, cfp_fp.bin, ...), judged on its listed pairs")
    parser.add_argument("--estimator", action="append", default=None, metavar="SPEC",
                        help="with --backbone: read attributes off the probe images, e.g. insightface:genderage.onnx (repeatable)")
    parser.add_argument("--kinds", default=None, metavar="NAME:KIND;...",
                        help="with --probe image-folder:...: each CSV column's kind (binary, categorical, continuous), e.g. "
                             "'age:continuous;glasses:binary' (the probe spec's kinds= option)")


def _add_analyze(sub) -> None:
    analyze = sub.add_parser("analyze", help="leakage of every attribute in an embedding-set file, or of a model on a probe set")
    analyze.add_argument("--embeddings", default=None,
                         help="embedding-set file: a .safetensors file with tensors embeddings (float32 N×D), identity (int64 N) and attr.<name> per "
                              "attribute, and the header entry frx.attributes (a JSON list of {name, kind, classes?, group?})")
    _model_options(analyze)
    analyze.add_argument("--out", required=True, help="output folder for analysis.json")
    analyze.add_argument("--overwrite", action="store_true", help="replace the analysis.json of an earlier run in --out")
    analyze.add_argument("--folds", type=int, default=5, help="identity-disjoint folds (default 5)")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default 0)")
    analyze.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates over identities (default 200)")
    analyze.add_argument("--fmr", type=float, default=1e-3, help="false-match rate of the verification threshold (default 1e-3)")
    analyze.add_argument("--no-verification", action="store_true", help="skip TAR at FMR (it holds every embedding in memory)")
    analyze.add_argument("--no-differentials", action="store_true",
                         help="skip the demographic differentials (FNMR and FMR per attribute group at the global threshold)")
    analyze.add_argument(
        "--head", choices=("ridge", "logistic"), default="ridge",
        help="heads of binary and categorical attributes: ridge (streamed, every epoch) or exact logistic (holds the file in memory)",
    )
    analyze.add_argument("--C", type=float, default=1.0, help="inverse L2 penalty of the logistic heads, as scikit-learn's C (default 1)")
    analyze.add_argument("--min-class-samples", type=int, default=20, metavar="N",
                         help="report a binary or categorical attribute with a class of fewer labelled samples as undefined "
                              "(too few for a stable AUROC), with the reason; default 20, 0 reports every one")
    analyze.add_argument("--attributes", default=None, help="comma-separated attributes to include (default: all)")
    analyze.add_argument("--counterfactuals", choices=("off", "auto", "exact", "decoded", "latent"), default="off",
                         help="with --backbone: identity significance and error attribution, as the training callbacks measure them "
                              "(auto: exact where a generator renders the probe set, else decoded with --two-stage, else latent; "
                              "decoded: the two stages' decoders render each face edited in their latent space; default off)")
    add_two_stage_options(analyze)
    analyze.add_argument("--format", choices=("table", "json", "csv"), default="table", help="what to print (default table)")
    _output_options(analyze)
    analyze.set_defaults(func=_analyze)


def _add_benchmark(sub) -> None:
    benchmark = sub.add_parser("benchmark", help="compare backbones on one probe set: verification, leakage, significance, errors, cost")
    benchmark.add_argument("--backbone", action="append", default=None, metavar="SPEC",
                           help="a backbone to compare (repeatable): synthetic:resnet-small, synthetic:mobilefacenet-like, "
                                "insightface:FILE.onnx, torch:pkg.mod:factory@w.safetensors, frx:DIR (frx plugins lists the kinds)")
    benchmark.add_argument("--embeddings", action="append", default=None, metavar="FILE",
                           help="an embedding-set file to compare as it is (repeatable; no embedding cost)")
    benchmark.add_argument("--probe", default=None, metavar="SPEC",
                           help="the probe set for every backbone (default: the one the first backbone names, else synthetic)")
    benchmark.add_argument("--pairs", default=None, metavar="FILE", help="a verification file (lfw.bin ...), judged on its listed pairs")
    benchmark.add_argument("--estimator", action="append", default=None, metavar="SPEC",
                           help="read attributes off the probe images (repeatable); with --two-stage they also read the decoded faces, "
                                "and 'trained' reads the attributes they do not")
    benchmark.add_argument("--out", required=True, help="output folder for benchmark.json, .csv, .md and report.html")
    benchmark.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    benchmark.add_argument("--bootstrap", type=int, default=200, help="identity-bootstrap replicates of the intervals (default 200)")
    benchmark.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default 0)")
    benchmark.add_argument("--no-report", action="store_true", help="skip report.html")
    add_two_stage_options(benchmark)
    _output_options(benchmark)
    benchmark.set_defaults(func=_benchmark)


def _add_report_and_plugins(sub) -> None:
    report = sub.add_parser("report", help="one self-contained report.html for a demo run, history, analysis, explanation or benchmark")
    report.add_argument("folder", help="a folder frx wrote (frx demo, a callback's out_dir, frx analyze, frx explain, frx benchmark)")
    report.add_argument("--out", default=None, help="the page to write (default FOLDER/report.html)")
    report.add_argument("--overwrite", action="store_true", help="replace a page that is already there")
    _output_options(report)
    report.set_defaults(func=_report)

    plugins = sub.add_parser("plugins", help="list the loaded plugins, backbones and probe sets")
    _output_options(plugins)
    plugins.set_defaults(func=_plugins)


def _plugin_runner(run: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    """A plugin command's ``run``, given its own arguments only (not the dispatch fields ``command`` and ``func``)."""

    def call(args: argparse.Namespace) -> int:
        own = ("command", "func", "verbose", "quiet")
        return int(run(argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in own})))

    return call


def _missing_command(name: str) -> Callable[[argparse.Namespace], int]:
    """The run of an optional command whose extra is not installed: one line saying what to install, exit code 2."""

    def call(args: argparse.Namespace) -> int:
        from frx_plugin.commands.registry import missing_command_message

        print(f"frx {name}: error: {missing_command_message(name)}", file=sys.stderr)
        return 2

    return call


def _add_plugin_commands(sub) -> None:
    """The plugins' subcommands (hook ``frx_register_commands``), and a stub for each optional one not installed."""
    from frx_plugin.commands.registry import OPTIONAL_COMMANDS, plugin_commands

    def refused(message: str) -> None:  # the help is still built, without that plugin command; frx plugins names it too
        print(f"frx: warning: {message}; it is left out", file=sys.stderr)

    commands = plugin_commands(reserved=CORE_COMMANDS, refused=refused)
    for name, (help_text, extra, _) in OPTIONAL_COMMANDS.items():
        if name not in commands:  # takes any arguments: they are answered by what to install
            stub = sub.add_parser(name, help=f"{help_text} (pip install '{DISTRIBUTION}[{extra}]')", add_help=False)
            stub.set_defaults(func=_missing_command(name), any_arguments=True)
    for command in commands.values():
        parser = sub.add_parser(command.name, help=command.description, description=command.description)
        _output_options(parser)
        parser.set_defaults(func=_plugin_runner(command.factory(parser)))


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    """The ``frx`` parser; ``with_plugins``: with the plugins' commands too (loading the plugins' entry points)."""
    parser = argparse.ArgumentParser(prog="frx", description="What do your face embeddings know? Attribute recovery for face recognition.")
    parser.add_argument("--version", action="version", version=f"frx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    if with_plugins:
        _add_plugin_commands(sub)
    _add_analyze(sub)
    from frx_plugin.commands.explain_command import add_explain_parser

    add_explain_parser(sub, _model_options, _output_options)
    _add_benchmark(sub)
    from frx_plugin.commands.decode import add_decode_parser

    add_decode_parser(sub)
    _add_report_and_plugins(sub)
    return parser


def error_line(exc: BaseException) -> str | None:
    """The one line that says what went wrong, naming the path or option; None for a failure that is a bug."""
    if isinstance(exc, ImportError):
        from frx_plugin.specs import missing_module_message

        return missing_module_message(exc) if isinstance(exc, ModuleNotFoundError) else None
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:  # raised by the system (frx's own carry a message)
        if exc.filename is not None:
            where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
            text = f"{where}: {exc.strerror}"
        else:
            folders = ", ".join(str(f) for f in watched_folders())
            text = exc.strerror + (f" (writing into {folders})" if folders else "")
    elif isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # not the repr of the key
    elif isinstance(exc, MemoryError):
        text = "out of memory" + (f": {exc}" if str(exc) else "")
    elif isinstance(exc, EXPECTED_ERRORS):
        text = str(exc) or type(exc).__name__
    else:
        return None
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _stopped(name: str, stopped: Interrupted) -> int:
    ignore_signals()  # a second Ctrl-C does not cut the line short
    end_progress_line()
    print(f"frx {name}: interrupted ({stopped.signal_name}); {describe_kept()}", file=sys.stderr, flush=True)
    return stopped.exit_code


def run_command(name: str, run: Callable[[], Any]) -> int:
    """``run()`` as the command ``frx NAME``: its exit code, or one line on stderr for an expected failure
    (exit code 2) or a signal (130 SIGINT, 143 SIGTERM; what it kept); a bug keeps its traceback and asks to be reported."""
    from frx_plugin.commands.messages import command_messages, heartbeat
    from frx_plugin.commands.outputs import release_claims, start_claiming

    forget_outputs()
    start_claiming()
    with stop_on_signals(), command_messages(name), heartbeat(name):
        try:
            return int(run())
        except (Interrupted, KeyboardInterrupt) as exc:
            return _stopped(name, exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT))
        except Exception as exc:  # noqa: BLE001 - sorted below: one line, or a traceback for a bug
            stopped = signal_received()
            if stopped is not None:  # a library swallowed the Interrupted and failed on its own terms after it
                return _stopped(name, stopped)
            end_progress_line()
            line = error_line(exc)
            if line is None:
                traceback.print_exc()
                print(f"frx {name}: internal error ({type(exc).__name__}): {BUG_HINT}", file=sys.stderr)
                return 1
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                line += f"; {describe_kept()}"  # a full disk: what the run kept, and what it left as it was
            print(f"frx {name}: error: {line}", file=sys.stderr)
            return 2
        finally:
            release_claims()


def _needs_plugins(argv: Sequence[str]) -> bool:
    """Whether parsing ``argv`` needs the plugins' commands: not for frx's own commands, nor for ``--version`` alone."""
    name = next((word for word in argv if not word.startswith("-")), None)  # frx's own options take no value
    if name is None:
        return "--version" not in argv or any(word in ("-h", "--help") for word in argv)
    return name not in CORE_COMMANDS


def _interrupted_at_start() -> int:
    """A Ctrl-C before the command began its work: one line, exit code 130 (nothing was written)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line short
    print("frx: interrupted (SIGINT); nothing written", file=sys.stderr, flush=True)
    return 128 + signal.SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser(with_plugins=_needs_plugins(argv))
        args, unknown = parser.parse_known_args(argv)
        if unknown and not getattr(args, "any_arguments", False):
            parser.error("unrecognized arguments: " + " ".join(unknown))  # as parse_args says it
        from frx_plugin.commands.messages import set_output

        set_output(getattr(args, "verbose", False), getattr(args, "quiet", False))
        return run_command(args.command, lambda: args.func(args))
    except KeyboardInterrupt:
        return _interrupted_at_start()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
