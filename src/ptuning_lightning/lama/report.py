"""ptl-report's LAMA tables: the ``results.json`` of run and sweep folders in the paper's shape.

A row is one *setting*: backbone x method (x encoder when P-Tuning runs use several) x every
other config value in which the runs differ (template, lr, epochs, ...), so that only seeds
are averaged. Table 1: macro test P@1 per row, mean ± std over seeds, or a 95% bootstrap
interval over facts for a single seed, and on seen and unseen objects (whether the fact's
object is among the relation's training objects: recall or prior). Table 2: test P@1 per
relation, a line per relation, with the same uncertainty (its CSV: the means). The prior
row (``prompt=prior``) comes first, and a table without one says how to add it.
Paired bootstrap (over facts and seeds) between every two rows of a backbone, per relation
and macro; differences whose 95% interval holds 0 are marked as within noise. Collapse
(Table 3): per run and relation, the share of test facts given one word, the runs that
collapsed, the runs below the prior beyond noise (collapsed or not: scattered answers fail
too), and on how many relations each row stays below the prior. Missing and
failed jobs are listed, never averaged away, and rows that cover different relations are
flagged. Plots: per relation, seen vs unseen, the encoder ablation. The same functions serve
``notebooks/analysis.ipynb``.

Outputs (in ``--out``, default ``<first DIR>/report``) are byte-identical from run to run:
sorted rows, fixed float formats, no timestamps.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import numpy as np
from matplotlib.figure import Figure

from ptuning_lightning.reporting import (
    REPORT_MD,
    Problem,
    RowKey,
    encoder_name,
    interval_text,
    markdown_problems,
    markdown_table,
    mean_std,
    natural,
    percent,
    plus_minus,
    settings,
    to_csv,
    uses_encoder,
    within_noise,
)

MACRO_CSV = "table1_macro.csv"
RELATIONS_CSV = "table2_relations.csv"
PAIRED_CSV = "paired_bootstrap.csv"
COLLAPSE_CSV = "table3_collapse.csv"
# A run is collapsed on a relation when it gives one word to at least this share of the test
# facts while the prior's share there is lower (issue 11's criterion).
COLLAPSED = 0.9
BOOTSTRAP_SAMPLES = 2000  # resamples for intervals (seeded: reports stay byte-identical)
RELATIONS_PNG = "per_relation.png"
ENCODERS_PNG = "encoders.png"
SEEN_UNSEEN_PNG = "seen_unseen.png"
PRIOR = "prior"  # the training prior's method: every LAMA table's reference row
PARTS = ("seen", "unseen")  # test facts whose object is / is not among the training objects
# Method (results.json "method") -> the paper's row name, in the paper's order; other methods
# follow in alphabetical order under their own names.
PAPER_METHODS = {
    PRIOR: "Prior",
    "manual": "MP",
    "lpaqa_mine": "LPAQA",
    "lpaqa_paraphrase": "LPAQA (paraphrased)",
    "autoprompt_bert": "AutoPrompt (BERT's)",
    "autoprompt_roberta": "AutoPrompt (RoBERTa's)",
    "autoprompt": "AutoPrompt (searched)",
    "finetune": "FT",
    "manual_finetune": "MP+FT",
    "mixed": "P-Tuning (mixed)",
    "ptuning": "P-Tuning",
    "ptuning_finetune": "P-Tuning+FT",
}
# PNG metadata: matplotlib's version string would differ between installs; PNGs carry no date.
PNG_METADATA = {"Software": None}


# --- loading ---------------------------------------------------------------------------------


# --- tables ----------------------------------------------------------------------------------


@dataclass
class Row:
    """The runs of one table row: one per seed, or several per seed when each job ran some of
    the relations (a sweep over ``task.relation``), which are merged by seed."""

    key: RowKey
    runs: list[dict] = field(default_factory=list)

    @property
    def relations(self) -> set[str]:
        return {rel for run in self.runs for rel in run["relations"]}

    @property
    def seeds(self) -> dict[object, dict[str, dict]]:
        """{seed: {relation: its result}}, over every run of that seed."""
        out: dict[object, dict[str, dict]] = {}
        for run in self.runs:
            out.setdefault(run.get("seed"), {}).update(run["relations"])
        return out

    @property
    def macros(self) -> list[float]:
        """Each seed's macro test P@1 over its relations."""
        return [mean(float(r["test_p1"]) for r in rels.values()) for rels in self.seeds.values()]

    def scores(self, relation: str, part: str | None = None) -> list[float]:
        """Test P@1 of ``relation`` (on its ``part`` facts: "seen", "unseen") for each seed
        that has it."""
        key = f"test_{part}_p1" if part else "test_p1"
        return [float(r[relation][key]) for r in self.seeds.values() if relation in r]

    def macro(self) -> tuple[float | None, float | None]:
        """Macro test P@1: mean and std over seeds."""
        return mean_std(self.macros)

    def relation_mean(self, relation: str) -> float | None:
        """Test P@1 of ``relation``, mean over seeds (None: no run has it)."""
        return mean_std(self.scores(relation))[0]

    def split(self, part: str) -> tuple[float | None, float | None, int | None]:
        """Macro test P@1 on ``part`` ("seen" or "unseen") objects, mean and std over seeds,
        and the number of such facts: each seed's macro averages its relations that have
        facts in the part (``test_seen_p1`` ... in results.json). (None, None, None) when a
        run predates the split."""
        macros, counts = [], []
        for relations in self.seeds.values():
            results = list(relations.values())
            if any(f"test_{part}_n" not in r for r in results):
                return None, None, None
            scores = [r[f"test_{part}_p1"] for r in results if r[f"test_{part}_p1"] is not None]
            macros += [mean(scores)] if scores else []
            counts.append(sum(r[f"test_{part}_n"] for r in results))
        return *mean_std(macros), counts[0]  # the seeds of a row test the same facts

    def hits(self, relation: str, part: str | None = None) -> np.ndarray | None:
        """(seeds, facts) 0/1 hits of ``relation`` (``test_hits`` in results.json), of its
        ``part`` facts only ("seen", "unseen": ``test_seen``); None when a run lacks them
        (older results) or the seeds scored different numbers of facts."""
        results = [r[relation] for r in self.seeds.values() if relation in r]
        rows = [r.get("test_hits") for r in results]
        if not rows or any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
            return None
        hits = np.array([[c == "1" for c in r] for r in rows], dtype=float)
        if part is None:
            return hits
        flags = results[0].get("test_seen")
        if flags is None or len(flags) != hits.shape[1]:
            return None
        return hits[:, np.array([c == "1" for c in flags]) == (part == "seen")]


