"""The ``bmsbi`` command: ``bmsbi simulate`` → ``train`` → ``infer`` → ``diagnose``, ``compare``, ``demo``.

Every verb prints one clear line on stderr and exits with status 2 on bad input
(missing or unreadable file, wrong shape, unknown task, a file written by a newer
bmsbi), instead of a traceback. ``bmsbi infer`` exits 0 when recordings are out of
distribution (the flag is part of its output) unless ``--fail-on-ood`` asks for 3.

Every verb but ``tasks`` turns on JAX's persistent compilation cache
(:func:`bmsbi.enable_compilation_cache`; ``BMSBI_COMPILATION_CACHE=0`` turns it off), so
a second ``bmsbi infer`` on the same posterior reads its compiled sampler from disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

from .cache import enable_compilation_cache

__all__ = ["main"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _task(ref: str, *, source: str = "task", fix: str = ""):
    """The task ``ref`` names: a task name or ``package.module:attribute``; one-line errors.

    References are imported with the current folder on ``sys.path`` (as ``python -m``
    has it), so ``bmsbi simulate my_model:task`` finds ``./my_model.py``. ``source``
    opens the error line (where ``ref`` came from), ``fix`` ends it.
    """
    import simulators

    if ":" in ref:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
    try:
        return simulators.get(ref)
    except KeyError:
        raise CLIError(f"{source} {ref!r}: no such task; available: {', '.join(simulators.list_tasks())}; "
                       f"a task of your own: pass package.module:attribute{fix}") from None
    except ValueError as exc:
        detail = _first_line(exc).removeprefix("ref: ").removeprefix(f"{ref!r}: ")
        raise CLIError(f"{source} {ref!r}: {detail}{fix}") from None


def _existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{what}: no such file or folder: {path}")
    return p


def _writable(path: str, what: str, *, folder: bool = False) -> Path:
    """``path`` as a Path, refused early (before long work) when it cannot be written."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise CLIError(f"{what}: {path} is a file, expected a folder")
    if not folder and p.is_dir():
        raise CLIError(f"{what}: {path} is a folder, expected a file name")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{what}: cannot write {path}: {parent} is a file, not a folder")
            break
    return p


def _load_posterior(path: str):
    import bmsbi

    p = _existing(path, "posterior")
    if p.is_dir():
        raise CLIError(f"posterior: {path} is a folder, expected a posterior file (from `bmsbi train`)")
    try:
        return bmsbi.load_posterior(p)
    except ValueError as exc:
        raise CLIError(f"posterior: {_strip_arg(exc)}") from None


def _load_bank(path: str):
    import bmsbi

    p = _existing(path, "bank")
    if not p.is_dir() and p.suffix.lower() != ".npz":
        raise CLIError(f"bank: {path}: expected a bank folder or a .npz file (from `bmsbi simulate`)")
    try:
        return bmsbi.Bank.load(p)
    except ValueError as exc:
        raise CLIError(f"bank: {_strip_arg(exc)}") from None


def _strip_arg(exc) -> str:
    """A library message without its leading ``path:`` argument name."""
    return re.sub(r"^path: ", "", str(exc))


def _bank_task_name(meta: dict):
    """The task a bank was simulated for: ``meta["task"]``, or its simulator's name."""
    if isinstance(meta.get("task"), str):
        return meta["task"]
    m = re.match(r"^simulators\.(\w+)\.simulate\[", str(meta.get("simulator", "")))
    return m.group(1) if m else None


def _key(seed: int):
    import jax

    return jax.random.key(seed)


# ------------------------------------------------------------------- simulate
def cmd_simulate(args) -> None:
    task = _task(args.task)
    out = _writable(args.out, "--out", folder=Path(args.out).suffix != ".npz")
    if out.suffix == ".npz" and out.exists() and not args.force:
        raise CLIError(f"--out: {out} exists; pass --force to overwrite it, or choose another name "
                       "(a bank folder resumes instead)")
    bank = task.bank(args.num_simulations, _key(args.seed), chunk_size=args.chunk_size,
                     path=None if out.suffix == ".npz" else out, progress=not args.quiet,
                     on_invalid=args.on_invalid, trials=args.trials)
    if out.suffix == ".npz":
        bank.save(out)
    each = f" x {args.trials} trials" if args.trials else ""
    print(f"wrote {len(bank)}{each} simulations of task {task.ref!r} to {out} "
          f"({bank.meta['num_invalid']} invalid, policy {bank.meta['on_invalid']!r})")


# ---------------------------------------------------------------------- train
_ESTIMATORS = ("npe", "nle", "nre")


