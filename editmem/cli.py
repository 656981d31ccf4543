"""The ``editmem`` command line.

Global options come before the command (``editmem --store ./kb --strategy llp ask "..."``) and can be set with
``EDITMEM_STORE``, ``EDITMEM_MODEL``, ``EDITMEM_STRATEGY``; ``EDITMEM_LOCK_TIMEOUT`` is how long a write waits for
another writer (seconds, default 60).

Exit codes:

====  ===========================================================================================
0     ok
1     some records rejected (``import``), or the store disagrees with its ledger (``verify``)
2     usage error: bad option or value, unknown fact id, store/model or store/strategy mismatch, missing model
3     store locked by another writer past the timeout, or unusable: read-only for a write, not a store, damaged
4     internal error (a bug: the message says so; ``EDITMEM_DEBUG=1`` prints the traceback)
====  ===========================================================================================
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
import unicodedata
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from editmem.facts import FactStatus, to_utc

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_STORE, EXIT_INTERNAL = 0, 1, 2, 3, 4
console = Console(highlight=False, soft_wrap=True)


def printable(text: str, keep: str = "\n\t") -> str:
    """``text`` with control and format characters (ANSI escapes, C1 controls, bidi overrides) shown escaped,
    e.g. ``\\x1b``, so stored text can never drive the terminal; ``keep`` lists the ones left as they are."""
    out = []
    for ch in text:
        if ch not in keep and unicodedata.category(ch) in ("Cc", "Cf"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def safe(text: object) -> Text:
    """Stored text as inert terminal output: control characters shown escaped, no rich markup interpreted."""
    return Text(printable(str(text)))


def say(message: str, *values: object) -> None:
    """Print ``message`` (rich markup allowed) with ``{}`` slots filled by neutralised ``values``."""
    console.print(message.format(*(escape(printable(str(v))) for v in values)))


class Session:
    """Lazily opened store/model for one CLI invocation: read-only commands never load the model."""

    def __init__(self, store: str, model: str, strategy: str | None, device: str, overrides: tuple[str, ...], switch_strategy: bool = False):
        self.store, self.model_name, self.strategy_name = store, model, strategy
        self.device, self.overrides, self.switch_strategy = device, overrides, switch_strategy
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
            self._llm = EditableLLM.open(self.store, model=self.model_name, strategy=self.strategy_name, device=self.device,
                                         actor="cli", switch_strategy=self.switch_strategy, **config)
        return self._llm


def _exit_code(exc: BaseException) -> int:
    """The documented exit code of a library error (see the module docstring)."""
    from editmem.facts import FactValidationError
    from editmem.memory import FactNotFoundError, StoreError, StoreMismatchError
    from editmem.models import ModelNotAvailableError

    if isinstance(exc, (FactNotFoundError, StoreMismatchError, ModelNotAvailableError, FactValidationError)):
        return EXIT_USAGE
    if isinstance(exc, StoreError):
        return EXIT_STORE
    return EXIT_INTERNAL


class EditmemGroup(click.Group):
    """The command group; maps every exception escaping a command to its documented exit code and one line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
            code = _exit_code(exc)
            label = "internal error (please report it)" if code == EXIT_INTERNAL else "error"
            detail = str(exc) if code != EXIT_INTERNAL else f"{type(exc).__name__}: {exc}"
            console.print(f"[red]{label}:[/red] {escape(printable(detail))}")
            if code == EXIT_INTERNAL and os.environ.get("EDITMEM_DEBUG"):
                traceback.print_exc()
            ctx.exit(code)


def _usage_errors(fn):
    """Kept for commands mounted from elsewhere: the group maps errors to exit codes itself."""
    return fn