@dataclass
class Tables:
    relations: list[str]  # every relation of any row, in natural order (P19 before P103)
    rows: list[Row]
    by_encoder: bool  # P-Tuning runs used several encoders: rows are split by encoder


def lama_trains(run: dict) -> bool:
    """Whether the run trained anything (its relations record epochs)."""
    return any("epochs" in r for r in (run.get("relations") or {}).values())


def tables(runs: list[dict]) -> Tables:
    """Group runs into rows: backbone x method (x encoder when P-Tuning runs differ in it) x
    the config values in which runs of that backbone and method differ (``settings``)."""
    by_encoder = len({encoder_name(run) for run in runs if uses_encoder(run)}) > 1
    setting = settings(runs, lambda run: (run["backbone"], run["method"]), lama_trains)
    rows: dict[RowKey, Row] = {}
    for run in sorted(
        runs, key=lambda run: (run.get("seed") is None, run.get("seed"), run["path"])
    ):
        encoder = encoder_name(run) if by_encoder and uses_encoder(run) else ""
        key = RowKey(run["backbone"], run["method"], encoder, setting[run["path"]])
        rows.setdefault(key, Row(key)).runs.append(run)
    relations = sorted({rel for row in rows.values() for rel in row.relations}, key=natural)
    order = sorted(rows, key=lambda k: (k.backbone, method_order(k.method), k.encoder))
    return Tables(relations, [rows[key] for key in order], by_encoder)


def method_order(method: str) -> tuple[int, str]:
    """Sort key: the paper's rows first, in its order (an ensemble after its source)."""
    base = re.sub(r"_top\d+$", "", method)
    order = list(PAPER_METHODS)
    return (order.index(base) if base in order else len(order), method)


def paper_label(key: RowKey) -> str:
    """A row's label under the paper's method name ("P-Tuning (lstm)")."""
    name = method_label(key.method)
    return f"{name} ({key.details()})" if key.details() else name


def method_label(method: str) -> str:
    """The paper's name of a method ("MP", "LPAQA top-5"), or the method itself."""
    match = re.fullmatch(r"(.+)_top(\d+)", method)
    if match and match.group(1) in PAPER_METHODS:
        return f"{PAPER_METHODS[match.group(1)]} top-{match.group(2)}"
    return PAPER_METHODS.get(method, method)


# --- intervals ---------------------------------------------------------------------------------


def fact_draws(relation: str, n: int) -> np.ndarray:
    """(BOOTSTRAP_SAMPLES, n) resampled fact positions of a relation: the same for every row
    (paired comparisons) and every report (seeded by the relation and its size)."""
    rng = np.random.default_rng(zlib.crc32(f"{relation}:{n}".encode()))
    return rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))


