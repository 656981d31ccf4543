"""The ``editmem`` command line.

Global options come before the command (``editmem --store ./kb --strategy llp ask "..."``) and can be set with
``EDITMEM_STORE``, ``EDITMEM_MODEL``, ``EDITMEM_STRATEGY``. Exit codes: 0 ok, 1 some records rejected,
2 usage error (bad option, unknown fact id, store/model mismatch, missing model).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from editmem.facts import FactStatus

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
console = Console(highlight=False, soft_wrap=True)


class Session:
    """Lazily opened store/model for one CLI invocation: read-only commands never load the model."""

    def __init__(self, store: str, model: str, strategy: str | None, device: str, overrides: tuple[str, ...]):
        self.store, self.model_name, self.strategy_name = store, model, strategy
        self.device, self.overrides = device, overrides
        self._llm = None
        self._memory = None

    @property
    def memory(self):
        if self._llm is not None:
            return self._llm.memory
        if self._memory is None:
            from editmem.memory import EditMemory

            self._memory = EditMemory(self.store)
        return self._memory

    @property
    def llm(self):
        if self._llm is None:
            from editmem.editable import EditableLLM
            from editmem.strategies import DEFAULT_STRATEGY, get_strategy

            name = self.strategy_name or (self.memory.read_meta() or {}).get("strategy") or DEFAULT_STRATEGY
            try:
                config_cls = get_strategy(name)[0]
                config = config_cls.parse_overrides(self.overrides)
                config_cls.from_dict(config)  # validate before anything is loaded
            except (KeyError, TypeError, ValueError) as exc:
                raise click.UsageError(str(exc).strip('"')) from None
            self._memory = None  # EditableLLM opens its own client
            self._llm = EditableLLM.open(self.store, model=self.model_name, strategy=self.strategy_name, device=self.device, actor="cli", **config)
        return self._llm


def _usage_errors(fn):
    """Turn the library's documented errors into exit code 2 with a one-line message."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from editmem.memory import FactNotFoundError, StoreMismatchError
        from editmem.models import ModelNotAvailableError

        try:
            return fn(*args, **kwargs)
        except (FactNotFoundError, StoreMismatchError, ModelNotAvailableError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            sys.exit(EXIT_USAGE)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="EDITMEM_STORE", default="./editmem-store", show_default=True, help="store folder (EDITMEM_STORE)")
@click.option("--model", envvar="EDITMEM_MODEL", default="smollm2-135m-instruct", show_default=True, help="model name or path (EDITMEM_MODEL)")
@click.option("--strategy", envvar="EDITMEM_STRATEGY", default=None, help="editing strategy (EDITMEM_STRATEGY); default: the store's, else llp")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--config", "overrides", multiple=True, metavar="KEY=VALUE", help="strategy config override (repeatable)")
@click.version_option(package_name="editmem")
@click.pass_context
def main(ctx: click.Context, store: str, model: str, strategy: str | None, device: str, overrides: tuple[str, ...]) -> None:
    """Keep an LLM's knowledge current by editing the model."""
    ctx.obj = Session(store, model, strategy, device, overrides)


def _short(fact_id: str) -> str:
    return fact_id[:10]


