"""``editmem eval``: run the lifelong evaluation of a strategy, or compare finished runs.

::

    editmem eval --strategy context --dataset zsre --n 100 --out results/zsre-context
    editmem eval --strategy none --dataset counterfact --n 50 --out results/cf-none
    editmem eval compare results/zsre-none results/zsre-context

Mounted by ``editmem/cli.py``; also runnable as ``python -m editmem.eval.cli``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_USAGE = 2


def _parse_checkpoints(_ctx, _param, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@click.group("eval", invoke_without_command=True)
@click.option("--strategy", "strategy", help="registered strategy name, or 'none' for the unedited model")
@click.option("--dataset", help="zsre | counterfact | hallucination (in $EDITMEM_DATA_DIR) or a file path")
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="number of records T")
@click.option("--config", "config", multiple=True, metavar="KEY=VALUE", help="strategy config override (repeatable)")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="facts per edit call")
@click.option("--checkpoints", callback=_parse_checkpoints, help="extra curve points, e.g. 10,100")
@click.option("--mode", type=click.Choice(["final", "immediate", "single"]), default="final", show_default=True,
              help="final = all records scored on the model after the last edit (the papers' protocol)")
@click.option("--no-generation", is_flag=True, help="skip the greedy-generation metrics")
@click.option("--no-fluency", is_flag=True, help="skip CounterFact fluency/consistency sampling")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="length budget of the generation metrics")
@click.option("--gen-batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="greedy generations per batch (faster on CPU; only used where batching is safe)")
@click.option("--out", "out", type=click.Path(path_type=Path), help="output folder (default results/<dataset>-<strategy>-T<n>)")
@click.option("--model", default="smollm2-135m-instruct", show_default=True, help="model name or local checkpoint")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--pre-cache", type=click.Path(path_type=Path), help="folder caching pre-edit measurements across runs")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads")
@click.option("--store", "store_dir", type=click.Path(path_type=Path),
              help="keep the edit memory in this new or empty folder (default: a temporary one, deleted at the end); "
                   "reopen it like any store, e.g. to benchmark a real memory")
@click.pass_context
def eval_command(ctx: click.Context, strategy, dataset, n, config, batch_size, checkpoints, mode, no_generation,
                 no_fluency, max_new_tokens, gen_batch_size, out, model, seed, pre_cache, threads, store_dir) -> None:
    """Edit the first N records of a dataset one after another, then score all of them on the final model."""
    if ctx.invoked_subcommand is not None:
        return
    if not strategy or not dataset:
        raise click.UsageError("--strategy and --dataset are required (or use `editmem eval compare DIR...`)")
    from editmem.eval.report import render_report
    from editmem.eval.runner import NO_STRATEGY, run_eval
    from editmem.facts import FactValidationError
    from editmem.strategies import get_strategy

    overrides = {}
    if config:
        if strategy == NO_STRATEGY:
            raise click.UsageError("--config has no meaning with --strategy none")
        try:
            config_cls, _ = get_strategy(strategy)
            overrides = config_cls.parse_overrides(config)
        except (KeyError, ValueError) as exc:
            raise click.UsageError(str(exc).strip("'\"")) from None
    if threads:
        import torch

        torch.set_num_threads(threads)
    name = Path(dataset).stem if Path(dataset).suffix else dataset
    out = out or Path("results") / f"{name}-{strategy}-T{n}"
    try:
        result = run_eval(strategy, dataset, n=n, config=overrides, batch_size=batch_size, checkpoints=checkpoints,
                          mode=mode, generation=not no_generation, out_dir=out, model=model, seed=seed,
                          max_new_tokens=max_new_tokens, gen_batch_size=gen_batch_size, fluency=not no_fluency, pre_cache=pre_cache,
                          store_dir=store_dir, progress=lambda msg: click.echo(msg, err=True))
    except (FileNotFoundError, FactValidationError, KeyError, ValueError, TypeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(render_report(result))
    click.echo(f"wrote {out}/results.json, report.md and plots", err=True)


@eval_command.command("compare")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("compare.md"), show_default=True,
              help="where to write the table")
def compare_command(dirs: tuple[Path, ...], out: Path) -> None:
    """Side-by-side table of several runs (folders holding results.json)."""
    from editmem.eval.report import load_result, render_compare

    try:
        table = render_compare([load_result(d) for d in dirs])
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    eval_command()
