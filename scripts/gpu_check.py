"""The CUDA paths, run once and told truthfully, in at most 5 minutes on one H100-class GPU.

    python scripts/gpu_check.py --out DIR                      # a GPU machine (gpu_check.sh)
    python scripts/gpu_check.py --out DIR --quick --allow-cpu   # the same code paths, tiny, on CPU

Each section runs in its own child process with a time budget (`gpucheck.supervise`) and leaves
its record in DIR/sections/<name>.json; DIR/gpu_check.json gathers them with the estimate made up
front. A section is ok only when its child exited 0 and every check it made held; under
--allow-cpu a section with no CPU meaning is skipped with its reason (never ok); past its budget it
is stopped and recorded as timed out, and the others go on. The exit status is 1 when any section
was not ok or skipped, listing them; 2 for bad arguments or no CUDA without --allow-cpu.

Sections (docs/gpu.md says what each compares): peak, smoke, bf16_vs_fp32, tf32, distributed,
multi_gpu, train_images_per_s, sample_images_per_s, train_compiled. Nothing is downloaded: the
images are synthetic (gpucheck.synthetic).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # the harness, when run from a clone without PYTHONPATH

import torch  # noqa: E402

from gpucheck import plan, record, supervise  # noqa: E402
from harness import atomic  # noqa: E402

PLAN_BUDGET_S = {"cuda": 120.0, "cpu": 900.0}
MAX_TOTAL_S = {"cuda": 300.0, "cpu": 3600.0}   # the whole run, plan included
FLOOR_S = {"cuda": 30.0, "cpu": 180.0}         # the least budget any section gets
MIN_START_S = 5.0                               # a section needs this much of the total left
# What a run writes into --out (removed first: a re-run into the same folder starts afresh).
OWNED = ("gpu_check.json", "plan.json", "sections", "logs", "smoke", "precision", "distributed",
         "multi_gpu")


class BadArguments(Exception):
    pass


# --------------------------------------------------------------------------- child side


def _context(args: argparse.Namespace):
    from gpucheck.context import Context

    saved = atomic.read_json_object(Path(args.out) / "plan.json")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    return Context(out=Path(args.out), device=args.device, quick=args.quick, gpus=gpus,
                   sizes=plan.QUICK if args.quick else plan.FULL, costs=saved.get("costs", {}))


def _section_function(name: str):
    if name in ("peak", "bf16_vs_fp32", "tf32"):
        from gpucheck import precision
        return getattr(precision, name)
    if name in ("smoke", "multi_gpu"):
        from gpucheck import harness_runs
        return getattr(harness_runs, name)
    if name == "distributed":
        from gpucheck import group
        return group.section
    from gpucheck import speed
    return getattr(speed, name)


def _write_plan(args: argparse.Namespace) -> int:
    """The `plan` child: device facts and the FLOP/operation counts, into DIR/plan.json."""
    sizes = plan.QUICK if args.quick else plan.FULL
    cuda = args.device == "cuda"
    facts = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
             "gpus": torch.cuda.device_count() if cuda else 0, "torch": torch.__version__,
             "cuda": torch.version.cuda if cuda else None}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(capability=f"{props.major}.{props.minor}",
                     memory_bytes=props.total_memory, cudnn=torch.backends.cudnn.version())
    else:
        facts["cpu_matmul_flop_per_s"] = plan.matmul_flop_per_s("cpu")
    start = time.perf_counter()
    facts["costs"] = plan.count_costs(sizes, args.device)
    facts["counting_s"] = time.perf_counter() - start
    atomic.write_json(Path(args.out) / "plan.json", facts)
    return 0


def child_main(args: argparse.Namespace) -> int:
    if args.section == "plan":
        return _write_plan(args)
    context = _context(args)
    found = record.Record(context.out / "sections" / f"{args.section}.json", args.section)
    before = record.settings()
    status, error, reason = "ok", None, None
    try:
        _section_function(args.section)(found, context)
    except record.Skip as skip:
        status, reason = "skipped", str(skip)
    except Exception as failure:  # noqa: BLE001 - recorded; the parent gives the verdict
        traceback.print_exc()
        status, error = "failed", f"{type(failure).__name__}: {failure}"
    changed = record.changed_settings(before, record.settings())
    if status != "skipped":
        found.check("global_settings_restored", not changed,
                    "changed and left: " + "; ".join(changed) if changed
                    else "every global torch setting as it was")
    if status == "ok" and not found.checks_held:
        status = "failed"
    found.finish(status, error=error, reason=reason)
    return 0 if status in ("ok", "skipped") else 1


# --------------------------------------------------------------------------- parent side


def _parse_budgets(values: list[str]) -> dict[str, float]:
    budgets = {}
    for value in values:
        name, _, seconds = value.partition("=")
        if name not in plan.SECTIONS:
            raise BadArguments(f"--budget {value}: no section '{name}' (sections: "
                               f"{', '.join(plan.SECTIONS)})")
        try:
            budgets[name] = float(seconds)
        except ValueError:
            raise BadArguments(f"--budget {value}: give SECTION=SECONDS, e.g. smoke=120") from None
        if budgets[name] <= 0:
            raise BadArguments(f"--budget {value}: seconds must be positive")
    return budgets


def _sections(only: str | None) -> tuple[str, ...]:
    if not only:
        return plan.SECTIONS
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in plan.SECTIONS]
    if unknown or not names:
        raise BadArguments(f"--only {only}: unknown section(s) {', '.join(unknown) or '(none)'}; "
                           f"sections: {', '.join(plan.SECTIONS)}")
    return tuple(n for n in plan.SECTIONS if n in names)


def _child(args: argparse.Namespace, name: str, device: str) -> list[str]:
    return ([sys.executable, str(Path(__file__).resolve()), "--out", str(args.out),
             "--device", device, "--section", name] + (["--quick"] if args.quick else []))


def _environment() -> dict[str, str]:
    from gpucheck.synthetic import python_path

    return {**os.environ, "PYTHONPATH": python_path(REPO, REPO / "scripts"),
            "PYTHONUNBUFFERED": "1"}


def _fmt(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds} s"


def _print_estimate(results: dict, estimates: dict, budget: dict, basis: str,
                    max_total_s: float, plan_s: float) -> None:
    total = plan_s + sum(e.seconds for e in estimates.values())
    print(f"gpu_check: {results['device']} ({results['gpus']} GPU(s)), torch {results['torch']}:"
          f" estimate {_fmt(total)} ({_fmt(plan_s)} of it counting, done) for "
          f"{len(estimates)} section(s), the run stops at {_fmt(max_total_s)}; from FLOP and "
          f"operation counts at {basis}", flush=True)
    print(f"  {'section':<20} {'TFLOP':>9} {'ops':>9} {'estimate':>9} {'budget':>8}")
    for name, value in estimates.items():
        print(f"  {name:<20} {value.flops / 1e12:>9.2f} {value.ops:>9.0f} "
              f"{_fmt(value.seconds):>9} {_fmt(budget[name]):>8}")
    if total > max_total_s:
        print(f"gpu_check: warning: the estimate is over the run's {_fmt(max_total_s)}: the last "
              "sections may not run (--max-total-s, --only)", flush=True)


def parent_main(args: argparse.Namespace) -> int:
    sections = _sections(args.only)
    overrides = _parse_budgets(args.budget)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on "
              "a GPU machine, or pass --allow-cpu --quick to test its code paths",
              file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    gpus = torch.cuda.device_count() if cuda else 0  # counts devices, starts no context
    max_total_s = args.max_total_s or MAX_TOTAL_S[device]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED:  # a figure or result of an earlier run must never count for this one
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    started = time.monotonic()
    env = _environment()
    results: dict = {"device_type": device, "quick": args.quick, "python": sys.version.split()[0],
                     "sections": {}, "max_total_s": max_total_s}
    ended = supervise.run(_child(args, "plan", device), out / "logs" / "plan.log",
                          min(PLAN_BUDGET_S[device], max_total_s), REPO, env)
    facts = atomic.read_json_object(out / "plan.json")
    results.update({k: facts.get(k) for k in ("device", "gpus", "torch", "cuda", "capability",
                                              "memory_bytes", "cudnn")})
    sizes = plan.QUICK if args.quick else plan.FULL
    rates = plan.H100_CLASS if cuda else plan.cpu_rates(facts.get("cpu_matmul_flop_per_s")
                                                         or 1e9)
    try:
        estimates = plan.estimate(sizes, facts["costs"], rates, device, gpus, sections)
        basis = rates.basis
    except (KeyError, TypeError):
        why = ("timed out" if ended.timed_out else f"exited {ended.returncode}")
        print(f"gpu_check: plan: {why}, no FLOP counts: every section gets "
              f"{_fmt(FLOOR_S[device])}; see {out / 'logs' / 'plan.log'}", flush=True)
        estimates = {name: plan.Estimate(FLOOR_S[device] / plan.BUDGET_FACTOR, 0.0, 0.0)
                     for name in sections if plan.skip_reason(name, device, gpus) is None}
        basis = f"no counts (the plan {why})"
        results["plan_error"] = supervise.tail(out / "logs" / "plan.log")
    results["device"] = results.get("device") or device
    results["gpus"] = gpus
    budget = plan.budgets(estimates, FLOOR_S[device], overrides)
    results["estimate"] = {"total_s": round(ended.wall_s + sum(e.seconds for e in
                                                               estimates.values()), 1),
                           "basis": basis, "plan_s": round(ended.wall_s, 1),
                           "sections": plan.record(estimates, budget)}
    _print_estimate(results, estimates, budget, basis, max_total_s, ended.wall_s)
    atomic.write_json(out / "gpu_check.json", results)
    for name in sections:
        left = max_total_s - (time.monotonic() - started)
        skip = plan.skip_reason(name, device, gpus)
        if skip is not None:  # known from here: no child to start
            verdict = {"status": "skipped", "ok": False, "reason": skip}
        elif left < MIN_START_S:
            verdict = {"status": "not_run", "ok": False,
                       "reason": f"not started: the run's {_fmt(max_total_s)} were spent"}
        else:
            limit = min(budget[name], left)
            ended = supervise.run(_child(args, name, device), out / "logs" / f"{name}.log",
                                  limit, REPO, env)
            saved = atomic.read_json_object(out / "sections" / f"{name}.json") or None
            verdict = record.verdict(saved, ended.returncode, ended.timed_out, ended.wall_s,
                                     limit)
            verdict["estimate_s"] = round(estimates[name].seconds, 1)
            if not verdict["ok"] and verdict["status"] != "skipped":
                verdict["log_tail"] = supervise.tail(out / "logs" / f"{name}.log")
        results["sections"][name] = verdict
        atomic.write_json(out / "gpu_check.json", results)
        detail = verdict["reason"] if verdict["status"] != "ok" else ""
        print(f"gpu_check: {name}: {verdict['status']}"
              + (f" ({verdict['wall_s']:.0f} s of {verdict['budget_s']:.0f}, est "
                 f"{verdict['estimate_s']:.0f})" if "wall_s" in verdict else "")
              + (f": {detail}" if detail else ""), flush=True)
    results["wall_s"] = round(time.monotonic() - started, 1)
    by_status = {s: [n for n, v in results["sections"].items() if v["status"] == s]
                 for s in ("ok", "skipped", "failed", "timed_out", "not_run")}
    results.update(ok=by_status["ok"], skipped=by_status["skipped"],
                   failed=by_status["failed"] + by_status["timed_out"] + by_status["not_run"])
    atomic.write_json(out / "gpu_check.json", results)
    print(f"gpu_check: {out / 'gpu_check.json'} in {_fmt(results['wall_s'])}: "
          f"{len(by_status['ok'])} ok, {len(by_status['skipped'])} skipped"
          + (f"; NOT OK: {', '.join(results['failed'])}" if results["failed"] else ""),
          flush=True)
    return 1 if results["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and run output")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU test of paths)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA")
    parser.add_argument("--only", help="comma-separated sections to run (default: all)")
    parser.add_argument("--budget", action="append", default=[], metavar="SECTION=SECONDS",
                        help="a section's time limit instead of 3x its estimate")
    parser.add_argument("--max-total-s", type=float, default=None,
                        help="stop starting sections past this (default 300 on CUDA)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # a child: run one section
    parser.add_argument("--device", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        return child_main(args)
    try:
        return parent_main(args)
    except BadArguments as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