class Bootstrap:
    """Bootstrap samples of a row's P@1 (one relation, or the macro over several): each sample
    resamples the facts (shared by all rows, so differences are paired) and the row's seeds
    (so that seed-to-seed spread counts too). Cached per row and relation set, and each
    row's per-fact hits per relation, and a table's runs against the prior (``collapses``,
    which the report's Markdown and its CSV both read)."""

    def __init__(self) -> None:
        self.cache: dict[tuple, np.ndarray | None] = {}
        self.hit_cache: dict[tuple, np.ndarray | None] = {}
        self.runs: tuple[Tables, list[Collapse]] | None = None

    def hits(self, row: Row, relation: str, part: str | None = None) -> np.ndarray | None:
        """``row.hits(relation, part)``, parsed once."""
        key = (row.key, relation, part)
        if key not in self.hit_cache:
            self.hit_cache[key] = row.hits(relation, part)
        return self.hit_cache[key]

    def samples(
        self, row: Row, relations: Sequence[str], part: str | None = None
    ) -> np.ndarray | None:
        """(BOOTSTRAP_SAMPLES,) P@1 (macro over ``relations``; over their ``part`` facts);
        None without per-fact hits."""
        key = (row.key, tuple(relations), part)
        if key not in self.cache:
            self.cache[key] = self._samples(row, relations, part)
        return self.cache[key]

    def _samples(self, row: Row, relations: Sequence[str], part: str | None) -> np.ndarray | None:
        rng = np.random.default_rng(zlib.crc32(row.key.label().encode()))
        per_relation = []
        for relation in relations:
            hits = self.hits(row, relation, part)  # (seeds, facts)
            if hits is None:
                return None
            draws = fact_draws(f"{relation}:{part}" if part else relation, hits.shape[1])
            by_seed = hits[:, draws].mean(-1).T  # (samples, seeds)
            seeds = rng.integers(0, hits.shape[0], size=by_seed.shape)
            per_relation.append(np.take_along_axis(by_seed, seeds, 1).mean(1))
        return np.mean(per_relation, axis=0)

    def interval(self, row: Row, relations: Sequence[str]) -> tuple[float, float] | None:
        """95% percentile interval of the row's (macro) P@1."""
        samples = self.samples(row, relations)
        return None if samples is None else tuple(np.percentile(samples, [2.5, 97.5]).tolist())

    def difference(
        self, a: Row, b: Row, relations: Sequence[str], part: str | None = None
    ) -> tuple[float, float, float] | None:
        """(mean difference a - b, 95% interval) of P@1 over ``relations``, paired over facts
        (``part``: over the relations' seen or unseen facts, the macro over the relations
        that have some, as ``Row.split``); None when either row lacks per-fact hits (or
        seen flags) or they scored different facts."""
        kept = []
        for relation in relations:
            first, second = self.hits(a, relation, part), self.hits(b, relation, part)
            if first is None or second is None or first.shape[1] != second.shape[1]:
                return None
            kept += [relation] if first.shape[1] else []
        if not kept:
            return None
        first, second = self.samples(a, kept, part), self.samples(b, kept, part)
        point = mean(mean(a.scores(r, part)) for r in kept) - mean(
            mean(b.scores(r, part)) for r in kept
        )
        low, high = np.percentile(first - second, [2.5, 97.5]).tolist()
        return point, low, high


def paired(t: Tables, boot: Bootstrap) -> list[tuple[Row, Row, str, tuple[float, float, float]]]:
    """Every two rows of a backbone: (a, b, relation or "macro", difference) for each relation
    both cover, and the macro over the relations both cover (and "macro:seen", "macro:unseen":
    on the facts whose object is or is not a training object), where the rows' per-fact hits
    allow it. Rows over different relation sets (LPAQA has no causal prompt for P1412) are so
    compared on their common relations (``common_relations``)."""
    out = []
    for i, a in enumerate(t.rows):
        for b in t.rows[i + 1 :]:
            if a.key.backbone != b.key.backbone:
                continue
            common = common_relations(a, b)
            for part in (None, *PARTS) if common else ():  # all facts, then seen and unseen
                macro = boot.difference(a, b, common, part)
                name = f"macro:{part}" if part else "macro"
                out += [(a, b, name, macro)] if macro is not None else []
            for relation in common:
                difference = boot.difference(a, b, [relation])
                out += [(a, b, relation, difference)] if difference is not None else []
    return out


def common_relations(a: Row, b: Row) -> list[str]:
    """The relations both rows cover, in natural order: what their paired macro averages."""
    return sorted(a.relations & b.relations, key=natural)


def cell_text(row: Row, boot: Bootstrap, relation: str | None = None) -> str:
    """Test P@1 (%) of a row, macro or on one ``relation``: mean ± std over seeds, or with one
    seed its 95% bootstrap interval over facts in brackets ("—": not run)."""
    scores = row.scores(relation) if relation else row.macros
    m, s = mean_std(scores)
    if len(scores) != 1:
        return plus_minus(m, s) or "—"
    interval = boot.interval(row, [relation] if relation else sorted(row.relations, key=natural))
    if interval is None:
        return percent(m, 1)
    return f"{percent(m, 1)} [{percent(interval[0], 1)}, {percent(interval[1], 1)}]"


def key_columns(t: Tables) -> list[str]:
    columns = ["backbone", "method", "encoder"] if t.by_encoder else ["backbone", "method"]
    return columns + ["setting"] * any(row.key.setting for row in t.rows)


def key_cells(t: Tables, key: RowKey) -> list[str]:
    setting = "; ".join(f"{k}={v}" for k, v in key.setting) or "—"
    cells = [key.backbone, key.method] + [key.encoder or "—"] * t.by_encoder
    return cells + [setting] * ("setting" in key_columns(t))


