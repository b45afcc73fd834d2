"""``vaecf export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import QuietOption, app, summary

HELP = """Export a run's best model as a TensorFlow SavedModel that recommends from original
item ids (strings) on its own: id mapping, exclusion of the user's items and top-k run inside
the graph; TensorFlow Serving or tf.saved_model.load need no vaecf.

Example: [bold]vaecf export --run runs/ml --out serving/ml/1 --top-k 100[/]"""


@app.command(help=HELP, short_help=summary(HELP))
def export(
    run: Annotated[Path, typer.Option("--run", help="Run directory written by `vaecf train`.",
                                      file_okay=False)] = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="SavedModel directory to write.",
                                      file_okay=False)] = ...,
    top_k: Annotated[int, typer.Option("--top-k", min=1,
                                       help="Items returned per user.")] = 100,
    force: Annotated[bool, typer.Option("--force",
        metavar="", help="Replace an existing --out.")] = False,
    precision: Annotated[Literal["fp32", "bf16"], typer.Option(
        "--precision", help="Weights stored in fp32 (as trained) or bf16 (half the size).")
                         ] = "fp32",
    quiet: QuietOption = False,
) -> None:
    from vaecf.atomic import check_outputs
    from vaecf.progress import Steps, console
    from vaecf.serving.export import export as run_export

    check_outputs({}, [run], {"--out": out})
    with Steps(quiet) as steps, steps.step(f"exporting {run} to {out}"):
        info = run_export(run, out, top_k, force, precision)
    if not quiet:
        k = info["top_k"]
        console.print(f"wrote {info['out']}: signature {info['signature']!r} (item_ids string "
                      f"(N,), row_lengths int64 (B,)) -> item_ids string (B, {k}), scores "
                      f"float32 (B, {k}); {info['n_items']:,} items", markup=False,
                      highlight=False)
