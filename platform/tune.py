"""Command line: `python -m platform.tune SPEC [options]` runs one tuning job.

Exit codes: 0 the job finished with a best trial (some trials may have failed: a warning
says how many), 1 the job failed (no trial produced the metric), 2 bad input (spec, options,
unreachable tracking server or cluster, a cluster's token missing, impossible resources, nothing
to `--resume`), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM (`ray job stop`, `kill`).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from platform.spec import SpecError, load_spec, smoke_overrides

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_STORAGE_PATH = "ray_results"
TRACKING_CHECK_TIMEOUT_S = 3.0
RAY_ADDRESS_CHECK_TIMEOUT_S = 3.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m platform.tune",
        description="Tune a trainable with Ray Tune (Optuna TPE + ASHA) and record every trial in MLflow.",
        epilog="Example: python -m platform.tune search_spaces/cnn.yaml --set search.num_samples=8",
    )
    parser.add_argument("spec", help="search-space YAML file (see search_spaces/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, value parsed as YAML (repeatable): --set search.num_samples=8",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="a few trials of 2 epochs on a small data subset: checks a spec in under a minute",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join, HOST:PORT (default: $RAY_ADDRESS, else an embedded local Ray); "
        "the working directory is shipped to the cluster with the job",
    )
    parser.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: spec, $MLFLOW_TRACKING_URI, then {DEFAULT_TRACKING_URI})"
    )
    parser.add_argument(
        "--storage-path",
        help="where Ray keeps experiment state and checkpoints "
        f"(default: spec's storage_path, else ./{DEFAULT_STORAGE_PATH})",
    )
    parser.add_argument("--name", help="job name: MLflow experiment and Ray run name (default: the spec's name)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest unfinished job (killed or interrupted) run with these same options: "
        "finished trials are kept, unfinished ones go on from their last checkpoint, in the same MLflow runs",
    )
    return parser


def resolve_tracking_uri(cli: str | None, spec_uri: str | None) -> tuple[str, str]:
    """The tracking URI and where it came from, by precedence: CLI, spec, env, default."""
    for uri, source in (
        (cli, "--tracking-uri"),
        (spec_uri, "tracking.uri"),
        (os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"),
    ):
        if uri:
            return uri, source
    return DEFAULT_TRACKING_URI, "tracking.uri"


def check_tracking_uri(uri: str, source: str, file: str) -> None:
    """Fail fast, before Ray starts, on a tracking store the job could never write to."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TRACKING_CHECK_TIMEOUT_S):
                pass
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise SpecError(file, source, f"MLflow tracking server not reachable: {reason}", uri) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise SpecError(file, source, "folder of the SQLite file does not exist or is not writable", uri)