def macro_table(t: Tables, boot: Bootstrap) -> tuple[list[str], list[list]]:
    """Table 1 as (header, rows): macro test P@1 mean and std over seeds, its 95% bootstrap
    interval over facts and seeds (fractions), the number of seeds (runs) and of relations,
    and on seen and unseen objects (``Row.split``) mean, std and number of facts (empty for
    results before the split)."""
    header = [*key_columns(t), "test_p1_mean", "test_p1_std", "ci95_low", "ci95_high"]
    header += ["seeds", "relations"]
    header += [f"{part}_{what}" for part in PARTS for what in ("p1_mean", "p1_std", "n")]
    rows = []
    for row in t.rows:
        interval = boot.interval(row, sorted(row.relations, key=natural)) or (None, None)
        cells = [*key_cells(t, row.key), *row.macro(), *interval]
        split = [value for part in PARTS for value in row.split(part)]
        rows.append([*cells, len(row.seeds), len(row.relations), *split])
    return header, rows


def paired_table(t: Tables, boot: Bootstrap) -> tuple[list[str], list[list]]:
    """The paired bootstrap as (header, rows): difference a - b in test P@1 (fractions) with
    its 95% interval, per relation and macro, whether it is within noise, and how many
    relations it averages (a macro: the relations both rows cover)."""
    header = ["backbone", "row_a", "row_b", "relation", "difference", "ci95_low", "ci95_high"]
    rows = [
        [a.key.backbone, a.key.label(), b.key.label(), relation, *diff, within_noise(diff)]
        + [len(common_relations(a, b)) if relation.startswith("macro") else 1]
        for a, b, relation, diff in paired(t, boot)
    ]
    return [*header, "within_noise", "relations"], rows


def relation_table(t: Tables) -> tuple[list[str], list[list]]:
    """Table 2 as (header, rows): test P@1 per relation, mean over seeds (None: not run)."""
    header = [*key_columns(t), *t.relations]
    rows = [[*key_cells(t, row.key), *map(row.relation_mean, t.relations)] for row in t.rows]
    return header, rows


@dataclass(frozen=True)
class Collapse:
    """One run's answers on one relation: the share of its test facts given the single most
    predicted word (results.json ``collapse_rate``) against the prior's share (the prior row's
    test P@1 there: the most frequent training object, which is one word by construction)."""

    row: Row
    relation: str
    seed: object
    rate: float
    word: str
    test_p1: float
    prior_p1: float | None  # None: the table has no prior row for this relation
    prior_word: str | None = None  # the prior's answer there (None: unknown)
    # This run's test P@1 minus the prior's, paired over facts, with its 95% interval (None:
    # no prior row, or either lacks per-fact hits): a failed run, collapsed or not.
    versus_prior: tuple[float, float, float] | None = None

    @property
    def collapsed(self) -> bool:
        """One word for nearly every subject (``COLLAPSED``) where the data do not call for it
        (the prior's share is below that, or unknown)."""
        return self.rate >= COLLAPSED and (self.prior_p1 is None or self.prior_p1 < COLLAPSED)

    @property
    def on_prior_word(self) -> bool:
        """Whether the word is the prior's: a prompt that learned the training prior, not one
        stuck on a word the data never call for."""
        return self.prior_word is not None and self.word == self.prior_word

    @property
    def below_prior(self) -> bool:
        """Below the prior beyond noise: the run's answers score lower than always answering
        the most frequent training object, whatever the spread of its answers."""
        diff = self.versus_prior
        return diff is not None and diff[0] < 0 and not within_noise(diff)


def prior_row(t: Tables, row: Row) -> Row | None:
    """The prior row of ``row``'s backbone (the one covering most relations)."""
    priors = [r for r in t.rows if r.key.method == PRIOR and r.key.backbone == row.key.backbone]
    return max(priors, key=lambda r: len(r.relations), default=None)


def collapses(t: Tables, boot: Bootstrap | None = None) -> list[Collapse]:
    """Every (row, relation, seed) whose results carry a collapse rate, the prior row's own
    excepted, in table order; with ``boot``, computed once per table (each run's paired
    bootstrap against the prior is the costly part)."""
    if boot is not None:
        if boot.runs is None or boot.runs[0] is not t:
            boot.runs = (t, collapses(t))
        return boot.runs[1]
    out = []
    for row in t.rows:
        prior = prior_row(t, row)
        if row is prior:
            continue
        for relation in t.relations:
            prior_p1 = prior.relation_mean(relation) if prior is not None else None
            floor = (prior_p1, prior_word(prior, relation))
            prior_hits = prior.hits(relation) if prior is not None else None
            for seed, results in row.seeds.items():
                found = results.get(relation, {})
                if "collapse_rate" in found:
                    rate, word = float(found["collapse_rate"]), found["most_predicted"]
                    p1 = float(found["test_p1"])
                    diff = fact_difference(relation, found.get("test_hits"), prior_hits)
                    out.append(Collapse(row, relation, seed, rate, word, p1, *floor, diff))
    return out


def fact_difference(
    relation: str, hits: str | None, reference: np.ndarray | None
) -> tuple[float, float, float] | None:
    """One run's test P@1 minus a reference run's (the first of ``reference``'s (seeds,
    facts) hits) on ``relation``, with its 95% bootstrap interval over facts (the facts drawn
    as for every row: ``fact_draws``); None without per-fact hits on both or over different
    facts."""
    if hits is None or reference is None or len(hits) != reference.shape[1]:
        return None
    gap = np.array([c == "1" for c in hits], dtype=float) - reference[0]
    if not gap.size:
        return None
    low, high = np.percentile(gap[fact_draws(relation, gap.size)].mean(-1), [2.5, 97.5])
    return float(gap.mean()), float(low), float(high)


