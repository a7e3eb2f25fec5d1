"""Pins found by mutation testing of src/infalign/report: what a job's status and method are when its
record is odd, which runs are pooled into a method, world or series, the wording and interval order of
the matched-KL sentences and tables (docs/method.md §10), the theory-gap medians and their reading
(docs/method.md §10.1), and the findings' verdicts. Each test builds a few tiny run records in
``tmp_path`` (the helpers of tests/test_report.py) or hand-made gains, and runs in well under a second:
no model is trained, no bootstrap is drawn unless said."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from infalign.report.collect import Job, collect
from test_report import IDENTITY, fake_metrics, per_prompt_metrics, write_job

INFO = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
S, B2, B4 = "standard_win_rate", "bon2_win_rate", "bon4_win_rate"


def _job(name: str, *, world: dict | None = None, eval_note: str = "", status: str = "finished", **config) -> Job:
    """A :class:`Job` whose record holds only what :mod:`infalign.report.naming` reads of it."""
    record = SimpleNamespace(world=world or {}, method=None, method_info=None, transform=None, algo=None)
    return Job(name, Path(name), status, record=record, config=dict(config), eval_note=eval_note)


# ---------------------------------------------------------------- report/collect.py


def test_judges_of_no_known_name_come_after_the_reward_model_and_gold(tmp_path):
    """present_judges: the judges found in the finished records, ``reward_model`` and ``gold`` first (the
    order of ``JUDGES``), any other after them by name -- the column and panel order of the report.
    Mutation testing: sorting unknown judges first went unnoticed (every test sweep had the two judges)."""
    from infalign.report.collect import present_judges

    m = per_prompt_metrics("identity", INFO, 0.3, 0.3, {})
    m["eval"]["judges"] = {"length": m["eval"]["judges"]["gold"], "gold": m["eval"]["judges"]["gold"],
                           "reward_model": m["eval"]["judges"]["reward_model"]}
    write_job(tmp_path, "0", [], m)
    assert present_judges(collect(tmp_path)) == ["reward_model", "gold", "length"]


def test_a_record_of_a_status_the_report_does_not_know_is_missing(tmp_path):
    """collect.py's docstring: a ``metrics.json`` with a status the report does not know (here ``queued``)
    is ``missing`` with the reason naming it -- never ``finished`` (it has no results to show).
    Mutation testing: marking it finished went unnoticed."""
    from infalign.report.collect import load_job

    write_job(tmp_path, "0", [], {"status": "queued", "run_name": "r"})
    job = load_job(tmp_path / "0", tmp_path)
    assert (job.status, job.reason) == ("missing", "metrics.json has status='queued'")


def test_a_job_without_a_record_takes_its_seed_from_the_hydra_config(tmp_path):
    """A job that died before writing ``metrics.json`` is shown with the parts of ``.hydra/config.yaml`` the
    report reads -- ``seed`` among them, so runs.csv says which seed is missing.
    Mutation testing: dropping ``seed`` from the keys read went unnoticed."""
    from infalign.report.tables import job_row

    d = write_job(tmp_path, "0", ["seed=3"], None)
    (d / ".hydra" / "config.yaml").write_text("seed: 3\nalgo:\n  name: rloo\n  beta: 0.2\n")
    job = collect(tmp_path)[0]
    assert job.status == "missing"
    assert job_row(job, ["reward_model"])["seed"] == 3


# ---------------------------------------------------------------- report/naming.py


def test_a_legacy_record_trained_by_another_algorithm_is_named_with_it(tmp_path):
    """method_of for a record written before ``method``: the transform label, ``+<algo>`` when the
    algorithm is not rloo (docs/method.md §8: ``identity+ppo``) -- an identity run trained by PPO is not
    pooled with the identity runs trained by RLOO. Mutation testing: dropping ``+<algo>`` went unnoticed
    (the end-to-end test that has it is marked slow)."""
    from infalign.report.naming import method_of

    ppo = fake_metrics(IDENTITY, "identity", 0.3, 0.4, 0.6, 0.7)
    ppo["algo"] = "ppo"
    write_job(tmp_path, "0", [], ppo)
    write_job(tmp_path, "1", [], fake_metrics(IDENTITY, "identity", 0.3, 0.4, 0.6, 0.7))
    assert [method_of(j) for j in collect(tmp_path)] == ["identity+ppo", "identity"]


def test_a_record_of_no_world_evaluated_otherwise_keeps_its_evaluation_note():
    """comparison_worlds: a record without a world id joins the main world (the one most finished runs
    share) -- but evaluated unlike most runs (``Job.eval_note``) it is that world's other evaluation,
    ``w [eval.temperature=0.7]``, compared apart, not pooled with the main world's runs.
    Mutation testing: dropping the note of a world-less record went unnoticed."""
    from infalign.report.naming import comparison_worlds

    jobs = [_job("a", world={"world_id": "w"}), _job("b", world={"world_id": "w"}),
            _job("c", eval_note="eval.temperature=0.7"), _job("d")]
    worlds, main = comparison_worlds(jobs)
    assert main == "w"
    assert worlds == {"a": "w", "b": "w", "c": "w [eval.temperature=0.7]", "d": "w"}


def test_a_tie_of_settings_notes_every_value(tmp_path):
    """mark_odd_settings: of two calibrated runs at calibration.K 32 and 64 neither value is the common one, so
    both runs are named with theirs -- the tie used to leave the first value in sorted order unnoted, which
    then read as the entry's own (extension walkthrough: ``tanh3`` labelled a run at fn.a=2 of an entry whose
    file says 3). With a majority, only the odd run is noted. Mutation testing: the other value of a tie
    went unnoticed."""
    from infalign.report.naming import method_of

    for job, k in enumerate([64, 32]):
        m = per_prompt_metrics("identity", INFO, 0.2 + 0.2 * job, 0.3, {})
        m["config"]["calibration"] = {"K": k}
        write_job(tmp_path, str(job), [], m)
    assert [method_of(j) for j in collect(tmp_path)] == ["identity [calibration.K=64]", "identity [calibration.K=32]"]
    m = per_prompt_metrics("identity", INFO, 0.7, 0.3, {})
    m["config"]["calibration"] = {"K": 32}
    write_job(tmp_path, "2", [], m)
    assert [method_of(j) for j in collect(tmp_path)] == ["identity [calibration.K=64]", "identity", "identity"]


def test_a_procedure_node_without_n_is_n_1_as_make_procedure_builds_it():
    """procedure_of builds ``config.procedure`` as Hydra would: ``make_procedure(name, n=1)`` when the node
    has no ``n`` (bon1: the standard win rate's panel). Mutation testing: another default N went unnoticed."""
    from infalign.math.procedures import make_procedure
    from infalign.report.naming import procedure_of

    p = procedure_of(_job("0", procedure={"name": "bon"}))
    assert p == make_procedure("bon") and p.n == 1 and p.reduced().is_standard


def test_number_is_none_for_nan_and_infinity():
    """naming.number: ``x`` as a finite float, else None -- a NaN or infinite KL or win rate is an empty
    runs.csv cell, never a number a column's median or sort reads. Mutation testing: letting them through
    went unnoticed (only bools were checked)."""
    from infalign.report.naming import number

    assert [number(v) for v in (float("nan"), float("inf"), "-inf", "0.25", 2)] == [None, None, None, 0.25, 2.0]


@pytest.mark.parametrize("node, key, usual, value, odd", [
    ("eval", "top_p", 1.0, 0.9, "eval.top_p=0.9"),
    ("calibration", "smoothing", 1.0, 0.5, "calibration.smoothing=0.5"),
    ("data", "train_prompts", 32, 64, "data.train_prompts=64"),
    # another held-out prompt set: the matched-KL table left such a run out, but its plotted curve joined it to
    # the others (sweep walkthrough)
    ("data", "eval_prompts", 32, 64, "data.eval_prompts=64"),
    # a bf16 run beside 32-bit ones: its pools are drawn at its precision, its policy trained in it (review)
    ("trainer", "precision", "32-true", "bf16-mixed", 'trainer.precision="bf16-mixed"'),
    ("policy", "train_dtype", "float32", "bfloat16", 'policy.train_dtype="bfloat16"'),
])
def test_every_documented_setting_marks_a_run_that_differs_from_most(tmp_path, node, key, usual, value, odd):
    """naming.METHOD_SETTINGS / EVAL_SETTINGS / TRAINING_SETTINGS: a run whose ``eval.top_p`` differs from
    most runs' is another evaluation (``Job.eval_note``, compared apart), whose ``calibration.smoothing`` or
    ``data.train_prompts`` differs is another method (``Job.method_note``) -- the three runs here differ in
    that one setting only. Mutation testing: dropping any of the three keys went unnoticed (the tests
    varied temperature, K and algo settings)."""
    for job, v in enumerate([usual, usual, value]):
        m = per_prompt_metrics("identity", INFO, 0.2 + 0.2 * job, 0.3, {})
        m["config"][node] = {key: v}
        write_job(tmp_path, str(job), [], m)
    jobs = collect(tmp_path)
    notes = [(j.method_note, j.eval_note) for j in jobs]
    want = ("", odd) if node == "eval" or key in ("eval_prompts", "precision") else (odd, "")
    assert notes == [("", ""), ("", ""), want]


# ---------------------------------------------------------------- report/matched.py


def _pp_job(name: str, method: str, *, ns=(1, 2, 4), seed: int = 0, prompt_ids=("a", "b"), procedure=None) -> Job:
    """A finished job whose record has per-prompt lists (reward_model: kl, standard, bon2, bon4)."""
    from infalign.pipeline.run_record import RunRecord

    pp = {"reward_model": {"kl": [0.1, 0.2], S: [0.5, 0.6], B2: [0.6, 0.7], B4: [0.7, 0.8]}}
    if prompt_ids is not None:
        pp["prompt_ids"] = list(prompt_ids)
    metrics = {"status": "finished", "method": method, "seed": seed,
               "method_info": {"algo": "rloo", "transform": method, "depends_on_n": False, "trained_n": 4},
               "eval": {"procedure": "bon", "ns": list(ns), "per_prompt": pp, "judges": {}}}
    config = {"procedure": procedure} if procedure else {}
    return Job(job=name, path=Path(name), status="finished", record=RunRecord.from_json(metrics), config=config)


def test_a_record_without_eval_ns_is_compared_at_its_own_procedures_n():
    """panel_ns: a record without ``eval.ns`` was evaluated at its own procedure's N (``config.procedure``,
    bon4 here), so it joins the bon4 panel -- not the standard one. Mutation testing: N = 1 there went
    unnoticed."""
    from infalign.report.matched import panel_ns

    assert panel_ns(_pp_job("0", "identity", ns=(), procedure={"name": "bon", "n": 4})) == [4]


def test_per_prompt_lists_without_prompt_ids_are_left_out_with_a_note():
    """panel_runs: per-prompt lists are paired by prompt id (docs/method.md §10), so a record whose
    ``eval.per_prompt`` has no ``prompt_ids`` joins no panel and the notes say why.
    Mutation testing: dropping the ``prompt_ids`` check went unnoticed."""
    from infalign.report.matched import panel_runs

    panels, notes = panel_runs([_pp_job("0", "identity"), _pp_job("1", "raw", prompt_ids=None)], ["reward_model"])
    assert {r.method for runs in panels.values() for r in runs} == {"identity"}
    assert notes == ["job 1 (raw): no per-prompt statistics in metrics.json (recorded before eval.per_prompt "
                     "existed): shown in runs.csv, left out of the matched-KL comparison"]


def test_compare_panels_passes_the_chosen_methods_and_baselines_in_panel_order(monkeypatch):
    """compare_panels: ``methods`` keeps only those methods' runs; ``baselines`` reaches
    ``math.matched_kl.matched_kl``; the panels come standard first, then by family and increasing N.
    ``matched_kl`` is replaced by a recorder (no bootstrap). Mutation testing: the inverted method filter,
    the baselines dropped, standard last and decreasing N all went unnoticed by the fast tests."""
    from infalign.math.matched_kl import MatchedKL
    from infalign.report import matched

    calls = []

    def fake(runs, baselines=None, **kw):
        calls.append(({r.method for r in runs}, baselines))
        return MatchedKL(np.zeros(0), False, {})

    monkeypatch.setattr(matched, "matched_kl", fake)
    jobs = [_pp_job("0", "identity"), _pp_job("1", "raw"), _pp_job("2", "expn(t=4)")]
    panels, _ = matched.compare_panels(jobs, ["reward_model"], baselines=["raw"], methods=["identity", "raw"])
    assert [p.name for p in panels] == ["standard", "bon2", "bon4"]
    assert calls == [({"identity", "raw"}, ["raw"])] * 3


def _a(*v) -> np.ndarray:
    return np.array(v, float)


def _one_seed_gain(gain: float, half: float = 0.005):
    """A gain of one seed per method at one KL: prompt CI ``gain +- half``, prompt-significant, no seed interval."""
    from infalign.math.matched_kl import Gain

    nan = _a(math.nan)
    return Gain("expn(t=4)", "identity", _a(gain), _a(gain - half), _a(gain + half), 1, nan, np.array([False]),
                nan, nan, "none", 1, np.array([True]), nan, nan)


def test_matched_kl_rows_label_each_column_with_the_panels_own_value():
    """matched_kl.csv's head columns: ``panel`` bon4, ``family`` bon, ``n`` 4, ``judge`` reward_model and
    ``metric`` the per-prompt key compared, ``bon4_win_rate`` (findings.py reads rows by panel and judge).
    Mutation testing: the panel's name in the ``metric`` column went unnoticed."""
    from infalign.math.matched_kl import MatchedKL
    from infalign.math.procedures import BestOfN
    from infalign.report.matched import Panel, matched_kl_rows

    p = Panel(BestOfN(4), "reward_model", MatchedKL(np.zeros(0), False, {}, note="no common KL", n_prompts=40))
    (row,) = matched_kl_rows([p])
    assert row == {"panel": "bon4", "family": "bon", "n": 4, "judge": "reward_model", "metric": B4,
                   "n_prompts": 40, "note": "no common KL"}


def test_a_one_seed_clause_prints_its_prompt_interval_low_then_high():
    """gain_clause with one seed per method: ``is ahead of ... on these prompts: +3.0 [+2.5, +3.5] points``
    -- the prompt CI's lower end first (gain 0.03, CI 0.03 -+ 0.005, in points x100). Mutation testing:
    the bounds swapped in the one-seed sentence went unnoticed (the tests checked its verb only)."""
    from infalign.report.matched import gain_clause

    g = _one_seed_gain(0.03)
    clause = gain_clause(SimpleNamespace(result=SimpleNamespace(grid=_a(0.3))), g, 0)
    assert clause.startswith("expn(t=4) is ahead of identity on these prompts: +3.0 [+2.5, +3.5] points "
                             "(1 seed each: training noise not assessed, no verdict)")


def test_a_chord_interval_with_one_undefined_end_is_not_computed():
    """chord_at: ``(chord_low, chord_high)`` only where both ends are finite, else ``(None, None)`` -- and
    then the sentence says the chord check cannot be made, instead of printing ``nan`` as a bound.
    Mutation testing: ``and`` -> ``or`` (one finite end enough) went unnoticed."""
    from dataclasses import replace

    from infalign.report.matched import chord_at, significant_chord_note

    g = replace(_one_seed_gain(0.03), chord_low=_a(0.01), chord_high=_a(math.nan))
    assert chord_at(g, 0) == (None, None)
    assert significant_chord_note(g, 0).startswith("the chord check cannot be made here")


def test_a_negative_gain_clears_the_chords_only_when_every_intervals_upper_end_does():
    """chord_note for a gain below 0 (docs/method.md §10, the interpolation check): evidence only when the
    *largest* upper end of its intervals (prompt CI, seed, total) is below what the chords make at their
    low end. Gain -3 points with upper ends -2, -0.5, -1.5 and chords [-1, 0]: the seed interval's -0.5 does
    not clear -1, so "not evidence"; with all three below -1 it is evidence (""). Without intervals the gain
    itself is compared: +3 points against chords [0, +1] is evidence. Mutation testing: any one end
    clearing, and the fallback 0 instead of the gain, went unnoticed."""
    from infalign.report.matched import chord_note

    assert chord_note(-0.03, -0.01, 0.0, [-0.02, -0.005, -0.015]) == (
        "the chords alone make [-1.0, +0.0], which the seed interval's upper end (-0.5) does not clear: not evidence")
    assert chord_note(-0.03, -0.01, 0.0, [-0.02, -0.012, -0.015]) == ""
    assert chord_note(0.03, 0.0, 0.01) == ""
    assert chord_note(0.03, 0.0, 0.01, [math.nan, None]) == ""


def _three_kl_panel():
    """bon4 at KLs 0.1, 0.2, 0.3: identity (4 runs, 2 seeds) and expn(t=4) (6 runs, 3 seeds) with win rates
    0.60/0.62/0.64 and 0.63/0.66/0.69 (CIs -+0.01), and the gain expn(t=4) - identity of +3, +4, +5 points
    (prompt CI -+0.5, seed -+0.4, total -+0.6 points), significant at the last two KLs, prompt-significant
    at all three (so the two flags tell the markdown's ``*`` apart); the chords make 0 (no chord note)."""
    from infalign.math.matched_kl import Gain, MatchedKL
    from infalign.math.procedures import BestOfN
    from infalign.report.matched import Panel

    g = _a(0.03, 0.04, 0.05)
    gain = Gain("expn(t=4)", "identity", g, g - 0.005, g + 0.005, 3, np.full(3, 0.002), np.array([False, True, True]),
                g - 0.004, g + 0.004, "paired", 3, np.array([True] * 3), g - 0.006, g + 0.006,
                np.zeros(3), np.zeros(3))
    wr = {"identity": _a(0.60, 0.62, 0.64), "expn(t=4)": _a(0.63, 0.66, 0.69)}
    result = MatchedKL(_a(0.1, 0.2, 0.3), True, {}, win_rate={m: (v, v - 0.01, v + 0.01) for m, v in wr.items()},
                       n_seeds={"identity": 2, "expn(t=4)": 3}, n_runs={"identity": 4, "expn(t=4)": 6},
                       gains=[gain], n_prompts=40)
    return Panel(BestOfN(4), "reward_model", result)


def test_the_matched_kl_markdown_table_by_hand():
    """matched_kl.md (docs/method.md §10): the header names each method's runs and seeds (``n=4, seeds=2``)
    and each gain as ``method - baseline``; a row per common KL holds each method's win rate [CI] at that KL
    and the gain in points [prompt CI low, high], its seed and total intervals, ``*`` where *significant*
    (every interval, not the prompt CI alone) -- at KL 0.1 the gain is prompt-significant only, so no star;
    the CI level is stated as 95%. Mutation testing: the runs/seeds counts swapped, the gain's name reversed,
    the bounds swapped, the first KL's win rate on every row, the prompt-only star and a 90% level in the
    text all went unnoticed (the table was checked only in slow tests)."""
    from infalign.report.matched import matched_kl_markdown

    md = matched_kl_markdown([_three_kl_panel()], ["a note"])
    assert "; 95% percentile CIs from a paired bootstrap" in md and "\n- a note\n" in md
    table = md.split("## bon4 (reward_model): `bon4_win_rate`, 40 prompts\n\n")[1].splitlines()
    assert table[0] == ("| KL | identity (n=4, seeds=2) | expn(t=4) (n=6, seeds=3) | expn(t=4) - identity |")
    assert table[2] == ("| 0.1 | 0.600 [0.590, 0.610] | 0.630 [0.620, 0.640] | +3.0 [+2.5, +3.5] 3 seeds "
                        "[+2.6, +3.4], total [+2.4, +3.6] |")
    assert table[4] == ("| 0.3 | 0.640 [0.630, 0.650] | 0.690 [0.680, 0.700] | +5.0 [+4.5, +5.5] 3 seeds "
                        "[+4.6, +5.4], total [+4.4, +5.6] * |")


def test_every_gain_of_a_panel_gets_its_sentence_and_a_note_is_said_once():
    """matched_kl_summary: one sentence per panel *and gain* (two gains here: two sentences), and a panel
    without a common KL says its note once (left_out repeats the note only for a panel that still has a
    comparison). Mutation testing: keeping only the first gain's sentence, and the note said twice, went
    unnoticed."""
    from dataclasses import replace

    from infalign.math.matched_kl import MatchedKL
    from infalign.math.procedures import BestOfN
    from infalign.report.matched import Panel, matched_kl_summary

    p = _three_kl_panel()
    other = replace(p.result.gains[0], baseline="raw")
    p.result.gains.append(other)
    lines = matched_kl_summary([p])
    assert [line.split("; at KL 0.20, ")[1].split(":")[0] for line in lines] == ["expn(t=4) beats identity",
                                                                                 "expn(t=4) beats raw"]
    empty = Panel(BestOfN(2), "reward_model", MatchedKL(np.zeros(0), False, {}, note="no KL covered by every method"))
    assert matched_kl_summary([empty]) == ["bon2 (reward_model): no KL covered by every method"]


def test_a_runs_seed_is_its_records_even_when_its_config_names_another(tmp_path):
    """panel_runs pairs runs by seed: the record's ``seed`` (what the run used) wins over ``config.seed``
    (9 here, e.g. a config edited after the run). Mutation testing: the config's seed first went unnoticed
    (the existing test set ``config.seed`` to None)."""
    from infalign.report.matched import panel_runs

    for job, seed in enumerate([1, 2]):
        m = per_prompt_metrics("identity", INFO, 0.2 + 0.2 * job, 0.3, {}, seed=seed)
        m["config"]["seed"] = 9
        write_job(tmp_path, str(job), [], m)
    panels, _ = panel_runs(collect(tmp_path), ["reward_model"])
    assert {r.label: r.seed for runs in panels.values() for r in runs} == {"0": 1, "1": 2}


# ---------------------------------------------------------------- report/printing.py


def _row(job: str, procedure: str, seed: int, kl: float | None) -> dict:
    """A finished runs.csv row with what print_tables reads (reward model only; every CI 0.6 [0.5, 0.7])."""
    from infalign.report.tables import RATES

    row = {"job": job, "status": "finished", "method": "identity", "procedure": procedure, "seed": seed, "beta": 0.1}
    for rate in RATES:
        row |= {f"reward_model_{rate}": 0.6, f"reward_model_{rate}_low": 0.5, f"reward_model_{rate}_high": 0.7}
    return row | {"reward_model_kl": kl}


def test_the_console_table_of_several_procedures_and_seeds(tmp_path):
    """print_tables' table of finished runs: sorted by method, then increasing KL with a run of unknown KL
    last; a column for procedure and for seed as soon as two values occur; the last column is named
    "inference win" when the rows hold several procedures (each its own); the matched-KL notes (runs left
    out of the comparison) are printed. Mutation testing: unknown KLs first, the columns shown from three
    values on, one procedure's name on every row's column and the notes unprinted went unnoticed."""
    from rich.console import Console

    from infalign.report.build import Report
    from infalign.report.printing import print_tables

    rows = [_row("job-a", "bon4", 0, 0.5), _row("job-b", "won4", 1, None), _row("job-c", "bon4", 0, 0.2)]
    summary = {"counts": {"finished": 3, "total": 3}, "matched_kl": {"notes": ["job 7 (raw): left out"]}}
    console = Console(file=io.StringIO(), width=250)
    print_tables(Report(tmp_path, tmp_path, ["reward_model"], [], rows, [], summary, {}), console)
    out = console.file.getvalue()
    assert out.index("job-c") < out.index("job-a") < out.index("job-b")
    head = next(line for line in out.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in head.strip("┃│ ").split("┃")][:4] == ["job", "procedure", "seed", "method"]
    assert "inference win" in head and "bon4 win" not in head
    assert "  job 7 (raw): left out" in out


# ---------------------------------------------------------------- report/tables.py


def test_a_runs_row_takes_the_records_values_and_its_own_procedures_theory(tmp_path):
    """job_row: beta, seed and steps are the record's (what the run used), the config's only where the record
    has none (its config here says beta 0.5, seed 9, steps 99); the theory's win rate at the measured KL is
    the run's procedure's (bon4: 0.77 in the record, the standard one is 0.66); ``n_prompts`` is the first
    column's (the KL's, 40; the win rates' say 39 here). Mutation testing: the config first, the standard
    theory value and the last column's count went unnoticed."""
    from infalign.report.tables import job_row

    m = fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70)
    m["seed"] = 2
    m["config"]["algo"] |= {"beta": 0.5, "steps": 99}
    m["config"]["seed"] = 9
    for name, ci in m["eval"]["judges"]["reward_model"].items():
        ci["n_prompts"] = 40 if name == "kl" else 39
    write_job(tmp_path, "0", [], m)
    row = job_row(collect(tmp_path)[0], ["reward_model"])
    assert (row["beta"], row["seed"], row["steps"]) == (0.3, 2, 10)
    assert row["theory_inference_win_rate_at_measured_kl"] == 0.77
    assert row["reward_model_n_prompts"] == 40


