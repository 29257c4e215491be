"""`harness` command line: run experiments, evaluate checkpoints, rebuild reports, list datasets,
validate configs.

Every subcommand is a thin shell over a function that can be called from Python. User errors
(`harness.errors.UserError`) become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path

from harness.errors import EXIT_USER_ERROR, UserError

# Each command imports what it runs when it runs: `harness report` and `harness --help` need not
# load torch. No import here breaks a cycle (the import-linter contract in pyproject.toml).


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.run.runner import run_experiment

    return run_experiment(
        Path(args.experiment),
        results_dir=Path(args.results) if args.results else None,
        overrides=args.set,
        dry_run=args.dry_run,
        jobs=args.jobs,
        launcher=args.launcher,
        wait=not args.no_wait,
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.run.evaluate_command import evaluate_checkpoint

    return evaluate_checkpoint(Path(args.checkpoint), args.model, args.dataset, args.set,
                               Path(args.results) if args.results else None)


def _cmd_compress(args: argparse.Namespace) -> int:
    from harness.run.compress_command import compress_command

    return compress_command(args.model_path, args.images, args.out, args.model, args.data_dir,
                            args.batch_size)


def _cmd_decompress(args: argparse.Namespace) -> int:
    from harness.run.compress_command import decompress_command

    return decompress_command(args.model_path, args.input, args.out_dir, args.model)


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.atomic import check_output_folder
    from harness.report import build_report

    out = check_output_folder(args.out, "--out") if args.out else None
    build_report(Path(args.results_dir), out_dir=out)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from harness.run.status import print_status

    return print_status(Path(args.results_dir))


def _cmd_validate(args: argparse.Namespace) -> int:
    from harness.experiment.load import load_experiment

    for path in args.experiments:
        experiment = load_experiment(Path(path), overrides=args.set)
        print(f"{path}: ok ({experiment.name})")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from harness.data import print_dataset_table

    print_dataset_table(data_dir=Path(args.data_dir) if args.data_dir else None)
    return 0


def _cmd_quality(args: argparse.Namespace) -> int:
    from harness.run.quality_command import run_quality

    run_quality(args.samples, args.reference, train=args.train, features=args.features,
                inception_weights=args.inception_weights, n=args.n, json_path=args.json,
                data_dir=args.data_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Compare very deep VAEs with autoregressive image models: bits/dim, "
        "parameters, FLOPs, training and sampling throughput.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment file (train, evaluate, report)")
    run.add_argument("experiment", help="experiments/<name>.yaml")
    run.add_argument("--results", metavar="DIR", help="write results and report here "
                     "instead of results/<experiment>/")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value by dotted key (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    run.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="run N cells in parallel processes (default: the file's runner.jobs)")
    run.add_argument("--launcher", choices=("local", "slurm"), default=None,
                     help="where cells run (default: the file's runner.launcher, else local)")
    run.add_argument("--no-wait", action="store_true",
                     help="with --launcher slurm: return once the jobs are submitted")
    run.set_defaults(func=_cmd_run)

    evaluate = sub.add_parser("evaluate", help="evaluate a weights file (a released reference "
                              "checkpoint or the harness's own) on a dataset's test split")
    evaluate.add_argument("checkpoint", help="*-model-ema.th, *-model.th or checkpoints/step-N.pt")
    evaluate.add_argument("--model", required=True, metavar="PRESET_OR_YAML",
                          help="a preset (cifar10, imagenet32, ...) or a YAML model entry")
    evaluate.add_argument("--dataset", required=True, metavar="NAME")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="a dataset option (path=DIR) or eval key (batch_size=8)")
    evaluate.add_argument("--results", metavar="DIR",
                          help="results folder (default results/evaluate_<file>/)")
    evaluate.set_defaults(func=_cmd_evaluate)

    compress = sub.add_parser("compress", help="losslessly compress images with a model "
                              "(range coding for a PixelCNN, bits-back ANS for a VDVAE)")
    compress.add_argument("model_path", metavar="MODEL",
                          help="a results cell folder (cells/<cell>/) or a weights file")
    compress.add_argument("images", metavar="IMAGES",
                          help="a folder of PNGs, a uint8 .npy, or DATASET:SPLIT[:N]")
    compress.add_argument("out", metavar="OUT", help="the compressed file to write")
    compress.add_argument("--model", metavar="PRESET_OR_YAML",
                          help="the model of a weights file: a preset or a YAML model entry")
    compress.add_argument("--data-dir", metavar="DIR", help="harness data directory for "
                          "DATASET:SPLIT (default $HARNESS_DATA)")
    compress.add_argument("--batch-size", type=int, default=None, metavar="N",
                          help="images coded together (recorded in the file; default: the "
                          "codec's, 32 for range coding, 1 for bits-back)")
    compress.set_defaults(func=_cmd_compress)

    decompress = sub.add_parser("decompress", help="decode a file of harness compress into PNGs")
    decompress.add_argument("model_path", metavar="MODEL",
                            help="the results cell folder or weights file it was made with")
    decompress.add_argument("input", metavar="IN", help="the compressed file")
    decompress.add_argument("out_dir", metavar="OUTDIR", help="folder for the PNGs")
    decompress.add_argument("--model", metavar="PRESET_OR_YAML", help="the model of a weights "
                            "file (default: the family and config the file records)")
    decompress.set_defaults(func=_cmd_decompress)

    status = sub.add_parser("status", help="every cell's state, Slurm job id and last log line")
    status.add_argument("results_dir", help="results/<experiment>/")
    status.set_defaults(func=_cmd_status)

    report = sub.add_parser("report", help="rebuild tables, figures and PDF from a results folder")
    report.add_argument("results_dir", help="results/<experiment>/")
    report.add_argument("--out", metavar="DIR", help="where to write RESULTS_NAME.pdf and its "
                        "tables and figures (default: beside the results, in RESULTS_DIR itself, "
                        "as harness run does)")
    report.set_defaults(func=_cmd_report)

    validate = sub.add_parser("validate", help="check experiment files without running them")
    validate.add_argument("experiments", nargs="+")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=_cmd_validate)

    datasets = sub.add_parser("datasets", help="list datasets, where they were found, sizes")
    datasets.add_argument("--data-dir", metavar="DIR",
                          help="harness data directory (default $HARNESS_DATA)")
    datasets.set_defaults(func=_cmd_datasets)

    images = "a PNG folder, a uint8 (N, C, H, W) .npy or DATASET:SPLIT[:N]"
    quality = sub.add_parser("quality", help="sample-quality metrics (FD, KID, precision/recall, "
                             "density/coverage, memorization) of images against a reference")
    quality.add_argument("samples", help=images + " (e.g. cells/<cell>/samples.npy)")
    quality.add_argument("reference", help="real images: " + images
                         + " (e.g. fashion_mnist:test:2000, its first 2,000)")
    quality.add_argument("--train", metavar="IMAGES",
                         help="training images, for the memorization check: " + images)
    quality.add_argument("--features", default="random_cnn", metavar="NAME",
                         help="feature extractor: random_cnn (default, offline) or inception")
    quality.add_argument("--inception-weights", metavar="PATH",
                         help="pt_inception-2015-12-05-6726825d.pth, for --features inception")
    quality.add_argument("--n", type=int, metavar="N",
                         help="use the first N samples and the first N reference images")
    quality.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    quality.add_argument("--data-dir", metavar="DIR",
                         help="harness data directory (default $HARNESS_DATA)")
    quality.set_defaults(func=_cmd_quality)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's stop), raised like Ctrl-C so the same cleanup runs."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


# The machine, not the code: a full disk or a read-only / forbidden folder (one line, exit 2).
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# A file where a folder is needed, or the reverse, on a path the user gave (or one below it).
_PATH_KIND_ERRNOS = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command leaves: only a real run (or evaluation) has work to resume."""
    if args.command in ("run", "evaluate") and not getattr(args, "dry_run", False):
        return "completed work is saved and a re-run resumes"
    if args.command == "report":
        return "the files written so far are whole; run it again for the complete report"
    return "nothing was written" + (" (a dry run)" if getattr(args, "dry_run", False) else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers below
        return code
    except UserError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `harness datasets | head`: the reader has gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as error:
        if error.errno in _PATH_KIND_ERRNOS and error.filename:
            print(f"harness: error: {error.filename}: {error.strerror}: a file stands where a "
                  "folder is needed (or the reverse); move it or pass another path",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        if error.errno not in _ENVIRONMENT_ERRNOS or not error.filename:
            raise
        print(f"harness: error: {error.filename}: {error.strerror}; completed "
              "work is saved and a re-run resumes", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as stop:
        how = "by SIGTERM" if isinstance(stop, _Terminated) else ""
        print(f"harness: interrupted{' ' + how if how else ''}; {_after_interrupt(args)}",
              file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(stop, _Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
