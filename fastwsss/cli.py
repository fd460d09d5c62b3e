"""The `fastwsss` command line: builds the typer app from the commands of fastwsss/commands/.

Each command is thin: it parses options and calls a typed function. Errors are one line
(commands/common.py); fixed-vocabulary options show and complete their choices (commands/options.py).
"""

from __future__ import annotations

from typing import Annotated

import typer

from fastwsss.commands import bench, data, evaluate, presets, runs, serving, train
from fastwsss.commands.common import OneLineErrors, friendly_errors
from fastwsss.engine.progress import console

app = typer.Typer(
    cls=OneLineErrors,
    help="Weakly-supervised semantic segmentation: image tags in, pixel masks out.\n\n"
    "Start with [bold]fastwsss train[/bold]: it generates the built-in synthetic data set and runs the "
    "default job on the CPU in minutes.",
    rich_markup_mode="rich",
    no_args_is_help=True,
)
data_app = typer.Typer(help="Make and convert data sets.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Micro-benchmarks (JSON plus a table).", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(bench_app, name="bench")


def _print_version(value: bool) -> None:
    if value:
        from fastwsss import __version__

        console.print(f"fastwsss {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


for _name, _function in {
    "train": train.train,
    "eval": evaluate.eval_command,
    "presets": presets.presets,
    "export": serving.export,
    "segment": serving.segment,
    "report": runs.report,
    "diagnose": runs.diagnose,
    "compare": runs.compare,
    "env": runs.env,
}.items():
    app.command(_name)(friendly_errors(_function))
data_app.command("synth")(friendly_errors(data.data_synth))
data_app.command("coco-masks")(friendly_errors(data.data_coco_masks))
bench_app.command("kernels")(friendly_errors(bench.bench_kernels))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