def test_an_offline_baselines_row_has_no_transform_family_or_t(tmp_path):
    """tables.py's docstring: transform family and ``t`` (and the transform label) are empty for the
    offline baselines, which train on no transform (``method_info.transform`` null) -- their config's
    default exp(t=4) is not theirs, so a filter on family or t must not find them. Mutation testing: the
    config's transform in those columns went unnoticed (the end-to-end test is slow)."""
    from infalign.report.tables import job_row

    m = per_prompt_metrics("ipo(N=4)", {"algo": "ipo", "transform": None, "depends_on_n": True, "trained_n": 4},
                           0.3, 0.3, {})
    write_job(tmp_path, "0", [], m)
    row = job_row(collect(tmp_path)[0], ["reward_model"])
    assert (row["method"], row["transform"], row["family"], row["t"]) == ("ipo(N=4)", None, None, None)


def test_runs_md_puts_each_value_under_its_column(tmp_path):
    """runs.md: the header ``| job | status | run | method | procedure | beta | seed | ...`` and each row's
    cells in that order (beta 0.3, seed 2 here). Mutation testing: beta and seed swapped went unnoticed."""
    from infalign.report.tables import job_row, markdown

    m = fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70)
    m["seed"] = 2
    write_job(tmp_path, "0", [], m)
    jobs = collect(tmp_path)
    md = markdown([job_row(j, ["reward_model"]) for j in jobs], ["reward_model"], jobs, tmp_path).splitlines()
    head = md.index(next(line for line in md if line.startswith("| job |")))
    assert md[head].startswith("| job | status | run | method | procedure | beta | seed |")
    assert md[head + 2].startswith("| 0 | finished | bon4-identity-b0.3 | identity | bon4 | 0.3 | 2 |")