def _prior_and_task(bank, task_ref):
    """``(prior, task or None)`` for a bank: ``--task``, else the bank's meta."""
    import bmsbi

    meta = bank.meta
    if task_ref is not None:
        task = _task(task_ref, source="--task")
        return task.prior, task
    ref = _bank_task_name(meta)
    if isinstance(meta.get("prior"), dict):
        try:
            prior = bmsbi.Prior.from_dict(meta["prior"])
        except ValueError as exc:
            raise CLIError(f"bank: its meta holds an unreadable prior ({exc}); pass --task") from None
        return prior, (_task(ref, source="bank: its task", fix="; pass --task to use another") if ref else None)
    if ref is None:
        raise CLIError("bank: its meta names neither a task nor a prior (not written by `bmsbi simulate`?); "
                       "pass --task")
    task = _task(ref, source="bank: its task", fix="; pass --task to use another")
    return task.prior, task


def cmd_train(args) -> None:
    import math

    import bmsbi

    out = _writable(args.out, "--out")
    bank = _load_bank(args.bank)
    prior, task = _prior_and_task(bank, args.task)
    summary = recording_shape = None
    if task is not None and not isinstance(bank.meta.get("summary"), dict):
        # A bank without a recorded summary: the task's default, when it fits the bank's x.
        if task.summary.output_size(task.n_time, task.n_regions) == math.prod(bank.x_shape):
            summary, recording_shape = task.summary, (task.n_time, task.n_regions)
    cls = {"npe": bmsbi.NPE, "nle": bmsbi.NLE, "nre": bmsbi.NRE}[args.estimator]
    estimator = cls() if args.max_epochs is None else cls(max_epochs=args.max_epochs)
    t0 = time.perf_counter()
    posterior = estimator.fit(bank, prior=prior, key=_key(args.seed), progress=not args.quiet,
                              summary=summary, recording_shape=recording_shape)
    seconds = time.perf_counter() - t0
    if task is not None:
        posterior.training["task"] = task.ref  # `bmsbi diagnose` finds the task again
    posterior.save(out)
    h = posterior.history
    best = "n/a" if h is None or not h.val_loss else f"{float(h.best_val_loss):.4f} (epoch {h.best_epoch})"
    epochs = "?" if h is None else h.epochs
    what = f"task {task.ref!r}" if task is not None else "its prior"
    print(f"trained {args.estimator.upper()} on {len(bank)} simulations ({what}): {epochs} epochs in "
          f"{seconds:.1f} s, best validation loss {best}; wrote {out}")


# ---------------------------------------------------------------------- infer
_PLAIN_SUFFIXES = (".npy", ".csv")


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_file(path: str, fs, channels):
    """``(array or None, Recording or None)`` from one recording file.

    ``.npy``/``.csv`` files without a rate (no ``--fs``, no side-car ``.json``) come back
    as arrays; everything else through :func:`bmsbi.read_recording`. A file holding
    complex, non-numeric, NaN or inf values is refused, naming it (nothing is inferred).
    """
    import numpy as np

    import bmsbi
    from bmsbi._checks import real_array
    from bmsbi.recording import read_csv

    p = _existing(path, "recordings")
    if p.is_dir():
        raise CLIError(f"recordings: {path} is a folder, expected a recording file")
    plain = p.suffix.lower() in _PLAIN_SUFFIXES
    try:
        if plain and (fs is None or _is_batch_npy(p)) and not p.with_suffix(".json").exists():
            a = np.load(p, allow_pickle=False) if p.suffix.lower() == ".npy" else read_csv(p)[0]
            if not isinstance(a, np.ndarray) or a.size == 0:
                raise CLIError(f"recordings: {path} holds no numeric data (dtype {getattr(a, 'dtype', '?')}, "
                               f"shape {getattr(a, 'shape', '?')})")
            a = real_array(a, "path", what="numbers")
            _check_finite(a, path)
            return a, None
        return None, bmsbi.read_recording(p, fs=fs if plain else None, channels=channels)  # --fs: .npy/.csv only
    except (ValueError, OSError, EOFError) as exc:
        raise CLIError(f"recordings: {path}: {_strip_arg(_first_line(exc))}") from None


def _check_finite(a, path: str) -> None:
    """Refuse a recording file holding NaN or inf: say how many values, in which rows."""
    import numpy as np

    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    if nan == inf == 0:
        return
    what = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1) if a.ndim else np.array([True])
    rows = np.flatnonzero(bad)
    where = (f"at {rows.size} of its {a.size} positions (first: {rows[0]})" if a.ndim <= 1 else
             f"in {rows.size} of its {len(a)} rows (first: row {rows[0]})")
    raise CLIError(f"recordings: {path} holds {what} values {where}; bmsbi infer takes finite "
                   "recordings only: interpolate or cut the bad stretch, or leave the file out")