def prior_word(prior: Row | None, relation: str) -> str | None:
    """The prior row's answer on ``relation`` (the word it gives every fact); None where
    there is no prior row, or its runs there carry no word."""
    seeds = prior.seeds.values() if prior is not None else []
    words = {results[relation].get("most_predicted") for results in seeds if relation in results}
    return words.pop() if len(words) == 1 else None


def collapse_table(t: Tables, boot: Bootstrap | None = None) -> tuple[list[str], list[list]]:
    """Table 3 as (header, rows): per row, relation and seed, the collapse rate (a share, not
    a percentage), the most predicted word, test P@1 and the prior's (percent), whether the
    run collapsed, and whether it is below the prior beyond noise (``Collapse.below_prior``)."""
    header = [*key_columns(t), "relation", "seed", "collapse_rate", "most_predicted"]
    header += ["test_p1", "prior_p1", "prior_word", "collapsed", "below_prior"]
    rows = [
        [*key_cells(t, c.row.key), c.relation, c.seed, f"{c.rate:.3f}", c.word]
        + [c.test_p1, c.prior_p1, c.prior_word, c.collapsed, c.below_prior]
        for c in collapses(t, boot)
    ]
    return header, rows


def below_prior(t: Tables, row: Row, boot: Bootstrap) -> tuple[int, int, int] | None:
    """(relations where the row's mean test P@1 is below the prior's, of those how many
    beyond noise (paired bootstrap), relations compared); None without a prior row."""
    prior = prior_row(t, row)
    if prior is None or prior is row:
        return None
    shared = sorted(row.relations & prior.relations, key=natural)
    below = [r for r in shared if row.relation_mean(r) < prior.relation_mean(r)]
    differences = [boot.difference(row, prior, [r]) for r in below]
    beyond = sum(d is not None and not within_noise(d) for d in differences)
    return len(below), beyond, len(shared)


def markdown_collapse(t: Tables, boot: Bootstrap) -> str:
    """Collapse and the prior floor per row: how many runs answered one word for nearly every
    subject, how many runs and on how many relations the row's mean are below the training
    prior, and which runs collapsed or fell below it (every run: ``table3_collapse.csv``)."""
    lines = [
        "## Collapse and the prior floor",
        "",
        "Collapse rate: the share of a relation's test facts given the single most predicted "
        f"word. A run (one relation, one seed) is collapsed when its rate is at least "
        f"{COLLAPSED:.0%} while the prior's test P@1 on the relation is below {COLLAPSED:.0%} "
        "(or unknown: no prior row). Runs below the prior: a run's test P@1 is lower than the "
        "prior's beyond noise (the paired 95% interval over facts excludes 0), collapsed or "
        "not. Relations below the prior: the row's mean over seeds is lower than the prior's; "
        "beyond noise: the paired 95% interval over facts and seeds excludes 0.",
        "",
    ]
    found = collapses(t, boot)
    rows = []
    for row in t.rows:
        mine = [c for c in found if c.row is row]
        floor = below_prior(t, row, boot)
        if not mine and floor is None:
            continue
        collapsed = [c for c in mine if c.collapsed]
        runs = f"{len(collapsed)} of {len(mine)}" if mine else "n/a"
        if any(c.prior_word for c in collapsed):
            runs += f" ({sum(c.on_prior_word for c in collapsed)} on the prior's word)"
        failed = f"{sum(c.below_prior for c in mine)} of {len(mine)}" if mine else "n/a"
        below = f"{floor[0]} ({floor[1]}) of {floor[2]}" if floor else "no prior row"
        worst = max(mine, key=lambda c: c.rate, default=None)
        highest = (
            f'{worst.rate:.2f} ({worst.relation}, seed {worst.seed}, "{worst.word}")'
            if worst
            else "n/a"
        )
        rows.append([*key_cells(t, row.key), runs, failed, below, highest])
    if not rows:
        return "\n".join([*lines, "No results with collapse rates or a prior row."])
    header = [*key_columns(t), "collapsed runs", "runs below the prior"]
    header += ["relations below the prior (beyond noise)", "highest collapse rate"]
    lines.append(markdown_table(header, rows))
    listed = [c for c in found if c.collapsed]
    if listed:
        what = "row, relation, seed: rate, word; test P@1 / prior's, %"
        lines += ["", f"Collapsed runs ({what}):", ""]
        lines += [collapsed_line(c) for c in listed]
    failed_lines = [below_prior_line(row, [c for c in found if c.row is row]) for row in t.rows]
    if any(failed_lines):
        what = "row: relation, seed: test P@1 / prior's, %; * collapsed"
        lines += ["", f"Runs below the prior ({what}):", ""]
        lines += [line for line in failed_lines if line]
    return "\n".join(lines)


def below_prior_line(row: Row, runs: list[Collapse]) -> str:
    """A row's runs below the prior beyond noise, on one line ("" for none)."""
    failed = [
        f"{c.relation}, seed {c.seed}: {percent(c.test_p1, 1)} / {percent(c.prior_p1, 1)}"
        + "*" * c.collapsed
        for c in runs
        if c.below_prior
    ]
    if not failed:
        return ""
    return f"- {row.key.backbone} / {row.key.label()}: " + "; ".join(failed)