# ---------------------------------------------------------------- report/series.py


def test_a_theory_curves_inference_win_rate_is_the_procedures_not_the_standard_one(tmp_path, monkeypatch):
    """theory_curves: a series' curve holds the theory's ``win_rate`` (the procedure's, bon4) under
    ``win_rate`` and its standard win rate under ``standard_win_rate`` -- the inference plot draws the first.
    ``theory.frontier`` is replaced by constants (0.7 and 0.6). Mutation testing: the standard win rate
    under ``win_rate`` went unnoticed by the fast tests."""
    from infalign.math import theory
    from infalign.report.series import build_series

    def frontier(transform, procedure, grid):
        n = len(grid)
        return SimpleNamespace(transform="identity", kl_budget=np.asarray(grid, float), beta=np.ones(n),
                               standard_win_rate=np.full(n, 0.6), win_rate=np.full(n, 0.7), valid=np.ones(n, bool))

    monkeypatch.setattr(theory, "frontier", frontier)
    write_job(tmp_path, "0", [], per_prompt_metrics("identity", INFO, 0.3, 0.3, {}))
    (s,) = build_series(collect(tmp_path), ["reward_model"])
    curve = s.theory["reward_model"]
    assert set(curve["win_rate"]) == {0.7} and set(curve["standard_win_rate"]) == {0.6}