def _is_batch_npy(p: Path) -> bool:
    """A ``.npy`` file holding a batch ``(m, time, regions)`` (read without loading it)."""
    import numpy as np

    if p.suffix.lower() != ".npy":
        return False
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False).ndim == 3
    except (ValueError, OSError, EOFError):
        return False


def _recordings(posterior, paths, *, fs=None, channels=None):
    """What ``posterior.infer`` takes for ``paths``, a label per input row, and notes to print.

    With a posterior that knows its recordings' rate every file becomes a
    :class:`bmsbi.Recording` named after it (a batch file ``(m, time, regions)`` one per
    row): ``.npy``/``.csv`` at ``--fs``, their side-car's rate, or, failing both, the trained
    rate (a note says so). Otherwise the files are arrays stacked into one batch.
    """
    import numpy as np

    import bmsbi

    spec = posterior.recording_spec
    items, labels, assumed = [], [], []
    for path in paths:
        a, rec = _read_file(path, fs, channels)
        name = Path(path).name
        if rec is not None:
            items.append(rec)
            labels.append(name)
            continue
        if posterior.summary is None:  # the posterior takes summaries (observations) directly
            if a.shape == posterior.x_shape:
                a = a[None]
            elif a.shape[1:] != posterior.x_shape:
                raise CLIError(f"recordings: {path} has shape {a.shape}; this posterior has no summary "
                               f"pipeline and takes observations of shape {posterior.x_shape} or "
                               f"(m, {', '.join(map(str, posterior.x_shape))})")
        elif a.ndim not in (1, 2, 3):
            raise CLIError(f"recordings: {path} has shape {a.shape}; expected one recording (time, regions), "
                           "(time,) for one region, or a batch (m, time, regions)")
        else:
            a = {1: lambda v: v.reshape(1, -1, 1), 2: lambda v: v[None]}.get(a.ndim, lambda v: v)(a)
        rows = [name] if len(a) == 1 else [f"{name}[{i}]" for i in range(len(a))]
        rate = fs if fs is not None else (None if spec is None else spec.fs)
        if posterior.summary is not None and rate is not None:
            if fs is None:
                assumed.append(name)
            try:
                items += [bmsbi.Recording(r, rate, channels=channels, name=lab) for r, lab in zip(a, rows)]
            except ValueError as exc:
                raise CLIError(f"recordings: {path}: {_first_line(exc)}") from None
        else:
            items.append(a)
        labels += rows
    notes = []
    if assumed:
        shown = ", ".join(assumed[:5]) + (" ..." if len(assumed) > 5 else "")
        notes.append(f"{len(assumed)} file(s) hold no sampling rate and are taken at the trained "
                     f"{spec.fs:g} Hz (pass --fs or a side-car .json to have them checked): {shown}")
    if all(isinstance(i, bmsbi.Recording) for i in items):
        return items, labels, notes
    if any(isinstance(i, bmsbi.Recording) for i in items):
        raise CLIError("recordings: files with a sampling rate cannot be inferred together with plain arrays "
                       "when the posterior does not know its rate; pass --fs for every .npy/.csv file")
    shapes = {a.shape[1:] for a in items}
    if len(shapes) > 1:
        listing = ", ".join(f"{Path(p).name} {a.shape[1:]}" for p, a in zip(paths, items))
        raise CLIError(f"recordings: all recordings must have the same shape to be inferred together; got "
                       f"{listing}")
    return np.concatenate(items), labels, notes


def _summary_rows(result, labels):
    import numpy as np

    mean, sd = result.samples.mean(axis=1), result.samples.std(axis=1)
    q05, q95 = np.quantile(result.samples, [0.05, 0.95], axis=1)
    rows = []
    for i, label in enumerate(labels):
        row = {"recording": label}
        for j, n in enumerate(result.names):
            row.update({f"{n}_mean": mean[i, j], f"{n}_sd": sd[i, j], f"{n}_q05": q05[i, j],
                        f"{n}_q95": q95[i, j]})
        row.update(ood_score=result.ood_score[i], ood_pvalue=result.ood_pvalue[i],
                   flagged=bool(result.flagged[i]), corrections="; ".join(result.corrections[i]))
        rows.append({k: (v if isinstance(v, (str, bool)) else _finite_or_none(v)) for k, v in row.items()})
    return rows


def _finite_or_none(v):
    import math

    v = float(v)
    return v if math.isfinite(v) else None


def _write_inference(result, labels, path: Path, fmt: str, posterior_path: str) -> None:
    import csv

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        with open(path, "wb") as fh:  # a file object: np.savez adds no ".npz" to the name
            np.savez(fh, samples=result.samples, names=np.array(result.names), recordings=np.array(labels),
                     x=result.x, ood_score=result.ood_score, ood_pvalue=result.ood_pvalue,
                     flagged=result.flagged, mean=result.samples.mean(axis=1), sd=result.samples.std(axis=1),
                     source=result.source, corrections=np.array(["; ".join(c) for c in result.corrections]))
        return
    rows = _summary_rows(result, labels)
    if fmt == "json":
        path.write_text(json.dumps({"posterior": str(posterior_path), "parameters": list(result.names),
                                    "num_samples": int(result.samples.shape[1]), "recordings": rows},
                                   indent=1) + "\n")
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


