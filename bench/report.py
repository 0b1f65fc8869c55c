"""The outputs of a run: a table for people, JSON for programs, PNG charts.

All three are made from the same :class:`~bench.results.BenchDocument`, so they
never disagree; :meth:`~bench.results.BenchDocument.to_json` is the JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from .cases import (
    CASES,
    CEILING_DESCRIPTIONS,
    CEILING_NAMES,
    FRAMEWORK_DESCRIPTION,
    LOWER_IS_BETTER,
    SCALING_BASE,
    SCALING_TARGETS,
    SCALING_TOP,
    UPLOAD_DESCRIPTION,
)
from .lookups import TARGET as LOOKUP_TARGET
from .procfs import ProcessMemory
from .results import BenchDocument, Figure, LookupFigure, ServerRun

MIB = 1 << 20
MEMORY_PHASES = ("idle", "after_load")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s"
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:,.1f} {unit}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _run_title(doc: BenchDocument, run: ServerRun) -> str:
    o = doc.options
    return (f"{run.buffers:,} buffers of {_size(run.buffer_size)} ({run.layout} layout), "
            f"large buffer {_size(run.large_size)}, workers={run.workers} -- "
            f"load: {doc.load_generator.description}, {o.connections} connections; "
            f"{o.duration:g} s per case" + (f" after {o.warmup:g} s warm-up" if o.warmup else ""))


def _figure_row(fig: Figure) -> str:
    ceiling = ""
    if fig.ceiling:
        measured = fig.ceiling_value is not None
        ceiling = f"{fig.ceiling} {_number(fig.ceiling_value, fig.unit) if measured else '(not run)'}"
    target = ""
    if fig.target is not None:
        verdict = {True: "met", False: "MISSED", None: ""}[fig.met]
        target = f">={fig.target:.2f} {verdict}"
    cpu = fig.server_cpu_us_per_request
    value = _number(fig.value, fig.unit)
    if fig.mb_s is not None:  # small PUTs: requests, and bytes as the issue asks
        value += f" ({fig.mb_s:.2f} MB/s)"
    ratio = _ratio(fig.ratio)
    if fig.target is not None and fig.ratio is not None and ratio == f"{fig.target:.2f}":
        ratio = f"{fig.ratio:.3f}"  # 0.8995 is no "0.90" beside ">=0.90 MISSED"
    return (f"{fig.label:<28} {value:>28}   {ceiling:<40} {ratio:>6}  {target:<13} "
            f"{'' if cpu is None else f'{cpu:,.0f}':>10}   {_second_ceiling(fig)}").rstrip()


def _second_ceiling(fig: Figure) -> str:
    """The other ceiling some figures have: "name value (hashserver / it)"."""
    for name, other in (("Sanic, constant body", fig.framework_value), ("curl -T into a file", fig.upload_value)):
        if other:
            share = f" ({fig.value / other:.2f}x)" if fig.value else ""
            return f"{name} {_number(other, fig.unit)}{share}"
    return ""


def _memory_rows(phase: str, procs: list[ProcessMemory]) -> list[str]:
    lines = ["", (f"memory, {phase.replace('_', ' ')}:  {'pid':>7} {'RSS MiB':>9} "
                  f"{'PSS MiB':>9} {'USS MiB':>9} {'anon MiB':>9} {'index RSS':>10} {'index PSS':>10}")]
    for p in procs:
        lines.append(f"  {p.role:<20} {p.pid:>7} {p.rss / MIB:>9.1f} "
                     f"{_mib(p.pss):>9} {_mib(p.uss):>9} {_mib(p.anon):>9} "
                     f"{_mib(p.index_rss):>10} {_mib(p.index_pss):>10}")
    lines.append(f"  {'total':<20} {'':>7} {sum(p.rss for p in procs) / MIB:>9.1f} "
                 f"{_mib(_sum(p.pss for p in procs)):>9} {_mib(_sum(p.uss for p in procs)):>9} "
                 f"{_mib(_sum(p.anon for p in procs)):>9} "
                 f"{_mib(_sum(p.index_rss or 0 for p in procs)):>10} "
                 f"{_mib(_sum(p.index_pss or 0 for p in procs)):>10}")
    return lines


def run_table(doc: BenchDocument, run: ServerRun) -> str:
    lines = [_run_title(doc, run)]
    header = (f"{'figure':<28} {'hashserver':>28}   {'ceiling':<40} {'ratio':>6}  {'target':<13}"
              f" {'CPU us/req':>10}   {'second ceiling (hashserver / it)':<36}")
    lines += [header, "-" * len(header)]
    lines += [_figure_row(fig) for fig in run.figures.values()]
    lines += [_other_dataset(fig) for fig in run.figures.values() if fig.dataset_buffers]
    for phase in MEMORY_PHASES:
        if run.memory.get(phase):
            lines += _memory_rows(phase, run.memory[phase])
    if run.problems:
        lines.append("")
        lines += [f"problem: {p}" for p in run.problems]
    return "\n".join(lines)


def _other_dataset(fig: Figure) -> str:
    """A note under the table for a figure measured on another dataset than the run's."""
    walked = "; ".join(f"{name} {end - start:,}" for name, (start, end) in (fig.walked or {}).items())
    return (f"  {fig.label}: over the {fig.dataset_buffers:,}-buffer dataset, servers started for it, "
            f"one shuffled list of its checksums walked once (each requested at most once in this run; "
            f"checksums used: {walked or 'none'})")