def test_a_series_gets_its_theory_curve_when_only_a_later_run_measured_the_judges_kl(tmp_path, monkeypatch):
    """theory_curves: a judge's curve is drawn when *any* run of the series measured that judge's KL -- here
    the first run's record has no reward-model KL, the second's has (0.5). ``theory.frontier`` is a constant
    stand-in. Mutation testing: looking at the first run alone went unnoticed."""
    from infalign.math import theory
    from infalign.report.series import build_series

    def frontier(transform, procedure, grid):
        n = len(grid)
        return SimpleNamespace(transform="identity", kl_budget=np.asarray(grid, float), beta=np.ones(n),
                               standard_win_rate=np.full(n, 0.6), win_rate=np.full(n, 0.7), valid=np.ones(n, bool))

    monkeypatch.setattr(theory, "frontier", frontier)
    first = per_prompt_metrics("identity", INFO, 0.3, 0.3, {})
    del first["eval"]["judges"]["reward_model"]["kl"]
    write_job(tmp_path, "0", [], first)
    write_job(tmp_path, "1", [], per_prompt_metrics("identity", INFO, 0.5, 0.2, {}))
    (s,) = build_series(collect(tmp_path), ["reward_model"])
    assert s.theory["reward_model"] is not None and 0.5 in s.theory["reward_model"]["kl"]