def collapsed_line(c: Collapse) -> str:
    """A collapsed run in the report's list: where, its rate and word (marked where the word
    is the prior's), and its test P@1 against the prior's."""
    word = f'"{c.word}"' + (" (the prior's word)" if c.on_prior_word else "")
    return (
        f"- {c.row.key.backbone} / {c.row.key.label()}, {c.relation}, seed {c.seed}: "
        f"{c.rate:.2f}, {word}; {percent(c.test_p1, 1)} / {percent(c.prior_p1, 1) or 'n/a'}"
    )


def notes(t: Tables) -> list[str]:
    """Why some macro averages are not comparable: rows or seeds over different relation sets,
    and seeds counted twice."""
    out = []
    every = set(t.relations)
    for row in t.rows:
        name = f"{row.key.backbone} / {row.key.label()}"
        if row.relations != every:
            lacking = ", ".join(sorted(every - row.relations, key=natural))
            out.append(
                f"{name} lacks {lacking}: its macro covers {len(row.relations)} of "
                f"{len(every)} relations and is not comparable with full rows."
            )
        for seed, relations in row.seeds.items():
            if set(relations) != row.relations:
                lacking = ", ".join(sorted(row.relations - set(relations), key=natural))
                out.append(f"{name}: seed {seed} lacks {lacking}.")
            counted = Counter(
                r for run in row.runs if run.get("seed") == seed for r in run["relations"]
            )
            twice = sorted((r for r, n in counted.items() if n > 1), key=natural)
            if twice:
                out.append(
                    f"{name}: seed {seed} ran {', '.join(twice)} more than once; the last run "
                    "counts."
                )
    return out


# --- writers ---------------------------------------------------------------------------------


def side_by_side(t: Tables, boot: Bootstrap | None = None) -> tuple[list[str], list[list[str]]]:
    """The paper's shape: one row per backbone, one column per method (macro test P@1, %);
    "≈" marks a method within noise of the backbone's best (paired bootstrap)."""
    boot = boot or Bootstrap()
    columns = list(dict.fromkeys(paper_label(row.key) for row in t.rows))
    cells: dict[tuple[str, str], str] = {}
    for row in t.rows:
        mark = {"best": " (best)", "noise": " ≈", "below": ""}[versus_best(t, row, boot)]
        cells[(row.key.backbone, paper_label(row.key))] = cell_text(row, boot) + mark
    backbones = list(dict.fromkeys(row.key.backbone for row in t.rows))
    rows = [[b, *(cells.get((b, c), "—") for c in columns)] for b in backbones]
    return ["backbone", *columns], rows


def versus_best(t: Tables, row: Row, boot: Bootstrap) -> str:
    """ "best" (the backbone's highest macro among rows over the same relations), "noise"
    (its paired difference to the best is within noise) or "below" (also: not comparable)."""
    rivals = [
        r for r in t.rows if r.key.backbone == row.key.backbone and r.relations == row.relations
    ]
    if len(rivals) == 1:  # no other row over the same relations: nothing to compare
        return "below"
    best = max(rivals, key=lambda r: r.macro()[0])
    if best is row:
        return "best"
    diff = boot.difference(best, row, sorted(row.relations, key=natural))
    return "noise" if diff is not None and within_noise(diff) else "below"


def markdown_tables(t: Tables, boot: Bootstrap | None = None) -> str:
    """Methods side by side, Table 1, the paired differences, collapse and Table 2, in Markdown
    (percent, one decimal; "—": not run)."""
    boot = boot or Bootstrap()
    table1 = [
        [
            *key_cells(t, row.key),
            cell_text(row, boot),
            *(split_text(row, part) for part in PARTS),
            len(row.seeds),
            len(row.relations),
        ]
        for row in t.rows
    ]
    table2 = [[rel, *(cell_text(row, boot, rel) for row in t.rows)] for rel in t.relations]
    names = [" / ".join(c for c in key_cells(t, row.key) if c != "—") for row in t.rows]
    return "\n".join(
        [
            "## Methods side by side: macro test P@1 (%)",
            "",
            "Mean ± sample std over seeds; one seed: [95% bootstrap interval over facts]. "
            "≈: within noise of the best (paired bootstrap, 95% interval of the difference "
            "holds 0).",
            "",
            markdown_table(*side_by_side(t, boot)),
            "",
            *(f"> {note}\n" for note in prior_notes(t)),
            "## Table 1: macro test P@1 (%)",
            "",
            "Seen / unseen: test P@1 on the facts whose object is / is not among the "
            "relation's training objects (n: facts, over all relations; n/a: results from "
            "before the split). A prompt that only learned the training prior scores on seen "
            "objects only.",
            "",
            markdown_table(
                [*key_columns(t), "test P@1", "seen (n)", "unseen (n)", "seeds", "relations"],
                table1,
            ),
            "",
            markdown_paired(t, boot),
            "",
            markdown_collapse(t, boot),
            "",
            "## Table 2: test P@1 (%) per relation",
            "",
            "Mean ± sample std over seeds; one seed: [95% bootstrap interval over facts].",
            "",
            markdown_table(["relation", *names], table2),
        ]
    )


