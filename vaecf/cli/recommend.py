"""``vaecf recommend``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import QuietOption, app, summary

HELP = """Recommend items for new users from the original ids of items they like (the model's
fold-in): unknown ids are skipped with a warning, the given items are excluded, the top k are
printed with their scores.

Examples:
[bold]vaecf recommend --run runs/ml --user-items 1,260,1196 --item-names movies.csv[/]
[bold]vaecf recommend --run runs/ml --input users.csv --format csv --output recs.csv[/]"""


@app.command(help=HELP, short_help=summary(HELP))
def recommend(
    run: Annotated[Path, typer.Option("--run", help="Run directory written by `vaecf train`.",
                                      file_okay=False)] = ...,
    user_items: Annotated[str | None, typer.Option(
        "--user-items", help="One user's item ids, comma-separated, as in the training input "
        "(e.g. 1,260,1196).", show_default=False)] = None,
    input_file: Annotated[Path | None, typer.Option(
        "--input", help="Many users: a file of user,item rows read like the training input "
        "(same column names; every row counts as an interaction).", dir_okay=False,
        show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Items per user.")] = 10,
    include_seen: Annotated[bool, typer.Option(
        "--include-seen", metavar="", help="Allow recommending the user's own items.")] = False,
    output_format: Annotated[Literal["table", "json", "csv"] | None, typer.Option(
        "--format", help="Output format.",
        show_default="from --output's extension, else table")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write here instead of standard output.", dir_okay=False,
        show_default=False)] = None,
    item_names: Annotated[Path | None, typer.Option(
        "--item-names", help="File naming items, e.g. MovieLens movies.csv (its id column is "
        "the training input's item column if present, else the first).", dir_okay=False,
        show_default=False)] = None,
    name_col: Annotated[str, typer.Option(
        "--name-col", help="Column of --item-names holding the name.")] = "title",
    user_col: Annotated[str | None, typer.Option(
        help="User column of --input (name or 0-based position).",
        show_default="the training input's")] = None,
    item_col: Annotated[str | None, typer.Option(
        help="Item column of --input (name or 0-based position).",
        show_default="the training input's")] = None,
    precision: Annotated[Literal["fp32", "bf16"], typer.Option(
        "--precision", help="Weights served in fp32 (as trained) or bf16 (half the memory "
        "traffic; top lists may differ slightly, see `vaecf bench inference --precision`).")
                         ] = "fp32",
    quiet: QuietOption = False,
) -> None:
    import io
    from dataclasses import replace

    from rich.console import Console
    from rich.text import Text

    from vaecf.atomic import check_outputs, write_text
    from vaecf.cli.tables import to_table
    from vaecf.errors import VaecfError
    from vaecf.model.rundir import RunDir
    from vaecf.progress import Steps, console
    from vaecf.serving.items import (
        ItemMap,
        describe_problems,
        input_columns,
        request_from_file,
        request_from_items,
    )
    from vaecf.serving.output import (
        read_item_names,
        to_csv,
        to_json,
    )
    from vaecf.serving.recommender import Recommender, score_request

    if (user_items is None) == (input_file is None):
        raise VaecfError("give exactly one of --user-items ID,ID,... or --input FILE")
    if output_format is None and output is not None:
        suffix = output.suffix.lower().lstrip(".")
        output_format = {"json": "json", "csv": "csv", "txt": "table"}.get(suffix)
        if output_format is None:
            raise VaecfError(f"--output {output}: cannot tell the format from "
                             f"{output.suffix or 'no extension'!r}; name it .json, .csv or "
                             ".txt, or give --format")
    output_format = output_format or "table"
    if input_file is not None and not input_file.is_file():
        raise VaecfError(f"--input: file not found: {input_file}")
    check_outputs({"--output": output}, [run, input_file, item_names])
    run_dir = RunDir.open(run)
    item_map = ItemMap(run_dir.item_ids)
    spec = input_columns(run_dir)
    if user_items is not None:
        request = request_from_items(user_items, item_map)
    else:
        spec = replace(spec, user=user_col or spec.user, item=item_col or spec.item)
        request = request_from_file(input_file, item_map, spec)
    for line in describe_problems(request):
        console.print(Text.assemble(("warning: ", "bold yellow"), line))
    names = read_item_names(item_names, item_map, spec.item, name_col) if item_names else None

    recommender = Recommender(run_dir.load_model(), item_map, precision)
    n_users = request.seen.shape[0]
    with Steps(quiet or n_users == 1) as steps, steps.step(
            f"scoring {n_users:,} users", total=n_users) as advance:
        recs = score_request(recommender, request, top_k, not include_seen, advance)

    if output_format == "json":
        text = to_json(recs, request, names, item_map)
    elif output_format == "csv":
        text = to_csv(recs, names, item_map)
    else:
        title = f"top {top_k} for {n_users:,} users" if recs.users else f"top {top_k}"
        table = to_table(recs, names, item_map, title=title, name_header=name_col)
        if output is None:
            Console().print(table)
            return
        buffer = io.StringIO()
        Console(file=buffer, width=200).print(table)
        text = buffer.getvalue()
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_text(output, text)
        if not quiet:
            console.print(f"wrote {output}", highlight=False, markup=False)