@main.command("import")
@click.argument("feed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="validate and count, change nothing (the model is not loaded)")
@click.option("--batch-size", type=int, default=None, help="facts per strategy update (default: the strategy's)")
@click.pass_obj
@_usage_errors
def import_cmd(session: Session, feed: Path, dry_run: bool, batch_size: int | None) -> None:
    """Import a JSONL or CSV feed of facts (schema: docs/feeds.md)."""
    from editmem.feeds import ImportSummary, apply_facts, count_dry_run, parse_feed

    good, rejected = parse_feed(feed)
    facts = [fact for _, fact in good]
    summary = ImportSummary(feed=feed.name, rejected=rejected, dry_run=dry_run)
    if dry_run:
        count_dry_run(session.memory, facts, summary)
    elif facts:
        apply_facts(session.llm, facts, summary, actor="cli", batch_size=batch_size, progress=sys.stderr.isatty())
    for bad in summary.rejected:
        console.print(f"[red]rejected[/red] {feed.name} line {bad.line}: field {bad.field!r}: {bad.message}")
    verb = "would add" if dry_run else "added"
    console.print(
        f"{feed.name}: {verb} {summary.added}, duplicate {summary.duplicate}, superseded {summary.superseded}, rejected {len(summary.rejected)}"
    )
    sys.exit(EXIT_REJECTED if summary.rejected else EXIT_OK)


@main.command()
@click.argument("question")
@click.option("--max-new-tokens", type=int, default=48, show_default=True)
@click.option("--no-chat", is_flag=True, help="plain completion (no chat template)")
@click.option("--base", is_flag=True, help="answer with the unedited model")
@click.pass_obj
@_usage_errors
def ask(session: Session, question: str, max_new_tokens: int, no_chat: bool, base: bool) -> None:
    """Answer QUESTION with the edited model (and say which facts fired)."""
    llm = session.llm
    chat = False if no_chat else None
    if base:
        with llm.strategy.disabled():
            out = llm.generate(question, max_new_tokens=max_new_tokens, chat=chat)
    else:
        out = llm.generate(question, max_new_tokens=max_new_tokens, chat=chat)
    console.print(out.text)
    if out.trace and out.trace.fact_ids:
        fired = ", ".join(f"{_short(i)} ({out.trace.scores.get(i, 0):.2f})" for i in out.trace.fact_ids)
        console.print(f"[dim]edits used: {fired}[/dim]")


@main.command("list")
@click.option("--status", type=click.Choice(["active", "superseded", "retracted", "all"]), default="active", show_default=True)
@click.option("--subject", default=None)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.pass_obj
def list_cmd(session: Session, status: str, subject: str | None, as_json: bool) -> None:
    """List stored facts."""
    facts = session.memory.list(status=None if status == "all" else status, subject=subject)
    if as_json:
        for s in facts:
            click.echo(s.model_dump_json())
        return
    table = Table("id", "status", "v", "subject", "prompt", "target", "source")
    for s in facts:
        table.add_row(_short(s.id), s.status.value, str(s.version), s.fact.subject, s.fact.prompt, s.fact.target, s.fact.provenance.feed or s.fact.provenance.source)
    console.print(table)
    console.print(f"{len(facts)} fact(s)")


@main.command()
@click.argument("fact_id")
@click.pass_obj
@_usage_errors
def show(session: Session, fact_id: str) -> None:
    """Show one fact with its provenance and ledger entries."""
    memory = session.memory
    stored = memory.get(memory.resolve_id(fact_id))
    click.echo(json.dumps(json.loads(stored.model_dump_json()), indent=2))
    for entry in memory.ledger.entries(fact_id=stored.id):
        click.echo(f"#{entry.seq} {entry.at:%Y-%m-%d %H:%M:%S} {entry.action} by {entry.actor}")


@main.command()
@click.argument("subject")
@click.pass_obj
def history(session: Session, subject: str) -> None:
    """Every add / supersede / retract about SUBJECT, oldest first."""
    memory = session.memory
    table = Table("seq", "time (UTC)", "action", "fact", "target", "actor")
    for entry in memory.history(subject):
        try:
            target = memory.get(entry.fact_id).fact.target
        except KeyError:
            target = "?"
        table.add_row(str(entry.seq), f"{entry.at:%Y-%m-%d %H:%M:%S}", entry.action, _short(entry.fact_id), target, entry.actor)
    console.print(table)


@main.command()
@click.argument("fact_ids", nargs=-1, required=True)
@click.option("--reason", default=None)
@click.pass_obj
@_usage_errors
def forget(session: Session, fact_ids: tuple[str, ...], reason: str | None) -> None:
    """Retract facts (kept in the ledger) and remove their edits from the model."""
    ids = [session.memory.resolve_id(i) for i in fact_ids]
    for stored in session.llm.forget(ids, actor="cli", reason=reason):
        console.print(f"retracted {_short(stored.id)}: {stored.fact.prompt} -> {stored.fact.target}")


@main.command()
@click.argument("question")
@click.pass_obj
@_usage_errors
def explain(session: Session, question: str) -> None:
    """Answer with and without edits, and show which stored facts influenced the answer."""
    result = session.llm.explain(question)
    console.print(f"[bold]with edits:[/bold]    {result.answer}")
    console.print(f"[bold]without edits:[/bold] {result.base_answer}")
    for fact in result.facts:
        console.print(f"  {_short(fact['id'])}  score {fact['score']}  {fact['prompt']} -> {fact['target']}  ({fact['feed'] or fact['source']})")
    if result.trace.details:
        console.print(f"[dim]{json.dumps(result.trace.details, default=str)}[/dim]")


@main.command()
@click.pass_obj
def strategies(session: Session) -> None:
    """List the registered editing strategies; the one a new store gets is marked ``*``."""
    from editmem.strategies import DEFAULT_STRATEGY, available_strategies, get_strategy

    for name in available_strategies():
        config_cls, strategy_cls = get_strategy(name)
        kind = "parametric" if strategy_cls.parametric else "retrieval"
        doc = (strategy_cls.__module__ and sys.modules[strategy_cls.__module__].__doc__ or "").strip().splitlines()
        mark = "*" if name == DEFAULT_STRATEGY else " "
        console.print(f"{mark} {name:10s} {kind:10s} {doc[0] if doc else ''}", markup=False)


@main.command()
@click.option("--feed", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="default: examples/feeds/world_2025.jsonl")
@click.option("--reset", is_flag=True, help="start from an empty store")
@click.option("--max-new-tokens", type=int, default=24, show_default=True)
@click.pass_obj
@_usage_errors
def demo(session: Session, feed: Path | None, reset: bool, max_new_tokens: int) -> None:
    """Import the demo feed and show answers before and after the edits, with their sources."""
    from editmem.demo import run_demo

    if reset and Path(session.store).exists():
        shutil.rmtree(session.store)
    started = time.perf_counter()
    run_demo(session, feed=feed, max_new_tokens=max_new_tokens, console=console)
    console.print(f"[dim]demo finished in {time.perf_counter() - started:.1f} s[/dim]")


def _mount_optional_commands() -> None:
    try:
        from editmem.eval.cli import eval_command
    except ImportError:
        return
    main.add_command(eval_command, "eval")


_mount_optional_commands()

if __name__ == "__main__":
    main()