# ---------------------------------------------------------------- report/theory_gap.py


def _entry(gaps: dict, half: float = 0.001, runs: int = 9, seeds: int = 9) -> dict:
    """diagnose's input: signed median gaps, |gap| medians, CI half-widths ``half``, KL ratio 1."""
    return {"median_abs_gap": {k: abs(v) for k, v in gaps.items()}, "median_gap": dict(gaps),
            "median_ci_half_width": dict.fromkeys(gaps, half), "median_kl_ratio": 1.0, "runs": runs, "seeds": seeds}


def test_the_noise_band_is_1_25_half_widths_over_the_root_of_the_pools():
    """diagnose (docs/method.md §10.1): a gap is noise when ``|median gap| <= 1.25 h / sqrt(n)``. With h = 0.08
    and n = 25 seeds the band is 1.25 * 0.08 / 5 = 0.020: a 0.03 gap is beyond it ("above"); a 1.96 factor
    (0.031) would call it noise. Mutation testing: 1.96 went unnoticed (the tests' gap, 0.04, was beyond both)."""
    from infalign.report.theory_gap import diagnose

    assert diagnose(_entry({B4: 0.03}, half=0.08, runs=25, seeds=25))["limits"] == ["above"]
    assert diagnose(_entry({B4: 0.019}, half=0.08, runs=25, seeds=25))["limits"] == ["on_target"]


def test_a_thin_tail_needs_its_signed_gap_below_minus_the_target_and_takes_a_standard_gap_at_the_target():
    """thin_tail: the standard win rate *on target* (median |gap| <= 0.02 -- at 0.02 exactly it is) and an
    inference-time column below theory by more than the target (signed median < -0.02). A bon4 column off
    target by its |gap| median but with a signed median of -0.015 (runs on both sides) is not a thin tail,
    nor "above" theory. Mutation testing: ``<`` for the standard's ``<=``, ``g < target`` for ``g < -target``
    and ``g > -target`` for ``g > target`` went unnoticed."""
    from infalign.report.theory_gap import THEORY_TARGET, diagnose

    assert THEORY_TARGET == 0.02
    assert diagnose(_entry({S: 0.02, B4: -0.05}))["limits"] == ["thin_tail"]
    scattered = _entry({S: 0.0, B4: -0.015})
    scattered["median_abs_gap"][B4] = 0.05
    assert not {"thin_tail", "above"} & set(diagnose(scattered)["limits"])


def test_a_column_off_target_beyond_noise_always_gets_a_code():
    """Every off-target column beyond noise gets a code the reading names (docs/method.md §10). Mutation
    testing found one without: bon4's median |gap| 0.05 (off target) with its signed median -0.015 within the
    target and beyond the noise band (1.25 * 0.001 / 3 = 0.0004) -- runs on both sides of theory -- had no
    code, and the sentence read "off target (worst: bon4 0.050): " and stopped. It is ``scattered``; a signed
    median beyond the target stays ``below`` (and ``thin_tail`` with the standard win rate on target)."""
    from infalign.report.theory_gap import diagnose

    scattered = _entry({S: 0.0, B4: -0.015})
    scattered["median_abs_gap"][B4] = 0.05
    d = diagnose(scattered)
    assert d["limits"] == ["scattered"] and not d["reading"].endswith(": ")
    assert d["reading"] == ("off target (worst: bon4 0.050): bon4 off by more than 0.02 run by run but on both "
                            "sides of theory (median signed gap within 0.02)")
    one_side = _entry({S: 0.03, B4: -0.04})
    assert diagnose(one_side)["limits"] == ["below", "above"]



def test_a_theory_gap_rows_seed_is_the_records(tmp_path):
    """theory_gap_rows: ``seed`` is the record's (3), not ``config.seed`` (9 here) -- the seeds counted as
    independent reference pools by median_theory_gap. Mutation testing: the config's seed went unnoticed
    (the existing test had the same seed in both)."""
    from infalign.report.theory_gap import theory_gap_rows

    m = per_prompt_metrics("identity", INFO, 0.3, 0.3, {}, seed=3)
    m["config"]["seed"] = 9
    write_job(tmp_path, "0", [], m)
    assert {r["seed"] for r in theory_gap_rows(collect(tmp_path))} == {3}


# ---------------------------------------------------------------- report/findings.py


def test_a_contradiction_larger_than_the_aa_noise_is_beyond_it(tmp_path):
    """read_against_aa compares the *size* of a significant gain with the A/A control's largest |gain|:
    expn(t=4) - identity = -5 points, significant at every KL (contradicting +1), against a control whose
    |gains| are 1 point, is beyond A/A noise -- a real contradiction, not "within A/A noise".
    Mutation testing: the signed gain (any negative one "within") went unnoticed."""
    from infalign.report.findings import Claim, findings
    from test_findings import rows, write

    write(tmp_path, "bon/report_transforms", rows("bon4", "expn(t=4)", "identity", [-0.05] * 6, [True] * 6))
    write(tmp_path, "null/report_identity", rows("bon4", "identity[replica=1]", "identity", [0.01] * 6, [False] * 6))
    claims = (Claim("null", "null/report_identity", "aa", ("bon4",), ("identity[replica=1]",), "identity", 0),
              Claim("bon", "bon/report_transforms", "x", ("bon4",), ("expn(t=4)",), "identity", +1))
    (c,) = findings(tmp_path, claims)[1].comparisons
    assert c.aa == "beyond" and c.outcome.startswith("contradicted (beyond the A/A control's 1.0 points")