def check_ray_address(address: str | None, source: str, file: str) -> None:
    """Fail fast on a cluster address nothing answers on (ray.init would retry for a minute),
    and on a cluster that refuses this machine's token (Ray would retry for 20 s, then fail
    with a traceback)."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(file, source, "expected HOST:PORT (or ray://HOST:PORT, auto)", address)
    try:
        socket.create_connection((host, int(port)), timeout=RAY_ADDRESS_CHECK_TIMEOUT_S).close()
    except OSError as err:
        raise SpecError(file, source, f"Ray cluster not reachable: {err.strerror or err}", address) from None
    from platform.cluster import probe_cluster

    problem = probe_cluster(address)
    if problem:
        raise SpecError(file, source, problem, address)


def check_storage_path(path: str, source: str, file: str) -> None:
    if "://" in path:
        return  # s3://, gs://: Ray's pyarrow filesystem reports its own errors
    existing = Path(path).expanduser().resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise SpecError(file, source, "storage path cannot be written", path)


def prepare(args: argparse.Namespace, argv: list[str]) -> Any:
    """Everything checked before anything starts: spec, trainable, data, tracking, storage,
    and with `--resume` the job to continue."""
    from platform.job import JobRequest
    from platform.resolve import check_against_trainable, resolve_trainable
    from platform.resume import find_unfinished_job, resume_command

    spec, _, text = load_spec(args.spec, args.overrides, name=args.name)
    if args.smoke_test:
        spec, _, _ = load_spec(args.spec, args.overrides + smoke_overrides(spec), name=args.name)
    trainable = resolve_trainable(spec, args.spec)
    data = check_against_trainable(spec, trainable, args.spec)
    tracking_uri, source = resolve_tracking_uri(args.tracking_uri, spec.tracking.uri)
    check_tracking_uri(tracking_uri, source, args.spec)
    check_ray_address(args.address, "--address" if args.address_from_cli else "RAY_ADDRESS", args.spec)
    storage = args.storage_path or spec.storage_path or DEFAULT_STORAGE_PATH
    check_storage_path(storage, "--storage-path" if args.storage_path else "storage_path", args.spec)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    resume = find_unfinished_job(tracking_uri, spec, args.spec) if args.resume else None
    return JobRequest(
        spec=spec,
        spec_file=args.spec,
        spec_text=text,
        trainable=trainable,
        data=data,
        tracking_uri=tracking_uri,
        storage_path=storage,
        address=args.address,
        smoke_test=args.smoke_test,
        resume_command=resume_command(argv),
        resume=resume,
    )


def format_summary(outcome: Any, request: Any, top: int = 5) -> str:
    from platform.tracking import RUN_STATUS

    spec = request.spec
    lines = [""]
    rows = sorted(
        outcome.rows, key=lambda r: (r.value is None, -(r.value or 0) if spec.mode == "max" else (r.value or 0))
    )
    count = {status: sum(r.status == status for r in rows) for status in RUN_STATUS}
    line = (
        f"{len(rows)} trials in {outcome.wall_s:.0f}s: {count['completed']} completed, "
        f"{count['early_stopped']} stopped early by {spec.scheduler.type.upper()}, "
        f"{count['diverged']} diverged, {count['failed']} failed"
    )
    lines.append(line + (f", {count['interrupted']} interrupted" if count["interrupted"] else ""))
    if rows:
        params = list(spec.search.space)
        header = ["trial", "status", "epochs", spec.metric, *params]
        table = [header] + [
            [
                r.trial_id,
                r.status,
                str(r.epochs),
                "-" if r.value is None else f"{r.value:.4f}",
                *[_short(r.params.get(p)) for p in params],
            ]
            for r in rows[:top]
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.append(f"Top {min(top, len(rows))} trials by {spec.metric} ({spec.mode}):")
        for row in table:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if outcome.best is not None:
        best = outcome.best
        lines.append(f"Best trial {best.trial_id}: {spec.metric}={best.value:.4f}")
        lines.append("  config: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    if outcome.baseline is not None:
        lines.append(_baseline_line(outcome.baseline, outcome.best, spec.metric, spec.mode))
    lines.append(
        f"MLflow: experiment '{outcome.experiment_name}' (id {outcome.experiment_id}), "
        f"parent run {outcome.parent_run_id}"
    )
    if outcome.model_version:
        lines.append(
            f"Registered model: {outcome.model_name} version {outcome.model_version}; "
            f"champion is version {outcome.champion_version} "
            f"(models:/{outcome.model_name}@champion)"
        )
    lines.extend(outcome.notes)
    lines.append(f"Browse: mlflow ui --backend-store-uri {request.tracking_uri}")
    return "\n".join(lines)


def _baseline_line(baseline: tuple[str, dict[str, float]], best: Any, metric: str, mode: str) -> str:
    name, metrics = baseline
    if metric not in metrics:
        return f"Baseline ({name}): " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    line = f"Baseline ({name}): {metric}={metrics[metric]:.4f}"
    if best is not None and best.value is not None:
        line += f"; best trial {best.value:.4f}"
        if mode == "max" and metrics[metric] > 0:
            line += f" ({best.value / metrics[metric]:.2f}x the baseline)"
    return line


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _stop_word(terminated: bool) -> str:
    return "stopped by SIGTERM" if terminated else "interrupted"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.address_from_cli = args.address is not None
    args.address = args.address or os.environ.get("RAY_ADDRESS") or None
    try:
        request = prepare(args, argv)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from platform.interrupt import EXIT_INTERRUPTED, EXIT_TERMINATED, sigterm_as_interrupt
    from platform.job import JobError, run_job
    from platform.tracking import JobTracker

    tracker = JobTracker(request.tracking_uri, request.spec.name)
    with sigterm_as_interrupt() as terminated:
        try:
            outcome = run_job(request, tracker)
        except JobError as err:
            print(f"error: {request.spec_file}: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{_stop_word(terminated())}; continue with: {request.resume_command}", file=sys.stderr)
            return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    print(format_summary(outcome, request), flush=True)
    failed = [row for row in outcome.rows if row.status == "failed"]
    if outcome.exit_code == EXIT_INTERRUPTED:
        print(
            f"{_stop_word(terminated())}: Ray saved the job's state under {outcome.experiment_path} and its MLflow "
            f"runs are marked KILLED; continue with: {request.resume_command}",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    elif outcome.exit_code != 0:
        reason = f": {failed[0].error}" if failed and failed[0].error else "; see the trial errors above"
        print(f"error: no trial produced the metric {request.spec.metric!r}{reason}", file=sys.stderr)
    elif failed:
        print(
            f"warning: {len(failed)} of {len(outcome.rows)} trials failed (first: {failed[0].error}); "
            "their MLflow runs have the tag `error`",
            file=sys.stderr,
        )
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