def legend(doc: BenchDocument) -> list[str]:
    """What each ceiling in the tables is."""
    used = {fig.ceiling for run in doc.runs for fig in run.figures.values()}
    lines = ["ceilings:"] + [f"  {CEILING_NAMES[key]}: {text}" for key, text in CEILING_DESCRIPTIONS.items()
                             if CEILING_NAMES[key] in used and key != "sha3_put"]
    figures = [fig for run in doc.runs for fig in run.figures.values()]
    if any(fig.framework_value for fig in figures):
        lines.append(f"  {FRAMEWORK_DESCRIPTION}")
    if any(fig.upload_value for fig in figures):
        lines.append(f"  {UPLOAD_DESCRIPTION}")
    return lines if len(lines) > 1 else []


def _ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f}"


def _sum(values: Iterable[int | None]) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _value(run: ServerRun | None, key: str) -> float | None:
    fig = run.figures.get(key) if run is not None else None
    return fig.value if fig is not None else None


def _by_workers(doc: BenchDocument) -> dict[int, list[ServerRun]]:
    """The runs of each worker count, from the smallest directory to the largest."""
    return {w: sorted((r for r in doc.runs if r.workers == w), key=lambda r: r.buffers)
            for w in sorted({r.workers for r in doc.runs})}


def scaling_table(doc: BenchDocument) -> str:
    """Each figure across directory sizes, per worker count: 1,000,000 against 10,000 when both
    ran (else the largest against the smallest), with issue 11's targets where it sets one."""
    sizes = sorted({r.buffers for r in doc.runs})
    if len(sizes) < 2:
        return ""
    base = SCALING_BASE if SCALING_BASE in sizes else sizes[0]
    top = SCALING_TOP if SCALING_TOP in sizes else sizes[-1]
    judged = (base, top) == (SCALING_BASE, SCALING_TOP)
    targets = ", ".join(f"{CASES[k].label} >= {t:.2f}" for k, t in SCALING_TARGETS.items())
    lines = [(f"scaling: {', '.join(f'{s:,}' for s in sizes)} buffers (ratio: {top:,} / {base:,}; "
              + (f"targets: {targets})" if judged else f"targets, at 1,000,000 / 10,000 only: {targets})"))]
    for workers, worker_runs in _by_workers(doc).items():
        runs = {r.buffers: r for r in worker_runs}
        lines.append(f"workers={workers}")
        lines.append(f"  {'figure':<28}" + "".join(f"{s:>16,}" for s in sizes) + f"{'ratio':>9}  target")
        for key, fig in runs[sizes[0]].figures.items():
            if fig.dataset_buffers:  # measured on one dataset whatever the run's size
                continue
            unit = CASES[key].unit
            values = [_value(runs.get(s), key) for s in sizes]
            row = f"  {CASES[key].label:<28}" + "".join(
                f"{_number(v, unit).replace(' ' + unit, ''):>16}" for v in values)
            low, high = _value(runs.get(base), key), _value(runs.get(top), key)
            if low and high:
                change = high / low
                row += f"{change:>9.3f}"
                if judged and key in SCALING_TARGETS:
                    verdict = "met" if change >= SCALING_TARGETS[key] else "MISSED"
                    row += f"  >={SCALING_TARGETS[key]:.2f} {verdict}"
            lines.append(row.rstrip())
    return "\n".join(lines)


def lookup_table(figures: list[LookupFigure]) -> str:
    """The in-process lookup benchmark: each size against the smallest."""
    if not figures:
        return ""
    base = figures[0]
    lines = [(f"in-process lookups in the index alone (generated checksums, half present; medians of "
              f"{len(base.rounds)} rounds; ratio: / the smallest size, target >= {LOOKUP_TARGET:.2f} "
              "at the largest)"),
             (f"  {'entries':>12} {'index MiB':>10} {'bits':>5} {'build s':>8} "
              f"{f'x{base.batch} checksums/s':>22} {'ratio':>6} {'single lookups/s':>17} {'ratio':>6}")]
    for fig in figures:
        batch, single = fig.batch_per_s / base.batch_per_s, fig.single_per_s / base.single_per_s
        mark = " MISSED" if fig is figures[-1] and min(batch, single) < LOOKUP_TARGET else ""
        lines.append(f"  {fig.entries:>12,} {fig.index_bytes / MIB:>10.1f} {fig.fanout_bits:>5} "
                     f"{fig.build_s:>8.2f} {fig.batch_per_s:>22,.0f} {batch:>6.2f} "
                     f"{fig.single_per_s:>17,.0f} {single:>6.2f}{mark}")
    return "\n".join(lines)