_OUT_FORMATS = ("csv", "json", "npz")


def cmd_infer(args) -> None:
    import numpy as np

    import bmsbi

    fmt = args.format
    suffix = None if args.out is None else Path(args.out).suffix.lower().lstrip(".")
    if args.out is not None and fmt is None:
        fmt = suffix
        if fmt not in _OUT_FORMATS:
            raise CLIError(f"--out: cannot tell the format from {args.out!r}; end it in .csv, .json or .npz, "
                           "or pass --format")
    elif suffix in _OUT_FORMATS and suffix != fmt:
        raise CLIError(f"--out: {args.out!r} ends in .{suffix} but --format is {fmt}; name the file "
                       f"*.{fmt}, or drop --format to write {suffix}")
    if args.num_samples < 2:
        raise CLIError(f"--num-samples: expected at least 2, got {args.num_samples}")
    if args.out is not None:
        _writable(args.out, "--out")
    if args.fs is not None and not (args.fs > 0 and math.isfinite(args.fs)):
        raise CLIError(f"--fs: expected a sampling rate in Hz (a positive number), got {args.fs}")
    channels = None if args.channels is None else [c.strip() for c in args.channels.split(",")]
    posterior = _load_posterior(args.posterior)
    batch, labels, notes = _recordings(posterior, args.recordings, fs=args.fs, channels=channels)
    if args.trials:  # every file (row, or epoch of one long recording) a trial of ONE experiment
        if isinstance(batch, list) and len(batch) == 1:
            batch = batch[0]  # one recording: its epochs are the trials
        name = labels[0] if len(labels) == 1 else f"{len(labels)} files"
        batch, labels = bmsbi.Trials(batch, name=f"trials of {name}"), [f"trials of {name}"]
    with warnings.catch_warnings(record=True) as caught:
        # reported below, one line each: OOD flags, what was done to the recordings, and
        # any other warning (e.g. draws clipped to the prior's box) as one "warning:" line
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        warnings.simplefilter("ignore", bmsbi.RecordingWarning)
        try:
            result = posterior.infer(_key(args.seed), batch, args.num_samples, long=args.long,
                                     robust=args.robust)
        except ValueError as exc:
            raise CLIError(_first_line(exc).replace("pass long='epochs'", "pass --long epochs")) from None
    for w in dict.fromkeys(_first_line(w.message) for w in caught):
        print(f"bmsbi infer: warning: {w}", file=sys.stderr)
    if not isinstance(batch, list) and len(result) != len(labels):  # a plain batch split into epochs
        labels = [labels[s] + lab[len(str(s)):] for s, lab in zip(result.source, result.labels)]
    elif isinstance(batch, list):
        labels = result.labels
    for note in notes:
        print(f"bmsbi infer: warning: {note}", file=sys.stderr)
    for label, done in zip(labels, result.corrections):
        if done:
            print(f"bmsbi infer: note: {label}: {'; '.join(done)}", file=sys.stderr)
    if result.misfit is not None:
        for i, label in enumerate(labels):
            if np.isfinite(result.ess[i]):
                worst = ", ".join(f"{n} {v:+.1f}" for n, v in result.misfits(i, top=3))
                print(f"bmsbi infer: robust: {label}: matched {result.ess[i]:.1f} effective simulations; "
                      f"largest misfits (training sds): {worst}", file=sys.stderr)
    print(result.table(labels=labels))
    if args.out is not None:
        _write_inference(result, labels, Path(args.out), fmt, args.posterior)
        print(f"wrote {fmt} for {len(labels)} recordings to {args.out}")
    flagged = [lab for lab, f in zip(labels, result.flagged) if f]
    if flagged:
        shown = ", ".join(flagged[:5]) + (" ..." if len(flagged) > 5 else "")
        why = ("robust inference matched them on the features the model reproduces" if args.robust
               else "their posteriors should not be trusted; --robust matches them instead of extrapolating")
        print(f"bmsbi infer: warning: {len(flagged)} of {len(labels)} recordings are out of distribution "
              f"(unlike every training simulation; {why}): {shown}", file=sys.stderr)
        if args.fail_on_ood:
            raise _Exit(3)


