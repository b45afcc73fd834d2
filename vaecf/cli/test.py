"""``vaecf test``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import BackendOption, ConfigOption, app, run_inputs, summary

HELP = """Rank the held-out users' items with a run's best weights and print NDCG@k and
Recall@k, beside the popularity and EASE baselines on the same users (fold-in items
excluded; EASE's λ is chosen on the validation users).

Example: [bold]vaecf test --run runs/ml1m[/]"""


@app.command(help=HELP, short_help=summary(HELP))
def test(
    run: Annotated[Path, typer.Option("--run", "-r", help="Run directory (from vaecf train).",
                                      file_okay=False)] = ...,
    data: Annotated[Path | None, typer.Option(
        "--data", "-d", help="Dataset directory; default: the one the run was trained on.",
        file_okay=False)] = None,
    split: Annotated[Literal["test", "validation"], typer.Option(
        help="Held-out users to score.")] = "test",
    k: Annotated[str | None, typer.Option(
        "--k", help="Comma-separated cut-offs.", show_default="20,50,100")] = None,
    baselines: Annotated[str, typer.Option(
        help="Comma-separated baselines to score beside the model: popularity, ease "
        "(empty: none). EASE is skipped, with one line, when its items × items matrices "
        "would not fit in memory.")] = "popularity,ease",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the metrics to this JSON file.", dir_okay=False)] = None,
    backend: BackendOption = None,
    config: ConfigOption = None,
) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    from vaecf.atomic import check_outputs, write_text
    from vaecf.backend import select_backend
    from vaecf.errors import VaecfError
    from vaecf.evaluation.metrics import metric_names
    from vaecf.evaluation.protocol import evaluate_run
    from vaecf.model.registry import kind
    from vaecf.settings import load_settings

    check_outputs({"--json": json_out}, [*run_inputs(run), data, config])

    try:
        ks = None if k is None else [int(part) for part in k.split(",") if part.strip()]
    except ValueError:
        raise VaecfError(f"--k: expected comma-separated integers like 20,50,100, got {k!r}"
                         ) from None
    loaded = load_settings(config, train=dict(backend=backend), evaluate=dict(ks=ks))
    settings = loaded.evaluate
    chosen = select_backend(loaded.train.backend)
    names = tuple(part.strip() for part in baselines.split(",") if part.strip())
    result = evaluate_run(run, data, split, settings.ks, chosen, settings.batch_size, names)
    table = Table(title=f"{result['split']} users of {result['data']}  "
                        f"({result['users']:,} users, best epoch {result['best_epoch']})")
    table.add_column("metric")
    table.add_column(kind(result["model_name"]).title, justify="right")
    columns = ["model", *(name for name in ("popularity", "ease") if name in result)]
    for column in columns[1:]:
        title = {"popularity": "popularity",
                 "ease": f"EASE (λ {result.get('ease_lambda', 0):g})"}[column]
        table.add_column(title, justify="right")
    for name in metric_names(settings.ks):
        table.add_row(name.replace("ndcg", "NDCG").replace("recall", "Recall"),
                      *(f"{result[column][name]:.4f}" for column in columns))
    Console().print(table)   # the result goes to stdout, progress to stderr
    if json_out is not None:
        write_text(json_out, json.dumps(result, indent=2) + "\n")