def test_a_controls_largest_gain_is_over_the_cells_it_judged(tmp_path):
    """An A/A control's verdict: ``passes (largest |gain| over the 6 cells: 1.0 points; 1 with 1 seed of 2
    comparisons)`` -- the largest |gain| is over the cells it counted (the comparison with seeds); the
    one-seed comparison's +5 points is left out with it. Mutation testing: the largest over every measured
    comparison (5.0 points over "6 cells") went unnoticed."""
    from infalign.report.findings import Claim, read_claim
    from test_findings import rows, write

    write(tmp_path, "null/report_identity", rows("bon4", "identity[replica=1]", "identity", [0.01] * 6, [False] * 6)
          + rows("bon2", "identity[replica=1]", "identity", [0.05] * 6, [False] * 6, n_seeds=1))
    f = read_claim(Claim("null", "null/report_identity", "aa", ("bon4", "bon2"), ("identity[replica=1]",), "identity",
                         0), tmp_path)
    assert f.verdict == "passes (largest |gain| over the 6 cells: 1.0 points; 1 with 1 seed of 2 comparisons)"


def test_the_best_of_n_baselines_are_expected_to_trail_identity_on_the_standard_win_rate():
    """CLAIMS: the paper's finding "calibrated identity is best on the standard win rate" (README, the
    findings table: BoN-SFT -3.2, IPO -3.4) is the claim that ``bon_sft(N=4)`` and ``ipo(N=4)`` trail identity
    on the standard panel -- ``expect = -1``; a +1 would read the paper's result as contradicted.
    Mutation testing: the sign flipped went unnoticed."""
    from infalign.report.findings import CLAIMS

    (claim,) = [c for c in CLAIMS if c.methods == ("bon_sft(N=4)", "ipo(N=4)")]
    assert (claim.panels, claim.baseline, claim.expect, claim.judge) == (("standard",), "identity", -1, "reward_model")


# ---------------------------------------------------------------- report/plots.py


def test_error_bars_run_from_the_low_bound_down_and_to_the_high_bound_up():
    """plots._err: matplotlib's errorbar takes [below, above] lengths; a win rate of 0.5 with its CI [0.4, 0.7]
    draws 0.1 below and 0.2 above (an asymmetric CI, as a bootstrap's percentile interval is). Mutation
    testing: the bounds swapped (0.2 below, 0.1 above: a mirrored CI) went unnoticed. A row without bounds
    draws none."""
    from infalign.report.plots import _err

    rows = [{"w_low": 0.4, "w_high": 0.7}, {"w_low": None, "w_high": None}]
    np.testing.assert_allclose(_err(rows, "w", np.array([0.5, 0.6])), [[0.1, 0.0], [0.2, 0.0]], atol=1e-12)


def test_the_gain_plot_names_each_line_method_minus_baseline(tmp_path, monkeypatch):
    """plot_gains: a gain is method minus baseline (docs/method.md §10), and its line's legend says so:
    ``expn(t=4) - identity``. Mutation testing: ``identity - expn(t=4)`` went unnoticed."""
    from infalign.infra import plotting
    from infalign.report.plots import plot_gains
    from test_report import _gain, _panel

    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    plot_gains([_panel([0.1, 0.2, 0.3], [_gain([0.01, 0.02, 0.03], [True] * 3)])], ["reward_model"], tmp_path / "g.png")
    labels = [t.get_text() for ax in figures[0].axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "expn(t=4) - identity" in labels and "identity - expn(t=4)" not in labels


def test_two_gains_sharing_a_theory_curve_draw_it_once_naming_both(tmp_path, monkeypatch):
    """WoN walkthrough: exp(t=-4) - identity and exp(t=-4)+ppo - identity have one theory gain (the theory knows
    the transform, not the algorithm); drawn per gain, the second dashed line covered the first exactly and the
    RLOO comparison looked theory-less. One dashed line, its label naming both; a different curve is its own."""
    import dataclasses

    from infalign.infra import plotting
    from infalign.report.plots import plot_gains
    from test_report import _gain, _panel

    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    rloo = _gain([0.01, 0.02, 0.03], [True] * 3)
    ppo = dataclasses.replace(rloo, method="expn(t=4)+ppo")
    log = dataclasses.replace(rloo, method="log")
    panel = _panel([0.1, 0.2, 0.3], [rloo, ppo, log])
    shared = np.array([0.04, 0.05, 0.06])
    panel.theory_gain = {("expn(t=4)", "identity"): shared, ("expn(t=4)+ppo", "identity"): shared.copy(),
                         ("log", "identity"): np.array([-0.01, -0.02, -0.03])}
    plot_gains([panel], ["reward_model"], tmp_path / "g.png")
    dashed = [ln for ln in figures[0].axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert sorted(ln.get_label() for ln in dashed) == ["expn(t=4) - identity, expn(t=4)+ppo - identity (theory)",
                                                      "log - identity (theory)"]


def test_a_t_familys_shade_darkens_with_abs_t():
    """series_colors: the series of a t family (exp) get shades of its colormap, darker for larger |t|,
    whatever their order and sign: |t| = 2, 4, 8 at 0.45, 0.70, 0.95 of Reds. Mutation testing: the shades
    reversed (lighter for larger |t|) went unnoticed."""
    import matplotlib

    from infalign.report.plots import series_colors

    series = [SimpleNamespace(family="exp", t=t, key=("exp", t)) for t in (4.0, -8.0, 2.0)]
    colors = series_colors(series)
    reds = matplotlib.colormaps["Reds"]
    assert colors[("exp", 2.0)] == reds(0.45) and colors[("exp", 4.0)] == reds(0.70)
    assert colors[("exp", -8.0)] == reds(0.95)
    assert sum(colors[("exp", 2.0)][:3]) > sum(colors[("exp", 4.0)][:3]) > sum(colors[("exp", -8.0)][:3])


# ---------------------------------------------------------------- report/build.py


def test_a_baseline_whose_runs_all_failed_is_a_method_of_the_sweep(tmp_path):
    """build_report's --baseline check takes every method the sweep ran, failed runs included: a baseline
    whose runs all failed is no typo -- its panels say it has no finished run -- while a name no run has is a
    ConfigError naming --baseline. Mutation testing: the check against finished runs only (a ConfigError for
    the failed baseline) went unnoticed."""
    from infalign.errors import ConfigError
    from infalign.report.build import build_report
    from test_report import RAW

    write_job(tmp_path, "0", ["transform=identity"], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.6, win=0.7))
    failed = {"status": "failed", "error": "boom", "config": fake_metrics(RAW, "raw", 1.0, 0, 0, 0)["config"]}
    write_job(tmp_path, "1", ["transform=raw"], failed)
    build_report(tmp_path, tmp_path / "report", baselines=["raw"], num_resamples=100)
    with pytest.raises(ConfigError) as err:
        build_report(tmp_path, tmp_path / "report2", baselines=["rawx"], num_resamples=100)
    assert err.value.key == "--baseline"


# ---------------------------------------------------------------- report/wandb_run.py


def _wandb_job(tmp_path, name: str, **logger) -> Job:
    return Job(name, tmp_path / "sweep" / name, "finished",
               config={"logger": {"_target_": "infalign.pipeline.loggers.RunWandbLogger", **logger}})


def test_the_report_run_joins_the_sweeps_most_common_group_and_is_offline_if_any_job_was(tmp_path):
    """wandb_settings: the report's W&B run goes to the group most of the sweep's jobs logged to (3 of 4
    here), and is offline when any job logged offline -- a sweep partly offline cannot be synced in part. A job
    with W&B disabled (``mode: disabled``) logged nothing: it gives no report run (W&B review: an offline one in a
    group without runs). Mutation testing: the least common group and ``all`` for ``any`` went unnoticed."""
    from infalign.report.wandb_run import wandb_settings

    jobs = [_wandb_job(tmp_path, str(i), group="g-main", mode="online") for i in range(3)]
    jobs.append(_wandb_job(tmp_path, "3", group="g-odd", mode="offline"))
    settings = wandb_settings(jobs, tmp_path / "sweep")
    assert settings["group"] == "g-main" and settings["offline"] is True
    assert settings["groups"] == ["g-main", "g-odd"]  # (named in the printed summary: a dir of several sweeps)
    assert wandb_settings(jobs[:3], tmp_path / "sweep")["offline"] is False
    assert wandb_settings([_wandb_job(tmp_path, "0", group="g", mode="disabled")], tmp_path) is None
    assert wandb_settings([*jobs[:3], _wandb_job(tmp_path, "4", group="g-odd", mode="disabled")],
                          tmp_path / "sweep")["groups"] == ["g-main"]


def test_a_resumed_run_shows_where_it_resumed_beside_its_training_time(tmp_path):
    """Walkthrough finding: a resumed run read as a plain finished one in runs.csv and runs.md, its
    ``train_s`` (11.9 s against ~17 s for its sweep's other runs) counting only the steps after the resume.
    runs.csv has ``resumed_from_step`` (empty for a run trained in one go) and runs.md says it beside train_s."""
    from infalign.report.build import build_report

    plain = fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.6, win=0.7)
    resumed = {**fake_metrics(IDENTITY, "identity", 0.1, kl=0.8, std=0.7, win=0.8), "resumed": {"from_step": 30,
                                                                                               "changed": {}}}
    resumed["timings"] = {**resumed.get("timings", {}), "train_s": 11.95}
    write_job(tmp_path, "0", ["algo.beta=0.3"], plain)
    write_job(tmp_path, "1", ["algo.beta=0.1"], resumed)
    rep = build_report(tmp_path, tmp_path / "report", num_resamples=100)
    assert [r["resumed_from_step"] for r in rep.rows] == [None, 30]
    md = (tmp_path / "report" / "runs.md").read_text()
    assert "11.95 (resumed at step 30)" in md and md.count("resumed at step") == 1


