"""``python -m bench``: options, then run the suite and write the outputs."""

from __future__ import annotations

import argparse
import os
import sys

from .cases import CASES
from .report import full_table, write_charts, write_json
from .results import Options, Outputs
from .soak import MIX, SoakOptions, run_soak
from .suite import Suite

SCALING_SIZES = [10_000, 100_000, 1_000_000]
LOOKUP_SCALING_SIZES = [10_000, 1_000_000, 10_000_000]  # index entries, in-process (bench.lookups)
# A smoke run: every case and code path, in well under a minute.  One worker
# count (2: still several workers) because each count costs a full set of cases.
# The cold GET's list must outlast a second of nginx and one of hashserver, even
# on a machine where wrk's one thread gets 150,000 answers a second from nginx.
QUICK = {"buffers": [2000], "workers": [2], "duration": 1.0, "warmup": 0.0, "large_mib": 16,
         "sha3_seconds": 0.3, "lookup_rounds": 1, "lookup_seconds": 0.05, "cold_buffers": 200_000}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, not {text!r}")
    return values


def _case_list(text: str) -> list[str]:
    keys = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown case(s) {', '.join(unknown)}; "
                                         f"choose from {', '.join(CASES)}")
    return keys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark hashserver as users run it, side by side with nginx on the same "
        "directory and single-core SHA3-256, and report every figure as a ratio to its ceiling.")
    p.add_argument("--buffers", type=_int_list, default=None, metavar="N[,N...]",
                   help="small buffers in the directory (default 100000; --quick: 2000); "
                   "several sizes are compared as in --scaling")
    p.add_argument("--scaling", action="store_true",
                   help="run 10,000, 100,000 and 1,000,000 buffers and compare "
                   "(the same as --buffers 10000,100000,1000000)")
    p.add_argument("--lookup-scaling", type=_int_list, default=None, metavar="N[,N...]",
                   help="also look checksums up in-process in indexes of N generated entries "
                   "(no files; --scaling: 10000,1000000,10000000); alone, without --buffers, "
                   "--scaling or --quick, only this runs")
    p.add_argument("--cold-buffers", type=int, default=None, metavar="N",
                   help="the cold GET (get_cold: GET 1 KiB of buffers not read before) runs on the "
                   "dataset of N buffers whatever --buffers says, in each run (worker count): a "
                   "new hashserver, then nginx, walk one shuffled list of its checksums once, each "
                   "checksum requested at most once per run, warm-up at most 1 s (with several "
                   "--buffers sizes: in the largest size's runs only); its files are read into the "
                   "page cache first, so that what is cold is the server's own memory, not the disk; "
                   "a list that runs out is reported as a problem (default 1000000; --quick: 200000)")
    p.add_argument("--workers", type=_int_list, default=None, metavar="N[,N...]",
                   help="Sanic worker counts to run (default: 1,4; --quick: 2); nginx gets as many")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="measured time per case (default 10; --quick: 1); wrk rounds up to whole seconds")
    p.add_argument("--warmup", type=float, default=None, metavar="SECONDS",
                   help="unmeasured load before each case (default 2; --quick: 0)")
    p.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("--layout", choices=("prefix", "flat"), default="prefix",
                   help="buffer directory layout (default prefix)")
    p.add_argument("--large-mib", type=int, default=None,
                   help="size of the large buffer in MiB (default 64; --quick: 16)")
    p.add_argument("--cache-dir", default="~/.cache/hashserver-bench",
                   help="where buffer directories are made and kept between runs (default %(default)s)")
    p.add_argument("--out", default="bench-results",
                   help="where bench.json, bench.png, table.txt and the server logs go "
                   "(default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="tiny directory, about a second per case, workers=2 only: a smoke run "
                   "(well under a minute), not a measurement")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                   help="load generator: wrk if installed (auto), or the built-in Python client")
    p.add_argument("--client-processes", type=int, default=None,
                   help="processes of the built-in client (default: half the CPUs, 1 to 4)")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx side-by-side figures")
    p.add_argument("--no-framework", action="store_true",
                   help="skip Sanic answering the GET route with a constant body (the framework ceiling)")
    p.add_argument("--cases", type=_case_list, default=None, metavar="KEY[,KEY...]",
                   help="only these figures: " + ", ".join(CASES))
    p.add_argument("--profile", action="store_true",
                   help="record a py-spy flame graph of the server during each case (slows it)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated buffers (default 1)")
    p.add_argument("--store", choices=("directory", "s3"), default="directory",
                   help="directory: the suite on a buffer directory (default); s3: hashserver on an S3 bucket "
                   "(SeaweedFS, started here) against the raw S3 client and the directory store (bench/s3.py)")
    soak = p.add_argument_group("soak", "instead of the suite: two writable servers on one directory under a "
                                "mixed load with cut uploads, every answer checked (bench/soak.py)")
    soak.add_argument("--soak", type=_positive_float, default=None, metavar="MINUTES",
                      help="run the soak for MINUTES; exit status 1 if any answer was wrong")
    soak.add_argument("--soak-report", default=None, metavar="PATH",
                      help="the soak's JSON report (default OUT/soak.json)")
    soak.add_argument("--soak-rate", type=_positive_float, default=100.0, metavar="OPS_PER_S",
                      help="operations per second of all client tasks together, most of them one request, "
                      "a promise six (default %(default)g)")
    soak.add_argument("--soak-connections", type=int, default=8, metavar="N",
                      help="client tasks, each with a keep-alive connection to each server (default 8)")
    soak.add_argument("--soak-mix", type=_mix, default={}, metavar="OP=WEIGHT[,...]",
                      help="change the weights of the operations (e.g. promise=50 to look for a race of "
                      "promises); default " + ",".join(f"{op}={w}" for op, w in MIX.items()))
    soak.add_argument("--soak-dir", default=None, metavar="DIR",
                      help="where the shared directory and the server logs go, kept "
                      "(default: a temporary directory, removed unless an answer was wrong)")
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def _mix(text: str) -> dict[str, int]:
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        op, _, weight = part.partition("=")
        if op not in MIX or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"expected OP=WEIGHT with OP one of {', '.join(MIX)}, not {part!r}")
        weights[op] = int(weight)
    return weights