def markdown_paired(t: Tables, boot: Bootstrap) -> str:
    """Paired differences in macro test P@1 (points), with how many relations each row wins
    beyond noise (all pairs per relation: ``paired_bootstrap.csv``)."""
    lines = ["## Paired differences: macro test P@1 (points)", ""]
    results = paired(t, boot)
    pairs = [(a, b, diff) for a, b, relation, diff in results if relation == "macro"]
    if not pairs:
        return "\n".join([*lines, "No two rows of a backbone with per-fact results to pair."])
    wins: Counter = Counter()
    parts: dict[tuple, dict[str, tuple]] = {}
    for a, b, relation, diff in results:
        if relation.startswith("macro:"):
            parts.setdefault((a.key, b.key), {})[relation.removeprefix("macro:")] = diff
        elif relation != "macro" and not within_noise(diff):
            wins[(a.key, b.key, diff[0] > 0)] += 1
    split = bool(parts)  # per-fact seen flags: the difference on seen and on unseen objects
    rows = []
    for a, b, diff in pairs:
        verdict = "within noise" if within_noise(diff) else "a" if diff[0] > 0 else "b"
        counts = f"{wins[(a.key, b.key, True)]} / {wins[(a.key, b.key, False)]}"
        found = parts.get((a.key, b.key), {})
        by_part = [interval_text(found.get(p), mark=True) for p in PARTS] if split else []
        row = [a.key.backbone, a.key.label(), b.key.label(), interval_text(diff), verdict]
        rows.append([*row, *by_part, counts, over_text(a, b)])
    header = ["backbone", "a", "b", "a - b [95% interval]", "better"]
    header += [f"{p} objects: a - b" for p in PARTS] if split else []
    header += ["relations a / b better", "macro over"]
    return "\n".join([*lines, markdown_table(header, rows)])


def over_text(a: Row, b: Row) -> str:
    """What a paired macro averages: "41 relations", or "40 common relations" when the rows
    cover different sets."""
    n = len(common_relations(a, b))
    return f"{n} relations" if a.relations == b.relations else f"{n} common relations"


def split_text(row: Row, part: str) -> str:
    """Macro test P@1 (%) on ``part`` objects, mean ± std over seeds, with the number of facts
    ("n/a": results from before the split; "—": no such facts)."""
    m, s, n = row.split(part)
    if n is None:
        return "n/a"
    return f"{plus_minus(m, s) or '—'} ({n})"


def prior_notes(t: Tables) -> list[str]:
    """A line for each backbone whose table has no prior row, saying how to add one."""
    relations = ",".join(t.relations)
    return [
        f"No prior row for {backbone}: the table cannot tell recall from the training prior. "
        "Add `prior` to the sweep's prompts, or run `ptl-train prompt=prior "
        f"backbone={backbone} task.relation=[{relations}] hydra.run.dir=DIR/prior` (with "
        "the table's other task settings; nothing trains) into the reported folder DIR and "
        "report again."
        for backbone in dict.fromkeys(row.key.backbone for row in t.rows)
        if not any(row.key.method == PRIOR and row.key.backbone == backbone for row in t.rows)
    ]


def markdown(
    t: Tables, problems: list[Problem], plots: Sequence[str] = (), boot: Bootstrap | None = None
) -> str:
    """The whole report: tables, notes on relation sets, missing/failed jobs, plots."""
    parts = ["# P-Tuning report", "", markdown_tables(t, boot or Bootstrap()), ""]
    found = notes(t)
    if found:
        parts += ["## Notes", "", *(f"- {note}" for note in found), ""]
    parts += [markdown_problems(problems), ""]
    if plots:
        parts += ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]
    return "\n".join(parts)


# --- plots -----------------------------------------------------------------------------------


def plot_relations(t: Tables) -> Figure:
    """Test P@1 per relation, one bar per row (manual vs P-Tuning ...), one panel per backbone;
    error bars are the std over seeds."""
    backbones = sorted({row.key.backbone for row in t.rows})
    labels = sorted({row.key.label() for row in t.rows})  # one colour per label in all panels
    width = max(6.0, 1.2 + 0.9 * len(t.relations))
    fig = Figure(figsize=(width, 3.2 * len(backbones)), layout="constrained")
    axes = fig.subplots(len(backbones), 1, squeeze=False)[:, 0]
    for ax, backbone in zip(axes, backbones, strict=True):
        rows = [row for row in t.rows if row.key.backbone == backbone]
        bar = 0.8 / len(rows)
        for i, row in enumerate(rows):
            xs, heights, errors = [], [], []
            for x, relation in enumerate(t.relations):
                m, s = mean_std(row.scores(relation))
                if m is not None:  # no bar where the row has no run of this relation
                    xs.append(x + (i - (len(rows) - 1) / 2) * bar)
                    heights.append(100 * m)
                    errors.append(100 * s if s is not None else 0.0)
            label = row.key.label()
            color = f"C{labels.index(label) % 10}"
            ax.bar(xs, heights, bar, yerr=errors, capsize=2, label=label, color=color)
        ax.set_xticks(range(len(t.relations)), t.relations)
        ax.set_ylabel("test P@1 (%)")
        ax.set_title(backbone)
        ax.legend(fontsize="small")
    return fig