def _parse_as_of(_ctx, _param, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return to_utc(datetime.fromisoformat(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date or datetime (e.g. 2025-06-01 or 2025-06-01T12:00+02:00)") from None


AS_OF = click.option("--as-of", callback=_parse_as_of, default=None, metavar="DATETIME",
                     help="use the facts valid at this ISO date/time (default: now; no zone = UTC)")


@click.group(cls=EditmemGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="EDITMEM_STORE", default="./editmem-store", show_default=True, help="store folder (EDITMEM_STORE)")
@click.option("--model", envvar="EDITMEM_MODEL", default="smollm2-135m-instruct", show_default=True, help="model name or path (EDITMEM_MODEL)")
@click.option("--strategy", envvar="EDITMEM_STRATEGY", default=None, help="editing strategy (EDITMEM_STRATEGY); default: the store's, else llp")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--config", "overrides", multiple=True, metavar="KEY=VALUE", help="strategy config override (repeatable)")
@click.option("--switch-strategy", is_flag=True, help="let --strategy replace the store's own (its artifacts are rebuilt)")
@click.version_option(package_name="editmem")
@click.pass_context
def main(ctx: click.Context, store: str, model: str, strategy: str | None, device: str, overrides: tuple[str, ...], switch_strategy: bool) -> None:
    """Keep an LLM's knowledge current by editing the model."""
    ctx.obj = Session(store, model, strategy, device, overrides, switch_strategy)


def _short(fact_id: str) -> str:
    return fact_id[:10]


@main.command("import")
@click.argument("feed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="validate and count, change nothing (the model is not loaded)")
@click.option("--batch-size", type=int, default=None, help="facts per strategy update (default: the strategy's)")
@click.pass_obj
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
        say("[red]rejected[/red] {} line {}: field {}: {}", feed.name, bad.line, repr(bad.field), bad.message)
    verb = "would add" if dry_run else "added"
    stale = f", stale {summary.stale} (superseded earlier, not re-activated)" if summary.stale else ""
    say(f"{{}}: {verb} {summary.added}, duplicate {summary.duplicate}, superseded {summary.superseded}, "
        f"rejected {len(summary.rejected)}{stale}", feed.name)
    sys.exit(EXIT_REJECTED if summary.rejected else EXIT_OK)


@main.command()
@click.argument("question")
@click.option("--max-new-tokens", type=int, default=48, show_default=True)
@click.option("--no-chat", is_flag=True, help="plain completion (no chat template)")
@click.option("--base", is_flag=True, help="answer with the unedited model")
@AS_OF
@click.pass_obj
def ask(session: Session, question: str, max_new_tokens: int, no_chat: bool, base: bool, as_of: datetime | None) -> None:
    """Answer QUESTION with the edited model (and say which facts fired)."""
    llm = session.llm
    chat = False if no_chat else None
    if base:
        with llm.strategy.disabled():
            out = llm.generate(question, max_new_tokens=max_new_tokens, chat=chat)
    else:
        out = llm.generate(question, max_new_tokens=max_new_tokens, chat=chat, as_of=as_of)
    console.print(safe(out.text))
    if out.trace and out.trace.fact_ids:
        fired = ", ".join(f"{_short(i)} ({out.trace.scores.get(i, 0):.2f})" for i in out.trace.fact_ids)
        when = out.trace.details.get("as_of")
        say(f"[dim]edits used: {{}}{' (as of ' + when + ')' if when else ''}[/dim]", fired)


@main.command("list")
@click.option("--status", type=click.Choice(["active", "superseded", "retracted", "all"]), default="active", show_default=True)
@click.option("--subject", default=None)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@AS_OF
@click.pass_obj
def list_cmd(session: Session, status: str, subject: str | None, as_json: bool, as_of: datetime | None) -> None:
    """List stored facts (with --as-of: only those valid at that time)."""
    facts = session.memory.list(status=None if status == "all" else status, subject=subject, as_of=as_of)
    if as_json:
        for s in facts:
            click.echo(s.model_dump_json())  # JSON escapes control characters itself
        return
    table = Table("id", "status", "v", "subject", "prompt", "target", "source")
    for s in facts:
        table.add_row(_short(s.id), s.status.value, str(s.version), safe(s.fact.subject), safe(s.fact.prompt), safe(s.fact.target),
                      safe(s.fact.provenance.feed or s.fact.provenance.source))
    console.print(table)
    console.print(f"{len(facts)} fact(s)")


@main.command()
@click.argument("fact_id")
@click.pass_obj
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
        table.add_row(str(entry.seq), f"{entry.at:%Y-%m-%d %H:%M:%S}", entry.action, _short(entry.fact_id), safe(target), safe(entry.actor))
    console.print(table)


@main.command()
@click.argument("fact_ids", nargs=-1, required=True)
@click.option("--reason", default=None)
@click.pass_obj
def forget(session: Session, fact_ids: tuple[str, ...], reason: str | None) -> None:
    """Retract facts (kept in the ledger) and remove their edits from the model."""
    memory = session.memory
    ids = [memory.resolve_id(i) for i in fact_ids]
    done = {i for i in ids if memory.get(i).status is FactStatus.retracted}
    for fact_id in sorted(done):
        say("already retracted {} (nothing written)", _short(fact_id))
    todo = [i for i in ids if i not in done]
    if not todo:
        return
    for stored in session.llm.forget(todo, actor="cli", reason=reason):
        say("retracted {}: {} -> {}", _short(stored.id), stored.fact.prompt, stored.fact.target)


@main.command()
@click.argument("question")
@click.pass_obj
def explain(session: Session, question: str) -> None:
    """Answer with and without edits, and show which stored facts influenced the answer."""
    result = session.llm.explain(question)
    say("[bold]with edits:[/bold]    {}", result.answer)
    say("[bold]without edits:[/bold] {}", result.base_answer)
    for fact in result.facts:
        say("  {}  score {}  {} -> {}  ({})", _short(fact["id"]), fact["score"], fact["prompt"], fact["target"], fact["feed"] or fact["source"])
    if result.trace.details:
        say("[dim]{}[/dim]", json.dumps(result.trace.details, default=str))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="the report as one JSON object")
@click.pass_obj
def verify(session: Session, as_json: bool) -> None:
    """Check that replaying the ledger gives what Chroma holds (exit 1 when not; `repair` fixes it)."""
    report = session.memory.verify()
    if as_json:
        click.echo(json.dumps({**report.model_dump(), "ok": report.ok, "problems": report.problems}))
    else:
        for line in report.lines():
            say("{}", line)
    sys.exit(EXIT_OK if report.ok else EXIT_REJECTED)


@main.command()
@click.pass_obj
def repair(session: Session) -> None:
    """Make Chroma equal the replayed ledger: finish a cut transaction, rewrite wrong rows, drop orphans."""
    report = session.memory.repair()
    for line in report.lines():
        say("{}", line)
    sys.exit(EXIT_OK if report.ok else EXIT_REJECTED)


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
