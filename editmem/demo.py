"""``editmem demo``: import a feed of recent facts and show the model's answers before and after editing."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from editmem.feeds import ImportSummary, apply_facts, parse_feed
from editmem.textnorm import contains_answer

DEFAULT_FEED = Path(__file__).resolve().parent.parent / "examples" / "feeds" / "world_2025.jsonl"


def _source(generation) -> str:
    trace = generation.trace
    if trace is None or not trace.fact_ids:
        return "model (no edit fired)"
    best = trace.fact_ids[0]
    score = trace.scores.get(best)
    return f"edit {best[:8]}" + (f" ({score:.2f})" if score is not None else "")


def run_demo(session, *, feed: Path | None = None, max_new_tokens: int = 24, console: Console | None = None) -> dict:
    """Run the demo on ``session`` (the CLI's lazily opened store); returns the counts it printed."""
    console = console or Console()
    feed = feed or DEFAULT_FEED
    good, rejected = parse_feed(feed)
    facts = [fact for _, fact in good]
    llm = session.llm
    console.print(f"[bold]editmem demo[/bold] model={llm.loaded.name} strategy={llm.strategy.name} store={llm.memory.path}")
    questions = [f.prompt for f in facts]
    paraphrases = [f.rephrases[0] if f.rephrases else f.prompt for f in facts]
    probes = [f.locality_prompts[0] if f.locality_prompts else "What is the capital of France?" for f in facts]
    prompts = questions + paraphrases + probes

    with llm.strategy.disabled():
        before = llm.generate(prompts, max_new_tokens=max_new_tokens)
    summary = apply_facts(llm, facts, ImportSummary(feed=feed.name, rejected=rejected), actor="demo")
    console.print(
        f"imported {feed.name}: added {summary.added}, duplicate {summary.duplicate}, superseded {summary.superseded}, rejected {len(summary.rejected)}"
    )
    after = llm.generate(prompts, max_new_tokens=max_new_tokens)

    n = len(facts)
    counts = {"facts": n, "edited": 0, "paraphrase": 0, "before": 0, "unchanged": 0}
    for title, offset, key in (("Edited questions", 0, "edited"), ("Paraphrases", n, "paraphrase")):
        table = Table("question", "target", "before", "after", "ok", "answer came from", title=title, show_lines=True)
        for i, fact in enumerate(facts):
            b, a = before[offset + i], after[offset + i]
            ok = contains_answer(a.text, fact.target)
            counts[key] += ok
            if key == "edited":
                counts["before"] += contains_answer(b.text, fact.target)
            table.add_row(prompts[offset + i], fact.target, b.text, a.text, "yes" if ok else "no", _source(a))
        console.print(table)
    # the feed's locality prompts are mostly other questions about the edited subject ("What is Nike's slogan?")
    table = Table("other question", "before", "after", "unchanged", "answer came from",
                  title="Other questions (about the edited subject, or unrelated)", show_lines=True)
    for i in range(n):
        b, a = before[2 * n + i], after[2 * n + i]
        same = b.text == a.text
        counts["unchanged"] += same
        table.add_row(probes[i], b.text, a.text, "yes" if same else "no", _source(a))
    console.print(table)
    console.print(
        f"[bold]target in answer:[/bold] before {counts['before']}/{n}, after {counts['edited']}/{n}; "
        f"paraphrases {counts['paraphrase']}/{n}; other questions unchanged {counts['unchanged']}/{n}"
    )
    return counts