def plot_encoders(t: Tables) -> Figure | None:
    """Encoder ablation: macro test P@1 per encoder (± std over seeds), one group per backbone
    and method; None when all runs used the same encoder."""
    rows = [row for row in t.rows if row.key.encoder]
    if not t.by_encoder or not rows:
        return None
    groups = sorted({(row.key.backbone, row.key.method) for row in rows})
    encoders = sorted({row.key.encoder for row in rows})
    fig = Figure(figsize=(max(5.0, 1.5 + 1.6 * len(groups)), 3.5), layout="constrained")
    ax = fig.subplots()
    bar = 0.8 / len(encoders)
    for i, encoder in enumerate(encoders):
        xs, heights, errors = [], [], []
        for x, (backbone, method) in enumerate(groups):
            match = [row for row in rows if row.key == RowKey(backbone, method, encoder)]
            if match:
                m, s = match[0].macro()
                xs.append(x + (i - (len(encoders) - 1) / 2) * bar)
                heights.append(100 * m)
                errors.append(100 * s if s is not None else 0.0)
        ax.bar(xs, heights, bar, yerr=errors, capsize=3, label=encoder)
    ax.set_xticks(range(len(groups)), [f"{b}\n{m}" for b, m in groups])
    ax.set_ylabel("macro test P@1 (%)")
    ax.set_title("Encoder ablation")
    ax.legend(title="encoder", fontsize="small")
    return fig


def plot_seen_unseen(t: Tables) -> Figure | None:
    """Recall or prior: macro test P@1 on seen and on unseen objects, a pair of bars per row
    (± std over seeds; rows that differ in any setting, e.g. ``backbone.control``, are
    separate pairs), one panel per backbone. The prior row's seen P@1 is drawn across the
    panel: what the training prior alone reaches (its unseen P@1 is 0 by construction).
    None when no row has the split."""
    rows = [row for row in t.rows if row.split("seen")[2] is not None]
    if not rows:
        return None
    backbones = list(dict.fromkeys(row.key.backbone for row in rows))
    most = max(sum(row.key.backbone == b for row in rows) for b in backbones)
    fig = Figure(figsize=(max(6.0, 1.5 + 2.2 * most), 3.8 * len(backbones)), layout="constrained")
    axes = fig.subplots(len(backbones), 1, squeeze=False)[:, 0]
    for ax, backbone in zip(axes, backbones, strict=True):
        panel = [row for row in rows if row.key.backbone == backbone]
        for i, part in enumerate(PARTS):
            xs, heights, errors = [], [], []
            for x, row in enumerate(panel):
                m, s, _ = row.split(part)
                if m is not None:
                    xs.append(x + (i - 0.5) * 0.4)
                    heights.append(100 * m)
                    errors.append(100 * s if s is not None else 0.0)
            ax.bar(xs, heights, 0.4, yerr=errors, capsize=2, label=f"{part} objects")
        prior = [row for row in panel if row.key.method == PRIOR]
        if prior and prior[0].split("seen")[0] is not None:
            seen = 100 * prior[0].split("seen")[0]
            ax.axhline(seen, color="grey", linestyle="--", label="Prior on seen objects")
        labels = []
        for row in panel:
            n_seen, n_unseen = row.split("seen")[2], row.split("unseen")[2]
            name = paper_label(row.key).replace(" (", "\n(").replace("; ", "\n")
            labels.append(f"{name}\nn={n_seen} / {n_unseen}")
        ax.set_xticks(range(len(panel)), labels, fontsize="small")
        ax.set_xlabel("n: seen / unseen test facts")
        ax.set_ylabel("macro test P@1 (%)")
        ax.set_title(f"{backbone}: seen vs unseen objects (recall or prior)")
        ax.legend(fontsize="small")
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """PNG without version or date metadata, so that reruns are byte-identical."""
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)


# --- the command -----------------------------------------------------------------------------


def write_report(t: Tables, problems: list[Problem], out: Path) -> str:
    """Write report.md, the CSVs and the plots into ``out``; returns the Markdown.

    A plot that does not apply (e.g. no encoder ablation) is removed if an older report left it."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    if t.rows:
        plots[RELATIONS_PNG] = plot_relations(t)
        plots[ENCODERS_PNG] = plot_encoders(t)
        plots[SEEN_UNSEEN_PNG] = plot_seen_unseen(t)
    written = []
    for name in (RELATIONS_PNG, SEEN_UNSEEN_PNG, ENCODERS_PNG):
        if plots.get(name) is not None:
            save_png(plots[name], out / name)
            written.append(name)
        else:
            (out / name).unlink(missing_ok=True)
    boot = Bootstrap()
    text = markdown(t, problems, written, boot)
    (out / REPORT_MD).write_text(text)
    (out / MACRO_CSV).write_text(to_csv(*macro_table(t, boot)))
    (out / RELATIONS_CSV).write_text(to_csv(*relation_table(t)))
    (out / PAIRED_CSV).write_text(to_csv(*paired_table(t, boot)))
    (out / COLLAPSE_CSV).write_text(to_csv(*collapse_table(t, boot)))
    return text