def full_table(doc: BenchDocument) -> str:
    m = doc.machine
    parts = [(f"hashserver bench on {m.cpu_model} ({m.cpu_count} CPUs), Python {m.python}, "
              f"Sanic {m.sanic}, {m.nginx or 'no nginx'}, {m.wrk or 'no wrk'}; "
              f"load average at start {m.load_average_at_start}, at end {m.load_average_at_end}")]
    parts += [f"note: {n}" for n in doc.notes]
    for run in doc.runs:
        parts += ["", run_table(doc, run)]
    for extra in (scaling_table(doc), lookup_table(doc.lookups), "\n".join(legend(doc))):
        if extra:
            parts += ["", extra]
    return "\n".join(parts) + "\n"


def write_json(doc: BenchDocument, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(doc.to_json(), f, indent=1)
    os.replace(path + ".tmp", path)


def write_charts(doc: BenchDocument, out: str) -> tuple[list[str], str | None]:
    """PNG charts; (paths written, note if they could not be made)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ("matplotlib is not installed (pip install 'hashserver-sanic[bench]'): "
                    "no PNG chart")
    written = [_ratio_chart(doc, plt, os.path.join(out, "bench.png"))] if doc.runs else []
    if len({r.buffers for r in doc.runs}) > 1:
        written.append(_scaling_chart(doc, plt, os.path.join(out, "scaling.png")))
    return written, None


def _save(fig, plt, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ratio_panel(ax, run: ServerRun) -> None:
    """Each figure of one run as a fraction of its ceiling, with its target."""
    items = [f for f in run.figures.values() if f.ratio is not None]
    ratios = [f.ratio for f in items]
    colors = ["tab:green" if f.met else "tab:red" if f.met is False else "tab:blue" for f in items]
    ys = range(len(items))
    ax.barh(ys, ratios, color=colors)
    for y, f in zip(ys, items, strict=True):
        if f.target is not None:
            ax.plot([f.target] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(f.ratio, y, f"  {_number(f.value, f.unit)} vs "
                f"{f.ceiling} {_number(f.ceiling_value, f.unit)}", va="center", fontsize=7)
    ax.axvline(1.0, color="grey", linestyle=":")
    # Room on the right for the labels, which state the absolute figures.
    ax.set_xlim(min([0.01, *[r / 2 for r in ratios]]), 1000)
    ax.set_yticks(list(ys), [f.label for f in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio to ceiling (higher is better; black tick: target)")
    ax.set_title(f"{run.buffers:,} buffers, workers={run.workers}", fontsize=10)


def _ratio_chart(doc: BenchDocument, plt, path: str) -> str:
    """One panel per run: each figure as a fraction of its ceiling, with its target."""
    runs = doc.runs
    sizes = sorted({r.buffers for r in runs})
    workers = sorted({r.workers for r in runs})
    rows = max(sum(f.ratio is not None for f in r.figures.values()) for r in runs)
    fig, axes = plt.subplots(len(sizes), len(workers), squeeze=False,
                             figsize=(8 * len(workers), (1.2 + 0.38 * rows) * len(sizes)))
    for run in runs:
        _ratio_panel(axes[sizes.index(run.buffers)][workers.index(run.workers)], run)
    fig.suptitle(f"hashserver vs ceilings -- {doc.machine.cpu_model}, "
                 f"{doc.machine.cpu_count} CPUs, {doc.load_generator.description}",
                 fontsize=10)
    return _save(fig, plt, path)


def _scaling_chart(doc: BenchDocument, plt, path: str) -> str:
    """Each figure relative to its value at the smallest directory size."""
    by_workers = _by_workers(doc)
    fig, axes = plt.subplots(1, len(by_workers), squeeze=False,
                             figsize=(6.5 * len(by_workers), 5))
    colors = plt.get_cmap("tab20").colors  # more figures than the default cycle has colors
    for col, (w, runs) in enumerate(by_workers.items()):
        ax = axes[0][col]
        for n, key in enumerate(runs[0].figures):
            if CASES[key].unit in LOWER_IS_BETTER:
                continue
            base = _value(runs[0], key)
            points = [(r.buffers, v / base) for r in runs
                      if base and (v := _value(r, key))]
            ax.plot([x for x, _ in points], [y for _, y in points], marker="os^v"[n % 4],
                    color=colors[n % len(colors)], label=CASES[key].label)
        ax.axhspan(0.9, 1.1, color="green", alpha=0.1)
        ax.set_xscale("log")
        ax.set_xlabel("buffers in the directory")
        ax.set_ylabel("figure / figure at the smallest size")
        ax.set_title(f"workers={w}")
        ax.legend(fontsize=7)
    return _save(fig, plt, path)