# ---------------------------------------------------------------- report/theory_gain.py


def test_the_theory_gain_is_the_two_transforms_theory_win_rates_apart_on_reward_model_panels(tmp_path):
    """add_theory_gains: on a reward-model panel, expn(t=4) - identity's theory gain at each common KL is
    ``theory.frontier(expn(t=4)).win_rate - theory.frontier(identity).win_rate`` under the panel's procedure
    (bon4: +4.7 points at KL 0.2, +5.1 at 0.33 -- the README's best-of-N table puts +5.1 beside the measured
    gain at 0.33); a gain over raw (no calibrated-space theory) and every gold panel get none; matched_kl.csv
    carries it as ``theory_gain`` and matched_kl.md as "(theory +4.7)"."""
    from infalign.math import theory
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Exp, Identity
    from infalign.report.matched import compare_panels, matched_kl_markdown, matched_kl_rows, matched_kl_summary
    from infalign.report.theory_gain import add_theory_gains
    from test_report import make_matched_sweep

    jobs = collect(make_matched_sweep(tmp_path))
    panels, notes = compare_panels(jobs, ["reward_model", "gold"], num_resamples=100)
    add_theory_gains(panels, jobs)
    (bon4,) = [p for p in panels if p.name == "bon4" and p.judge == "reward_model"]
    grid = bon4.result.grid
    expected = (theory.frontier(Exp(4.0, normalized=True), BestOfN(4), grid).win_rate
                - theory.frontier(Identity(), BestOfN(4), grid).win_rate)
    np.testing.assert_allclose(bon4.theory_gain[("expn(t=4)", "identity")], expected, rtol=0, atol=1e-12)
    at = dict(zip(np.round(grid, 6), 100 * expected))
    assert round(at[0.2], 1) == 4.7  # (the slow test's matched_kl.md cell, by another route)
    assert round(float(100 * (theory.frontier(Exp(4.0, normalized=True), BestOfN(4), np.array([0.33])).win_rate
                              - theory.frontier(Identity(), BestOfN(4), np.array([0.33])).win_rate)[0]), 1) == 5.1
    assert set(bon4.theory_gain) == {("expn(t=4)", "identity")}  # not over raw
    # each panel under its own procedure, not the runs' (bon4): the standard panel's is the N = 1 theory
    from infalign.math.procedures import make_procedure

    (std,) = [p for p in panels if p.name == "standard" and p.judge == "reward_model"]
    sample = make_procedure("bon", 1).reduced()
    want = (theory.frontier(Exp(4.0, normalized=True), sample, std.result.grid).win_rate
            - theory.frontier(Identity(), sample, std.result.grid).win_rate)
    np.testing.assert_allclose(std.theory_gain[("expn(t=4)", "identity")], want, rtol=0, atol=1e-12)
    assert not np.allclose(want, theory.frontier(Exp(4.0, normalized=True), BestOfN(4), std.result.grid).win_rate
                           - theory.frontier(Identity(), BestOfN(4), std.result.grid).win_rate)
    assert all(not p.theory_gain for p in panels if p.judge == "gold")
    rows = [r for r in matched_kl_rows([bon4]) if r.get("baseline")]
    assert {r["theory_gain"] is None for r in rows if r["baseline"] == "raw"} == {True}
    ours = [r for r in rows if (r["method"], r["baseline"]) == ("expn(t=4)", "identity")]
    np.testing.assert_allclose([r["theory_gain"] for r in ours], expected, atol=1e-12)
    assert "(theory +4.7)" in matched_kl_markdown([bon4], notes)
    from rich.console import Console

    from infalign.report.printing import print_matched_kl

    console = Console(record=True, width=400)
    print_matched_kl(SimpleNamespace(panels=[bon4], summary={}), console)
    assert f"(theory +{round(float(100 * expected[len(grid) // 2]), 1):.1f})" in console.export_text()
    lines = matched_kl_summary([bon4])  # the console's and summary.json's sentences, at the middle common KL
    middle = round(float(100 * expected[len(grid) // 2]), 1)
    assert [ln.endswith(f"(theory +{middle:.1f})") for ln in lines if "expn(t=4)" in ln and "identity" in ln] == [True]


def test_a_common_kl_of_zero_leaves_the_theory_gain_of_the_other_kls(tmp_path):
    """Review finding: the theory takes KL > 0, so a common KL grid starting at 0 (runs that barely moved)
    made theory.frontier raise and the whole panel lost its theory gain without a word. The KL-0 point gets
    none (NaN; no "(theory ...)" in its cell), every other KL its value."""
    from infalign.math import theory
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Exp, Identity
    from infalign.report.matched import compare_panels
    from infalign.report.theory_gain import add_theory_gains
    from test_report import per_prompt_metrics

    def info(transform):
        return {"algo": "rloo", "transform": transform, "depends_on_n": False, "trained_n": 4}

    job = 0
    for method, kls in (("identity", [0.0, 0.5, 1.0]), ("expn(t=4)", [0.0, 0.6, 1.1])):
        for kl in kls:
            write_job(tmp_path, str(job), [f"method={method}"], per_prompt_metrics(method, info(method), kl, 0.3, {}))
            job += 1
    jobs = collect(tmp_path)
    panels, _ = compare_panels(jobs, ["reward_model"], num_resamples=100)
    add_theory_gains(panels, jobs)
    (bon4,) = [p for p in panels if p.name == "bon4"]
    grid = bon4.result.grid
    got = bon4.theory_gain[("expn(t=4)", "identity")]
    assert grid[0] == 0.0 and np.isnan(got[0])
    expected = (theory.frontier(Exp(4.0, normalized=True), BestOfN(4), grid[1:]).win_rate
                - theory.frontier(Identity(), BestOfN(4), grid[1:]).win_rate)
    np.testing.assert_allclose(got[1:], expected, rtol=0, atol=1e-12)



def test_the_optimal_transforms_theory_gain_is_its_frontier_under_its_own_procedure_only(tmp_path):
    """add_theory_gains: a method trained on the optimal transform has the optimal frontier as its theory
    under the procedure it was solved for (bon4 here: optimal_frontier(bon4) - frontier(identity)), and no
    theory gain on another panel (standard, bon2: its Phi* is bon4's, not theirs). An offline baseline (no
    transform) gets none anywhere."""
    from infalign.math import theory
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity
    from infalign.report.matched import compare_panels
    from infalign.report.theory_gain import add_theory_gains
    from test_report import per_prompt_metrics

    optimal_cfg = {"_target_": "infalign.math.theory.optimal_transform", "procedure": "bon", "n": 4, "beta": 0.3}
    job = 0
    for method, algo, kls in (("identity", "rloo", [0.15, 0.5, 1.0]), ("optimal(bon4)", "rloo", [0.2, 0.6, 1.1]),
                              ("bon_sft(N=4)", "bon_sft", [0.1, 0.7, 1.2])):
        for kl in kls:
            info = {"algo": algo, "transform": None if algo == "bon_sft" else method, "depends_on_n": False,
                    "trained_n": 4}
            m = per_prompt_metrics(method, info, kl, 0.3, {})
            if method.startswith("optimal"):
                m["config"]["transform"] = optimal_cfg
            write_job(tmp_path, str(job), [f"method={method}"], m)
            job += 1
    jobs = collect(tmp_path)
    panels, _ = compare_panels(jobs, ["reward_model"], baselines=["identity"], num_resamples=100)
    add_theory_gains(panels, jobs)
    by = {p.name: p for p in panels}
    bon4 = by["bon4"]
    expected = (theory.optimal_frontier(BestOfN(4), bon4.result.grid).win_rate
                - theory.frontier(Identity(), BestOfN(4), bon4.result.grid).win_rate)
    np.testing.assert_allclose(bon4.theory_gain[("optimal(bon4)", "identity")], expected, rtol=0, atol=1e-9)
    assert set(bon4.theory_gain) == {("optimal(bon4)", "identity")}  # not the offline baseline's
    assert not by["standard"].theory_gain and not by["bon2"].theory_gain



def test_a_world_key_without_a_note_beside_a_noted_main_world_keeps_a_label():
    """Review finding: runs of world w1 evaluated at the default response length, beside a main world noted
    ``w1 [eval.max_new_tokens=64]``, got an empty label (two series of one name) and the note "another
    evaluation (; ...)". They are labelled by their key."""
    from infalign.report.naming import world_label

    assert world_label("w1", "w1 [eval.max_new_tokens=64]") == "[world w1]"
    assert world_label("w1 [eval.temperature=0.7]", "w1 [eval.max_new_tokens=64]") == "[eval.temperature=0.7]"
    assert world_label("w1 [eval.temperature=0.7]", "w1") == "[eval.temperature=0.7]"
    assert world_label("w1", "w1") == "" and world_label("w2", "w1") == "[world w2]"


def test_the_gain_plot_draws_the_total_interval_where_there_are_seeds(tmp_path, monkeypatch):
    """plot_gains: the band is the prompt CI only; with >= 2 seeds the total interval (prompts and training
    noise) is drawn as dotted edges at its bounds (walkthrough: +-0.5-point bands beside +-5-point seed
    intervals looked far surer than the verdict); with one seed (NaN totals) there is none."""
    import dataclasses

    from infalign.infra import plotting
    from infalign.report.plots import plot_gains
    from test_report import _gain, _panel

    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    g = _gain([0.01, 0.02, 0.03], [True] * 3)
    one_seed = dataclasses.replace(g, total_low=np.full(3, np.nan), total_high=np.full(3, np.nan))
    for gain in (g, one_seed):
        plot_gains([_panel([0.1, 0.2, 0.3], [gain])], ["reward_model"], tmp_path / "g.png")
    dotted = [[line.get_ydata() for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"] for fig in figures]
    np.testing.assert_allclose(dotted[0], [100 * g.total_low, 100 * g.total_high])
    assert dotted[1] == []


def test_the_printed_wandb_line_names_the_report_run_and_every_group_of_a_dir_of_sweeps():
    """A report over a dir holding several sweeps posts to the most runs' W&B group: the printed summary said
    run 'report' (the run is ``report:<out dir>`` for any other out dir) and nothing of the other groups
    (sweep walkthrough)."""
    from infalign.report.printing import wandb_lines

    info = {"mode": "offline", "name": "report:rep_all", "group": "multirun-sw1-9a974c", "run_dir": "/x/wandb/r",
            "groups": ["multirun-sw1-9a974c", "multirun-sw2-01ab23"]}
    lines = wandb_lines(info)
    assert lines[0] == "W&B offline run 'report:rep_all' in group multirun-sw1-9a974c: /x/wandb/r"
    assert lines[1] == ("(the reported runs are in 2 W&B groups; the report run joined the most runs' -- the "
                        "others: multirun-sw2-01ab23)")
    assert len(wandb_lines({**info, "groups": ["multirun-sw1-9a974c"]})) == 1


def test_lightnings_short_precision_names_are_one_evaluation(tmp_path):
    """trainer.precision=32 is 32-true (and bf16 is bf16-mixed): the pools are keyed as one, so the runs are one
    evaluation -- not another evaluation that split the method's curve (review)."""
    for job, v in enumerate(["32-true", 32, "32-true"]):
        m = per_prompt_metrics("identity", INFO, 0.2 + 0.2 * job, 0.3, {})
        m["config"]["trainer"] = {"precision": v}
        write_job(tmp_path, str(job), [], m)
    assert [j.eval_note for j in collect(tmp_path)] == ["", "", ""]