def soak_options(args: argparse.Namespace) -> SoakOptions:
    return SoakOptions(minutes=args.soak, report=args.soak_report or os.path.join(args.out, "soak.json"),
                       connections=args.soak_connections, rate=args.soak_rate, seed=args.seed,
                       workdir=args.soak_dir, mix={**MIX, **args.soak_mix})


def options_from_args(argv: list[str] | None) -> Options:
    args = build_parser().parse_args(argv)
    quick = QUICK if args.quick else {}

    def pick(value, name: str, default):
        return value if value is not None else quick.get(name, default)

    buffers = SCALING_SIZES if args.scaling else pick(args.buffers, "buffers", [100_000])
    lookup_sizes = args.lookup_scaling or (LOOKUP_SCALING_SIZES if args.scaling else [])
    if args.lookup_scaling and not (args.buffers or args.scaling or args.quick):
        buffers = []  # the lookup benchmark alone
    return Options(
        buffers=buffers,
        workers=pick(args.workers, "workers", [1, 4]),
        layout=args.layout,
        duration=pick(args.duration, "duration", 10.0),
        warmup=pick(args.warmup, "warmup", 2.0),
        connections=args.connections,
        large_size=pick(args.large_mib, "large_mib", 64) << 20,
        cache_dir=args.cache_dir,
        out=args.out,
        quick=args.quick,
        client=args.client,
        client_processes=args.client_processes,
        nginx=not args.no_nginx,
        cases=args.cases or list(CASES),
        profile=args.profile,
        seed=args.seed,
        sha3_seconds=quick.get("sha3_seconds", 1.0),
        framework=not args.no_framework,
        lookup_sizes=lookup_sizes,
        lookup_rounds=quick.get("lookup_rounds", 3),
        lookup_seconds=quick.get("lookup_seconds", 1.0),
        cold_buffers=pick(args.cold_buffers, "cold_buffers", 1_000_000),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.store == "s3":
        from .s3 import main_from_bench

        return main_from_bench(args)
    if args.soak is not None:
        options = soak_options(args)
        os.makedirs(os.path.dirname(os.path.abspath(options.report)), exist_ok=True)
        try:
            return run_soak(options)
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    options = options_from_args(argv)
    os.makedirs(options.out, exist_ok=True)
    suite = Suite(options)
    try:
        doc = suite.run()
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    charts, note = write_charts(doc, options.out)
    if note:
        doc.notes.append(note)
        print(f"bench: note: {note}", file=sys.stderr)
    doc.outputs = Outputs(json=os.path.join(options.out, "bench.json"), charts=charts,
                          table=os.path.join(options.out, "table.txt"))
    table = full_table(doc)
    write_json(doc, doc.outputs.json)
    with open(doc.outputs.table, "w") as f:
        f.write(table)
    sys.stdout.write(table)
    print(f"bench: wrote {', '.join([doc.outputs.json, doc.outputs.table, *charts])}",
          file=sys.stderr)
    return 1 if any(run.problems for run in doc.runs) else 0
