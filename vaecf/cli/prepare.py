"""``vaecf prepare`` and ``vaecf bench prepare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import (
    BackendOption,
    ConfigOption,
    QuietOption,
    app,
    default_of,
    quiet_logging,
    summary,
)

ShuffleChoice = Literal["tasks", "p2p"]

HELP = """Turn interaction files into a dataset directory: filter, split users into train /
validation / test (strong generalization), and write CSR shards.

Example: [bold]vaecf prepare ratings.csv --user-col userId --item-col movieId
--rating-col rating --min-rating 3.5 --out data/[/]"""


@app.command(help=HELP, short_help=summary(HELP))
def prepare(
    files: Annotated[
        list[str] | None,
        typer.Argument(help="Input files or globs: CSV/TSV/any separator (.gz too) or Parquet.",
                       show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")] = ...,
    example: Annotated[
        str | None,
        typer.Option("--example", help="Use a bundled dataset instead of FILES: "
                     "movielens-small (MovieLens latest-small, ratings >= 3.5 are positive)."),
    ] = None,
    user_col: Annotated[str | None, typer.Option(
        help="User id column: a name, or a 0-based position.",
        show_default=default_of("prepare", "user_col"))] = None,
    item_col: Annotated[str | None, typer.Option(
        help="Item id column: a name, or a 0-based position.",
        show_default=default_of("prepare", "item_col"))] = None,
    rating_col: Annotated[str | None, typer.Option(
        help="Rating column (name or position); needed for --min-rating.")] = None,
    min_rating: Annotated[float | None, typer.Option(
        help="Keep interactions with rating >= this value.")] = None,
    sep: Annotated[str | None, typer.Option(
        help="Field separator (any string, e.g. ',' '\\t' '::'); default: from the file "
        "extension, else sniffed from the first line.")] = None,
    header: Annotated[bool | None, typer.Option(
        "--header/--no-header", metavar="", help="Whether CSV files start with a header line.",
        show_default=default_of("prepare", "header"))] = None,
    val_users: Annotated[float | None, typer.Option(
        help="Validation users: a count (>= 1) or a fraction of users (< 1, capped at "
        "[prepare] max_heldout_users = 10,000).",
        show_default=default_of("prepare", "val_users"))] = None,
    test_users: Annotated[float | None, typer.Option(
        help="Test users: a count or a fraction, as --val-users.",
        show_default=default_of("prepare", "test_users"))] = None,
    holdout_fraction: Annotated[float | None, typer.Option(
        help="Share of each held-out user's items that become targets; the rest are fed in.",
        show_default=default_of("prepare", "holdout_fraction"))] = None,
    min_user_interactions: Annotated[int | None, typer.Option(
        help="Drop users with fewer kept interactions.",
        show_default=default_of("prepare", "min_user_interactions"))] = None,
    min_item_interactions: Annotated[int | None, typer.Option(
        help="Drop items with fewer kept interactions.",
        show_default=default_of("prepare", "min_item_interactions"))] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the split hash.", show_default=default_of("prepare", "seed"))] = None,
    shards: Annotated[int | None, typer.Option(
        help="Number of row shards of the training matrix (one per distributed rank "
        "is natural; any count works).", show_default=default_of("prepare", "shards"))] = None,
    backend: BackendOption = None,
    dask: Annotated[bool, typer.Option(
        "--dask",
        metavar="", help="Run every step on a dask cluster, for data that outgrows one "
        "machine: files cut into blocks (--blocksize), a shuffle by user, filters, split and "
        "the dataset's files all on the workers; pandas partitions on CPU, cuDF ones on "
        "dask-cuda's LocalCUDACluster with --backend gpu. Same dataset, byte for byte. "
        "Without --scheduler, starts a local cluster on loopback.")] = False,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Address of a running dask.distributed scheduler "
        "(e.g. tcp://10.0.0.5:8786) to use instead of a local cluster; implies --dask. "
        "Inputs and --out's parent must be visible to every worker at the same paths.",
        show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Worker processes of the local --dask cluster, one thread "
        "each.", show_default="CPU cores, at most 4; one per GPU with --backend gpu")] = None,
    worker_memory: Annotated[str | None, typer.Option(
        "--worker-memory", help="Memory limit of each local --dask worker, e.g. 4GB; "
        "beyond it a worker spills to disk.",
        show_default="the machine's memory shared out")] = None,
    blocksize: Annotated[str, typer.Option(
        "--blocksize", help="Bytes of CSV/TSV per --dask partition, e.g. 4MB or 256MB "
        "(Parquet files split by row group; a .gz file is one partition).")] = "256MB",
    shuffle: Annotated[ShuffleChoice, typer.Option(
        "--shuffle", help="dask's shuffle method for the shuffle by user under --dask.",
        case_sensitive=False)] = "tasks",
    timings: Annotated[Path | None, typer.Option(
        "--timings", dir_okay=False, help="Also write each step's seconds and the peak "
        "memory of this process (and of each local --dask worker) to this JSON file.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force",
        metavar="", help="Replace an existing --out.")] = False,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    import json

    from vaecf.atomic import check_outputs, write_text
    from vaecf.backend import select_backend
    from vaecf.cli.tables import dataset_table
    from vaecf.data.blocks import parse_blocksize
    from vaecf.data.dask_cluster import DaskOptions, peak_rss_gb
    from vaecf.data.prepare import EXAMPLES
    from vaecf.data.prepare import prepare as run_prepare
    from vaecf.data.readers import expand_inputs
    from vaecf.errors import VaecfError
    from vaecf.progress import console
    from vaecf.settings import load_settings

    flags = dict(user_col=user_col, item_col=item_col, rating_col=rating_col,
                 min_rating=min_rating, sep=sep, header=header, val_users=val_users,
                 test_users=test_users, holdout_fraction=holdout_fraction,
                 min_user_interactions=min_user_interactions,
                 min_item_interactions=min_item_interactions, seed=seed, shards=shards,
                 backend=backend)
    if example is not None:
        if files:
            raise VaecfError("give either FILES or --example, not both")
        if example not in EXAMPLES:
            raise VaecfError(f"--example: unknown dataset {example!r} "
                             f"(available: {', '.join(EXAMPLES)})")
        path, example_flags = EXAMPLES[example]
        files = [str(path)]
        flags = {**example_flags, **{k: v for k, v in flags.items() if v is not None}}
    if not files:
        raise VaecfError("no input: give FILES or --example movielens-small")
    cfg = load_settings(config, prepare=flags).prepare
    quiet_logging(quiet)
    check_outputs({"--timings": timings}, [*expand_inputs(files), config], {"--out": out})
    options = None
    if dask or scheduler is not None:
        options = DaskOptions(scheduler=scheduler, workers=workers, worker_memory=worker_memory,
                              blocksize=parse_blocksize(blocksize), shuffle=shuffle)
    elif workers is not None or worker_memory is not None:
        raise VaecfError("--workers and --worker-memory size the --dask cluster; add --dask")
    chosen = select_backend(cfg.backend)
    report: dict = {}
    try:
        meta = run_prepare(files, out, cfg, chosen, force=force, quiet=quiet, dask=options,
                           report=report)
    except KeyboardInterrupt:
        _interrupted(out)
    if timings is not None:
        write_text(timings, json.dumps({**report, "peak_rss_gb": peak_rss_gb()}, indent=2)
                   + "\n")
    if not quiet:
        console.print(dataset_table(meta, out))


def _interrupted(out: Path) -> None:
    """Ctrl-C: one line saying what is on disk (the write is atomic), then exit code 130."""
    from rich.console import Console
    from rich.text import Text

    from vaecf.errors import printable

    state = ("holds a complete dataset (the previous one unless the new one was finished: "
             "datasets are written atomically)" if out.is_dir() else "was not written")
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text.assemble(("error: ", "bold red"), f"interrupted; {printable(out)} {state}"))
    raise SystemExit(130)