class _Exit(Exception):
    """Leave with a given status after normal output (no error message)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


# ------------------------------------------------------------------- diagnose
def cmd_diagnose(args) -> None:
    import jax

    out = _writable(args.out, "--out", folder=True)
    posterior = _load_posterior(args.posterior)
    k_sim, k_cal = jax.random.split(_key(args.seed))
    if args.bank is not None:
        bank = _load_bank(args.bank)
        if tuple(bank.x_shape) != tuple(posterior.x_shape) or bank.dim != posterior.dim:
            raise CLIError(f"bank: {args.bank} holds x of shape {bank.x_shape} and {bank.dim} parameters; "
                           f"the posterior takes x of shape {posterior.x_shape} and {posterior.dim} "
                           f"parameters ({', '.join(posterior.names)})")
        if args.num_simulations is not None:
            bank = bank[:args.num_simulations]
        source = f"bank {args.bank}"
    else:
        ref = args.task or posterior.training.get("task")
        if not ref:
            raise CLIError("the posterior does not name its task; pass --bank BANK (held-out simulations) "
                           "or --task TASK")
        task = (_task(ref, source="--task") if args.task else
                _task(ref, source="posterior: its task", fix="; pass --task or --bank to use another"))
        if posterior.summary is not None and posterior.summary != task.summary:
            task = task.with_summary(posterior.summary)
        if tuple(task.prior.names) != tuple(posterior.names):
            raise CLIError(f"--task: task {task.ref!r} has parameters {task.prior.names}, the posterior "
                           f"{posterior.names}")
        bank = task.bank(args.num_simulations or 300, k_sim, progress=not args.quiet)
        source = f"{len(bank)} fresh simulations of task {task.ref!r} (seed {args.seed})"
    if len(bank) < 2:
        raise CLIError(f"need at least 2 held-out simulations, got {len(bank)}")
    finite = bank.finite_mask()
    from .demo import calibration_checks

    cal = calibration_checks(posterior, bank.theta[finite], bank.x[finite], key=k_cal, out=out,
                             num_samples=args.num_samples)
    lines = [f"bmsbi diagnose — posterior {args.posterior} ({', '.join(posterior.names)}) on {source}",
             *cal["lines"],
             f"files: {', '.join(sorted({p.name for p in out.iterdir()} | {'report.txt', 'report.json'}))}"]
    report = {"posterior": str(args.posterior), "source": source, "parameters": list(posterior.names),
              **{k: v for k, v in cal.items() if k != "lines"}}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ----------------------------------------------------------------------- demo
def cmd_demo(args) -> None:
    from .demo import run_demo

    _task(args.task, source="--task")
    run_demo(task_name=args.task, out=_writable(args.out, "--out", folder=True), num_simulations=args.num_simulations,
             seed=args.seed, quiet=args.quiet)


_INFER_DESCRIPTION = ("Sample the posterior for every RECORDING in one batched call and print the "
    "posterior mean ± sd per parameter with an out-of-distribution (OOD) score. A "
    "recording is a .npy file (time, regions), (time,) or a batch (m, time, regions), "
    "a .csv file (rows = time, columns = regions; an optional header line of names), "
    "a .npz or .mat file, or (with pip install 'bmsbi[mne]') an EDF/BDF, FIF, "
    "BrainVision or EEGLAB file. Recordings are fitted to what the posterior was trained "
    "on: another sampling rate is resampled, channels are reordered by name, a longer "
    "recording is refused or (--long epochs) split into epochs; each change is printed "
    "as a note on stderr and stored in --out. .npy/.csv files carry no rate: give --fs "
    "or a side-car .json ({\"fs\": 250}) beside them. A file holding NaN, inf or complex "
    "values is refused (exit 2, naming it; nothing is inferred, even when other files are "
    "fine). Recordings "
    "unlike every training simulation are flagged in the table and named in a warning "
    "on stderr; the exit status stays 0 (the output is valid, the flag is part of it) "
    "unless --fail-on-ood is given.")
_DIAGNOSE_DESCRIPTION = ("Check a posterior's calibration on held-out simulations: simulation-based "
    "calibration (rank uniformity), expected coverage of credible regions and posterior "
    "z-score vs shrinkage. The simulations come from --bank (one the posterior was not "
    "trained on) or are simulated afresh from --task (default: the task the posterior "
    "was trained on). Writes sbc.png, coverage.png, zscore_shrinkage.png, report.txt "
    "and report.json into --out and prints the report.")


_REF_HELP = ("package.module:attribute naming a simulators.Task of your own (or a zero-argument "
             "function returning one; the current folder is searched first)")
_ENTRY_POINT_GROUP = "bmsbi.tasks"  # simulators.ENTRY_POINT_GROUP; cli imports simulators lazily


# -------------------------------------------------------------------- compare
_COMPARE_DESCRIPTION = ("Which model? Train: `bmsbi compare BANK BANK... --out FILE` trains a "
    "bmsbi.ModelComparison (a classifier over model indices) on one bank per candidate model (all "
    "with the same summary and recording format) and saves it; the models are named after the "
    "banks' tasks (else their file names) unless --names is given. Apply: `bmsbi compare --load "
    "FILE RECORDING...` prints the posterior model probabilities of every RECORDING (files as "
    "for `bmsbi infer`) and, with --out table.csv or table.json, writes them.")


def _comparison_names(args, paths, banks) -> list:
    if args.names is not None:
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != len(banks) or not all(names):
            raise CLIError(f"--names: expected {len(banks)} comma-separated names (one per bank), got "
                           f"{args.names!r}")
    else:
        names = [_bank_task_name(b.meta) or Path(p).stem for p, b in zip(paths, banks)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CLIError(f"--names: every model needs its own name, but {repeated} name several banks; "
                       "pass --names")
    return names


def _prior_probs(text, k: int):
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise CLIError(f"--prior-probs: expected {k} comma-separated numbers, got {text!r}") from None
    if len(values) != k:
        raise CLIError(f"--prior-probs: expected {k} numbers (one per model), got {len(values)}")
    return values


def cmd_compare(args) -> None:
    import bmsbi

    if args.load is not None:
        return _apply_comparison(args)
    if args.out is None:
        raise CLIError("--out: expected the file to write the trained comparison to (or --load FILE to "
                       "apply a trained one to recordings)")
    if len(args.paths) < 2:
        raise CLIError(f"BANK: expected at least two banks (one per candidate model), got {len(args.paths)}")
    out = _writable(args.out, "--out")
    banks = [_load_bank(p) for p in args.paths]
    names = _comparison_names(args, args.paths, banks)
    settings = {} if args.max_epochs is None else {"max_epochs": args.max_epochs}
    mc = bmsbi.ModelComparison(prior_probs=_prior_probs(args.prior_probs, len(banks)), **settings)
    t0 = time.perf_counter()
    mc.fit(dict(zip(names, banks)), key=_key(args.seed), progress=not args.quiet)
    seconds = time.perf_counter() - t0
    mc.save(out)
    h = mc.history
    sizes = ", ".join(f"{n} {len(b)}" for n, b in zip(names, banks))
    print(f"trained a comparison of {len(names)} models ({sizes} simulations): {h.epochs} epochs in "
          f"{seconds:.1f} s, best validation cross-entropy {h.best_val_loss:.4f}; wrote {out}")


def _apply_comparison(args) -> None:
    import bmsbi
    from bmsbi.comparison import format_rows

    if args.prior_probs is not None or args.names is not None or args.max_epochs is not None:
        raise CLIError("--load: applies a trained comparison; --names, --prior-probs and --max-epochs "
                       "belong to training")
    fmt = None if args.out is None else Path(args.out).suffix.lower().lstrip(".")
    if fmt is not None and fmt not in ("csv", "json"):
        raise CLIError(f"--out: with --load it writes the table; end it in .csv or .json, got {args.out!r}")
    if args.out is not None:
        _writable(args.out, "--out")
    if args.fs is not None and not (args.fs > 0 and math.isfinite(args.fs)):
        raise CLIError(f"--fs: expected a sampling rate in Hz (a positive number), got {args.fs}")
    p = _existing(args.load, "--load")
    if p.is_dir():
        raise CLIError(f"--load: {args.load} is a folder, expected a file from `bmsbi compare --out`")
    try:
        mc = bmsbi.load_model_comparison(p)
    except ValueError as exc:
        raise CLIError(f"--load: {_strip_arg(exc)}") from None
    channels = None if args.channels is None else [c.strip() for c in args.channels.split(",")]
    batch, labels, notes = _recordings(mc, args.paths, fs=args.fs, channels=channels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", bmsbi.RecordingWarning)  # the notes below say it
        rows = mc.rows(batch, labels)
    for w in dict.fromkeys(_first_line(w.message) for w in caught):
        print(f"bmsbi compare: warning: {w}", file=sys.stderr)
    for note in notes:
        print(f"bmsbi compare: warning: {note}", file=sys.stderr)
    print(format_rows(rows, mc.models))
    if args.out is not None:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            path.write_text(json.dumps({"comparison": str(args.load), "models": list(mc.models),
                                        "recordings": rows}, indent=1) + "\n")
        else:
            import csv

            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        print(f"wrote {fmt} for {len(rows)} recordings to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmsbi",
        description="Simulation-based, amortized inference for brainmass neural-mass models.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    d = sub.add_parser("demo", help="end-to-end run on an embedded default model",
                       description="Simulate a bank for a brainmass model, train NPE, infer on a "
                                   "held-out synthetic recording, check calibration and write plots, "
                                   "a netCDF InferenceData and a text report.")
    d.add_argument("--out", default="bmsbi-demo", help="output folder (default: %(default)s)")
    d.add_argument("--task", default="hopf_node",
                   help=f"task name (see `bmsbi tasks`) or {_REF_HELP} (default: %(default)s)")
    d.add_argument("--num-simulations", type=int, default=None, help="bank size (default: the task's budget)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("simulate", help="simulate a bank for a task (ready-made or your own)",
                       description="Simulate NUM_SIMULATIONS draws from a task's prior and write the "
                                   "bank (a folder: resumable; or a .npz file). The bank records the "
                                   "task, so `bmsbi train` and `bmsbi diagnose` find it again.")
    s.add_argument("task", help=f"task name (see `bmsbi tasks`) or {_REF_HELP}")
    s.add_argument("-n", "--num-simulations", type=int, default=None,
                   help="number of simulations (default: the task's budget, see `bmsbi tasks`)")
    s.add_argument("--out", required=True,
                   help="bank folder (resumable: the same arguments resume it, other arguments are refused) "
                        "or .npz file (an existing one is refused unless --force)")
    s.add_argument("--force", action="store_true", help="overwrite an existing .npz --out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunk-size", type=int, default=None)
    s.add_argument("--trials", type=int, default=None,
                   help="iid trials per parameter draw, each with its own noise (x: (n, TRIALS, ...)); NPE "
                        "trained on it takes 1..TRIALS trials of one experiment (bmsbi infer --trials)")
    s.add_argument("--on-invalid", choices=["drop", "raise", "keep"], default="drop")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_simulate)

    tr = sub.add_parser("train", help="train an estimator on a bank and save the posterior",
                        description="Train NPE (or NLE / NRE) on a bank written by `bmsbi simulate` and "
                                    "save the amortized posterior. The prior comes from the bank (its "
                                    "task or stored prior) unless --task is given. The posterior keeps "
                                    "the bank's summary pipeline, so `bmsbi infer` takes raw recordings.")
    tr.add_argument("bank", help="bank folder or .npz file")
    tr.add_argument("--out", required=True, help="posterior file to write (e.g. hopf.bmsbi)")
    tr.add_argument("--estimator", choices=_ESTIMATORS, default="npe", help="default: %(default)s")
    tr.add_argument("--task", default=None, help="take the prior from this task (a name or "
                                                  "package.module:attribute) instead of the bank's meta")
    tr.add_argument("--max-epochs", type=int, default=None,
                    help="training epochs at most (default: the estimator's own, early stopping applies)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=cmd_train)

    inf = sub.add_parser(
        "infer", help="posteriors for recordings, with an out-of-distribution flag",
        description=_INFER_DESCRIPTION,
        epilog="exit status: 0 success (also with flagged recordings), 2 bad input, 3 flagged "
               "recordings with --fail-on-ood")
    inf.add_argument("posterior", help="posterior file (from `bmsbi train`)")
    inf.add_argument("recordings", nargs="+", metavar="RECORDING",
                     help="recording file: .npy, .csv, .npz, .mat, or (with bmsbi[mne]) .edf, .bdf, .fif, "
                          ".vhdr, .set")
    inf.add_argument("--fs", type=float, default=None,
                     help="sampling rate (Hz) of .npy/.csv recordings (default: their side-car .json, "
                          "else the rate the posterior was trained on, with a warning)")
    inf.add_argument("--channels", default=None,
                     help="comma-separated channel names: the columns of .npy/.csv files, or the "
                          "channels to keep (in this order) from files that name theirs")
    inf.add_argument("--long", choices=["refuse", "epochs"], default="refuse",
                     help="recordings longer than the trained length: refuse them (default), or split "
                          "each into whole epochs of that length (one row each; the tail dropped is "
                          "reported)")
    inf.add_argument("--trials", action="store_true",
                     help="read all RECORDINGs (rows of a batch file, or the epochs of one long recording) as iid "
                          "trials of ONE experiment: one posterior given all of them (NLE/NRE posteriors, or NPE "
                          "trained on a bank with trials)")
    inf.add_argument("--num-samples", type=int, default=1000, help="posterior draws per recording "
                                                                    "(default: %(default)s)")
    inf.add_argument("--out", default=None, help="write the results: .npz (samples, names, OOD scores), "
                                                 ".csv or .json (summary table: means, sds, 5%%/95%% "
                                                 "quantiles, ood_score, ood_pvalue, flagged)")
    inf.add_argument("--format", choices=list(_OUT_FORMATS), default=None,
                     help="format of --out (default: from its suffix); the file is written at exactly "
                          "the path given, and a suffix .csv/.json/.npz that contradicts --format is "
                          "refused")
    inf.add_argument("--robust", nargs="?", type=float, const=True, default=False, metavar="SCALE",
                     help="robust inference for recordings the model cannot fully reproduce: the posterior "
                          "is the mixture of the network's posteriors at the training simulations that match "
                          "each recording under a heavy-tailed error per feature (Cauchy SCALE in training "
                          "sds, default 0.5); prints the features that do not match (NPE posteriors)")
    inf.add_argument("--seed", type=int, default=0)
    inf.add_argument("--fail-on-ood", action="store_true",
                     help="exit with status 3 when any recording is out of distribution")
    inf.set_defaults(func=cmd_infer)

    dg = sub.add_parser(
        "diagnose", help="calibration checks (SBC, coverage, z-score/shrinkage) with plots",
        description=_DIAGNOSE_DESCRIPTION)
    dg.add_argument("posterior", help="posterior file (from `bmsbi train`)")
    src = dg.add_mutually_exclusive_group()
    src.add_argument("--bank", default=None, help="held-out bank folder or .npz file")
    src.add_argument("--task", default=None, help="simulate held-out data from this task (a name or "
                                                   "package.module:attribute)")
    dg.add_argument("-n", "--num-simulations", type=int, default=None,
                    help="held-out simulations to use (default: 300 simulated; all of --bank)")
    dg.add_argument("--num-samples", type=int, default=200,
                    help="posterior draws per simulation for SBC and z-scores (default: %(default)s)")
    dg.add_argument("--out", default="bmsbi-diagnose", help="output folder (default: %(default)s)")
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--quiet", action="store_true", help="no progress bars")
    dg.set_defaults(func=cmd_diagnose)

    cp = sub.add_parser("compare", help="which model? train a model comparison on banks, or apply one",
                        description=_COMPARE_DESCRIPTION)
    cp.add_argument("paths", nargs="+", metavar="BANK|RECORDING",
                    help="bank folders or .npz files (training), or recording files (with --load)")
    cp.add_argument("--out", default=None, help="training: the comparison file to write (e.g. which.bmsbi); "
                                                "with --load: a .csv or .json table of the probabilities")
    cp.add_argument("--load", default=None, metavar="FILE",
                    help="apply this trained comparison (from `bmsbi compare --out`) to the RECORDINGs")
    cp.add_argument("--names", default=None, help="comma-separated model names, one per BANK (default: "
                                                  "the banks' tasks, else their file names)")
    cp.add_argument("--prior-probs", default=None,
                    help="comma-separated prior model probabilities, one per BANK (default: equal)")
    cp.add_argument("--max-epochs", type=int, default=None,
                    help="training epochs at most (default: the classifier's own, early stopping applies)")
    cp.add_argument("--fs", type=float, default=None, help="with --load: sampling rate (Hz) of .npy/.csv "
                                                            "recordings (as for `bmsbi infer`)")
    cp.add_argument("--channels", default=None, help="with --load: comma-separated channel names "
                                                      "(as for `bmsbi infer`)")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--quiet", action="store_true", help="no progress bars")
    cp.set_defaults(func=cmd_compare)

    t = sub.add_parser("tasks", help="list the known tasks",
                       description="List the ready-made tasks and those installed packages expose "
                                   f"through the entry-point group {_ENTRY_POINT_GROUP!r}: name, "
                                   "parameters, default simulation budget, description (or why a task is unavailable). A task of "
                                   f"your own is also used by reference: {_REF_HELP}.")
    t.set_defaults(func=cmd_tasks)
    return p


def cmd_tasks(args) -> None:
    import simulators

    for name in simulators.list_tasks():
        try:
            task = simulators.get(name)
        except ValueError as exc:  # data from an extra that is not installed, a broken entry point
            print(f"{name:14s} {'(unavailable)':30s} {_first_line(exc).removeprefix('ref: ')}")
            continue
        print(f"{name:14s} {', '.join(task.prior.names):30s} budget {task.budget:<6d} {task.description}")


def main(argv=None) -> int:
    """Run the ``bmsbi`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    0 on success, 2 for a usage or input error (one line on stderr), 3 when
    ``bmsbi infer --fail-on-ood`` flags a recording.

    Examples
    --------
    >>> from bmsbi.cli import main
    >>> main(["tasks"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    for name in ("num_simulations", "num_samples", "max_epochs", "chunk_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"bmsbi {args.verb}: error: --{name.replace('_', '-')}: expected a positive integer, "
                  f"got {value}", file=sys.stderr)
            return 2
    if args.verb != "tasks":  # every verb that compiles: reuse what earlier runs compiled
        enable_compilation_cache()
    try:
        args.func(args)
    except _Exit as exc:
        return exc.status
    except (CLIError, ValueError, OSError) as exc:
        # User errors from the command or the library (missing file, wrong shape, newer
        # schema ...): one line, no traceback.
        print(f"bmsbi {args.verb}: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    if getattr(args, "verbose_time", False):
        print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
