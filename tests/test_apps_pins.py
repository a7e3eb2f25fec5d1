"""Pins found by mutation testing of src/infalign/apps: ``analyze.py`` (the KL grid's end points, the
``|t| <= 700`` bound, ``t: auto``, integer counts, the optimal column, the best-of-N policy point, the
t scan's size), ``calibration.py`` (its pool is the evaluation's), ``hydra_callbacks.py`` (sweep
bookkeeping), ``config.py`` (run-dir suffixes, resolvers, default types, entries' defaults lists,
threads, the error block), the validation of ``train.py`` and two helpers of ``train_stages.py``.

Functions are called directly on composed configs (``pipeline_helpers.compose_config`` /
``compose_train``: cached composes, no toy world) or on hand-made job dirs; no CLI, no compute beyond
the calibrated-space theory at a few budgets. Every expected value is derived in the test's docstring
or comment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infalign.apps import analyze as analyze_app
from infalign.errors import ConfigError, require
from infalign.math.procedures import make_procedure
from pipeline_helpers import compose_config

ANALYZE_FAST = ["kl.num=4", "optimal=false", "best_t.num=4", "best_t.budgets=[0.5]", "plot=false"]


def analyze_cfg(*overrides):
    return compose_config("analyze", *ANALYZE_FAST, *overrides)


def refused_key(fn, *args) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args)
    return err.value.key


# ---------------------------------------------------------------------------- apps/analyze.py


def test_the_kl_grid_runs_from_start_to_stop_inclusive():
    """conf/analyze.yaml: ``num`` points from ``start`` to ``stop`` -- both ends included, so start=0.5,
    stop=2, num=4 is 0.5 + k * (2 - 0.5) / (4 - 1) = [0.5, 1.0, 1.5, 2.0] (a half-open grid would stop
    at 1.625 and never show the budget the user asked for)."""
    budgets = analyze_app.kl_budgets(analyze_cfg("kl.start=0.5", "kl.stop=2.0", "kl.num=4"))
    np.testing.assert_allclose(budgets, [0.5, 1.0, 1.5, 2.0], rtol=0, atol=1e-12)


def test_t_of_magnitude_700_is_the_largest_accepted():
    """docs/method.md's transform table: exp takes ``t != 0, abs(t) <= 700`` (the float64 theory: e^700 ~
    1e304 is finite, e^710 is not). Both ends of the bound pass, 700.5 is a ConfigError naming t."""
    assert analyze_app.checked_t(analyze_cfg("t=[700.0,-700.0]")) == [700.0, -700.0]
    assert refused_key(analyze_app.checked_t, analyze_cfg("t=700.5")) == "t"


@pytest.mark.parametrize(("procedure", "sign"), [("bon", 1.0), ("won", -1.0)])
def test_auto_t_is_2_4_8_16_negated_for_worst_of_n(procedure, sign):
    """conf/analyze.yaml: ``t: auto`` = [2, 4, 8, 16], negated for worst-of-N (t < 0 punishes the bottom of
    the reference distribution, which worst-of-N serves)."""
    ts = analyze_app.exponents(analyze_cfg("t=auto"), make_procedure(procedure, 4))
    assert ts == [sign * 2.0, sign * 4.0, sign * 8.0, sign * 16.0]


@pytest.mark.parametrize(("overrides", "labels"), [
    (("transforms=[expn_tm4]",), ["expn(t=-4)"]),
    (("transforms=[expn_t4,expn_t8]",), ["expn(t=4)", "expn(t=8)"]),
    (("transforms=[expn_t4]", "t=[8,16]"), ["expn(t=4)"]),
    (("transforms=[exp]", "t=[4,4.0,8]"), ["exp(t=4)", "exp(t=8)"]),
    (("transforms=[identity,exp_normalized]",), ["identity", "expn(t=2)", "expn(t=4)", "expn(t=8)", "expn(t=16)"]),
])
def test_an_entry_that_pins_its_t_is_drawn_at_it_and_the_families_at_each_t(overrides, labels):
    """Walkthrough finding: ``transforms=[expn_tm4]`` drew expn(t=2, 4, 8, 16) -- not one curve of the entry
    asked for, without a word -- and ``transforms=[expn_t4,expn_t8]`` was refused as two curves of one
    label. An entry that derives from another and sets its own t (expn_t4, expn_tm4, exp_won) is drawn at
    it; the families exp and exp_normalized at each t of ``t`` (auto: 2, 4, 8, 16), a repeated t once."""
    curves = analyze_app.build_transforms(analyze_cfg(*overrides), make_procedure("bon", 4))
    assert [c.label for c in curves] == labels


class PowerT:
    """A transform family with a ``t`` that is not exp (``u^t``, t > 0), for the test below."""

    calibrated = True

    def __init__(self, t: float) -> None:
        if t <= 0:
            raise ConfigError("transform.t", t, "t > 0")
        self.t = t
        self.label = f"pow(t={t:g})"


@pytest.mark.parametrize(("procedure", "t", "ts"), [
    ("won", "auto", [2.0, 4.0, 8.0, 16.0]), ("bon", "auto", [2.0, 4.0, 8.0, 16.0]), ("won", "[3,5]", [3.0, 5.0])])
def test_a_t_family_other_than_exp_is_drawn_at_each_t_as_given(monkeypatch, caplog, procedure, t, ts):
    """Extension walkthrough: a registered u^t family under worst-of-N got t: auto's exp-only negation (t = -2,
    which u^t refuses: "transform.t=-2.0 is not allowed", a value never given) and the warning about exp(t<0).
    The sign of t picks an end of the reference distribution for exp alone; another family takes t as given."""
    from omegaconf import OmegaConf

    from infalign.math.procedures import make_procedure

    monkeypatch.setattr(analyze_app, "load_group_entry",
                        lambda group, name: OmegaConf.create({"_target_": f"{__name__}.PowerT", "t": 2.0}))
    monkeypatch.setattr(analyze_app, "pinned_t", lambda name: False)
    monkeypatch.setattr(analyze_app, "instantiate_entry", lambda group, name, cfg, t: PowerT(t))
    monkeypatch.setattr(analyze_app, "decreasing_transform", lambda *a: None)
    monkeypatch.setattr(analyze_app, "check_finite_transform", lambda *a: None)
    with caplog.at_level("WARNING"):
        curves = analyze_app.build_transforms(analyze_cfg("transforms=[power]", f"t={t}"), make_procedure(procedure, 4))
    assert [c.t for c in curves] == ts and "exp(t" not in caplog.text

def test_an_entry_whose_pinned_t_works_against_the_procedure_is_warned_about(monkeypatch):
    """expn_t4 (t > 0, a best-of-N transform) drawn for worst-of-N is a legitimate comparison, rarely the
    intent: warned about, naming the entry, as an explicit t of the wrong sign is."""
    seen = []
    monkeypatch.setattr(analyze_app.log, "warning", lambda msg, *a: seen.append(msg % a if a else msg))
    (curve,) = analyze_app.build_transforms(analyze_cfg("transforms=[expn_t4]"), make_procedure("won", 4))
    assert curve.label == "expn(t=4)" and any(m.startswith("transforms=expn_t4: t=4 with won4") for m in seen)
    # an explicit t that no family among the transforms reads is said to be unread (review finding)
    analyze_app.build_transforms(analyze_cfg("transforms=[identity,expn_t4]", "t=[8]"), make_procedure("bon", 4))
    assert any(m.startswith("t=[8.0] is read by the transform families with a t key") for m in seen)
    seen.clear()
    analyze_app.build_transforms(analyze_cfg("transforms=[exp,expn_t4]", "t=[8]"), make_procedure("bon", 4))
    assert not any(m.startswith("t=") for m in seen)


@pytest.mark.parametrize(("override", "key"), [("kl.num=2.5", "kl.num"), ("best_t.num=2.5", "best_t.num")])
def test_a_fractional_count_is_refused_not_truncated(override, key):
    """Counts are integers: kl.num=2.5 (or best_t.num=2.5) is a ConfigError naming the key, not silently
    int(2.5) = 2 points; the integer 3 passes."""
    assert refused_key(analyze_app.validate, analyze_cfg(override)) == key
    analyze_app.validate(analyze_cfg(override.replace("2.5", "3")))


def test_an_unconverged_optimal_point_is_nan_in_the_best_t_rows(monkeypatch):
    """analyze's best_t.csv ``optimal_win_rate`` is the optimal frontier's win rate only where that number
    is right (``Frontier.valid``: reachable and converged; module docstring: "A number it prints is right
    or says why not"): a point that is reachable but did not converge carries a win rate from the last
    Newton iterate, which must read NaN, not pass as the optimum. The plotted frontier keeps only the
    plotted budgets (the best-t budget 0.7 is solved beside them but not plotted)."""
    from infalign.math import theory

    def fake(procedure, budgets):  # both = unique(concat(plotted [0.5, 1.0], best-t [0.7, 1.0]))
        assert list(budgets) == [0.5, 0.7, 1.0]
        n = len(budgets)
        return theory.Frontier("optimal(bon4)", "bon4", np.asarray(budgets), np.ones(n), np.asarray(budgets),
                               np.full(n, 0.6), np.array([0.61, 0.62, 0.63]), np.ones(n, bool), [""] * n,
                               np.array([True, False, True]))

    monkeypatch.setattr(analyze_app.theory, "optimal_frontier", fake)
    plotted, at = analyze_app._optimal_frontier(make_procedure("bon", 4), np.array([0.5, 1.0]), np.array([0.7, 1.0]))
    assert at[1.0] == 0.63 and math.isnan(at[0.7])
    assert plotted.kl_budget.tolist() == [0.5, 1.0] and plotted.win_rate.tolist() == [0.61, 0.63]


@pytest.fixture(scope="module")
def best_of_2_run(tmp_path_factory):
    """One serial analysis of best-of-2 (identity and the optimal transform) at KL 0.5 and 200 nats: 200 is
    past what the z-grid resolves (~80 nats), so both frontiers mark it unreachable (~2 s)."""
    cfg = compose_config("analyze", "procedure=bon", "procedure.n=2", "transforms=[identity]", "kl.list=[0.5,200.0]",
                         "optimal=true", "best_t.num=4", "best_t.budgets=[0.5]", "plot=false", "parallel=false")
    return analyze_app.analyze(cfg, tmp_path_factory.mktemp("analyze"))


def test_the_best_of_2_policy_point_is_its_closed_form(best_of_2_run):
    """The best-of-N policy (density N u^(N-1); theory.bon_policy_point) is drawn on the best-of-N plot also
    for N = 2. Closed forms: KL = log N - (N - 1)/N = log 2 - 1/2; its best-of-N win rate against the
    reference's best-of-N is P(max of N^2 uniforms > max of N) = int u^N d(u^(N^2)) = N^2 / (N^2 + N)
    = N / (N + 1) = 2/3 (the log transform at beta = 1/(N - 1) = 1)."""
    point = best_of_2_run["bon_policy"]
    assert point is not None
    assert point["kl"] == pytest.approx(math.log(2) - 0.5, rel=1e-6)
    assert point["win_rate"] == pytest.approx(2 / 3, rel=1e-6)


def test_unreachable_points_are_not_listed_as_unconverged(best_of_2_run):
    """metrics.json lists a point once, under the reason that applies: ``unreachable`` (no policy of the
    family has that KL), or ``not_converged`` (a reachable optimal point whose fixed point did not
    converge). The optimal frontier leaves an unreachable budget's ``converged`` false (nothing was
    solved), so it must not also appear as unconverged."""
    unreachable = {(r["transform"], r["kl_budget"]) for r in best_of_2_run["unreachable"]}
    assert unreachable == {("identity", 200.0), ("optimal(bon2)", 200.0)}
    assert all(r["reachable"] for r in best_of_2_run["not_converged"])
    assert not {(r["transform"], r["kl_budget"]) for r in best_of_2_run["not_converged"]} & unreachable


def test_the_best_t_scan_has_best_t_num_points(best_of_2_run):
    """conf/analyze.yaml: the best-t scan is ``best_t.num`` log-spaced |t| in [0.25, 64]. With num = 4 the
    grid is 0.25 * 256^(k/3), k = 0..3 = [0.25, 1.587, 10.08, 64]; at KL 0.5 for best-of-2 the best t is not
    on an edge (not extended past it), so it is one of the two interior points (a 5-point scan's interior
    points are 1, 4 and 16: none of them)."""
    (row,) = best_of_2_run["best_t"]
    assert not row["at_scan_edge"]
    interior = [0.25 * 256 ** (1 / 3), 0.25 * 256 ** (2 / 3)]
    assert min(abs(row["best_t"] - t) for t in interior) < 1e-9


# ------------------------------------------------------------------------ apps/calibration.py


def test_calibration_draws_the_reference_pool_the_training_evaluation_draws(tmp_path, monkeypatch):
    """apps/calibration.py's docstring: its reference pool "is the same pool infalign-train's evaluation
    uses" (one cache entry, drawn once). Both call pools.reference_pool; a stub records the arguments
    of each call and stops there: the prompts, M, sampling settings, seed and cache tag must agree
    (independently of what the seed is)."""
    from types import SimpleNamespace

    from infalign.apps.calibration import diagnose
    from infalign.pipeline import evaluate, pools, world
    from pipeline_helpers import compose_train

    class Drawn(Exception):
        pass

    calls = []

    def reference_pool(world, prompts, m, judges, ev, trainer, seed, cache_dir, tag):
        calls.append((list(prompts), m, sorted(judges), dict(ev), seed, str(cache_dir), tag))
        raise Drawn

    toy = SimpleNamespace(eval_prompts=["p0", "p1", "p2"], reward=object(), gold=object())
    monkeypatch.setattr(pools, "reference_pool", reference_pool)
    monkeypatch.setattr(evaluate, "reference_pool", reference_pool)
    monkeypatch.setattr(world, "load_world", lambda cfg, cache_dir: toy)
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "seed=7")
    with pytest.raises(Drawn):
        diagnose(cfg)
    with pytest.raises(Drawn):
        evaluate.evaluate_policy(toy, cfg, make_procedure("bon", 2), None, 0.0, None, tmp_path / "cache")
    calibration, training = calls
    assert calibration == training


# -------------------------------------------------------------------- apps/hydra_callbacks.py


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _job(sweep, name: str, metrics: dict | None = None, hydra: bool = True):
    import json

    job = sweep / name
    job.mkdir(parents=True)
    if hydra:
        (job / ".hydra").mkdir()
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def test_failed_jobs_are_listed_in_job_number_order(tmp_path):
    """The end-of-sweep line lists failed jobs in job-number order ("2 before 10", hydra_callbacks.py),
    not in the string order of their dir names (where "10" < "2"): jobs 0..10, of which 2 and 10 failed,
    list 2 first."""
    from infalign.apps.hydra_callbacks import sweep_failures

    for k in range(11):
        _job(tmp_path, str(k), {"status": "failed" if k in (2, 10) else "finished",
                                "error": f"ValueError: job {k}"} if k in (2, 10) else {"status": "finished"})
    n, failures = sweep_failures(tmp_path)
    assert n == 11 and list(failures) == ["2", "10"]
    assert failures["10"] == "failed: ValueError: job 10"


def test_a_job_dir_with_only_checkpoints_holds_results(tmp_path):
    """previous_results: a job dir holds another sweep's results when it has a metrics.json *or* a
    checkpoints/ dir (a job killed mid-training has checkpoints and no record yet): a new sweep (no
    ckpt_path=last / last_or_new) into that sweep dir is refused before any job (exit code 2), so it
    cannot run into the old job's checkpoints."""
    from omegaconf import OmegaConf

    from infalign.apps.hydra_callbacks import FailedJobs, previous_results

    (_job(tmp_path, "0") / "checkpoints").mkdir()
    _job(tmp_path, "1")  # started, nothing written: no results
    assert previous_results(tmp_path) == ["0"]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "ckpt_path": None})
    with pytest.raises(SystemExit) as exit_info:
        FailedJobs().on_multirun_start(config=config)
    assert exit_info.value.code == 2


def test_job_dirs_not_named_by_number_are_not_matched_against_the_grid(tmp_path):
    """grid_mismatches compares job dir "<k>" with the grid's job k; a dir with results whose name is no
    job number (a hydra.sweep.subdir by override_dirname, a copied run) has no grid job to compare with and
    is skipped -- not a ValueError from int(name) that stops the sweep's start."""
    from omegaconf import OmegaConf

    from infalign.apps.hydra_callbacks import grid_mismatches

    _job(tmp_path, "algo.beta=0.3", {"status": "finished", "overrides": ["algo.beta=0.3"]})
    _job(tmp_path, "0", {"status": "finished", "overrides": ["algo.beta=0.3"]})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {"_target_": BASIC_SWEEPER},
                                         "overrides": {"task": ["algo.beta=0.3,0.6"]}}})
    assert grid_mismatches(config, tmp_path, ["0", "algo.beta=0.3"]) == []


def test_a_resumed_grid_of_one_job_refuses_the_dirs_of_jobs_it_no_longer_has(tmp_path):
    """grid_mismatches: a job dir numbered past the resumed grid's last job is a mismatch whatever its
    values ("now no such job": the sweep would count another grid's run as its own). With a grid of one
    job no key is swept, so no value can differ: the job number alone must refuse job 1."""
    from omegaconf import OmegaConf

    from infalign.apps.hydra_callbacks import grid_mismatches

    _job(tmp_path, "0", {"status": "finished", "overrides": ["algo.beta=0.3"]})
    _job(tmp_path, "1", {"status": "finished", "overrides": ["algo.beta=0.6"]})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {"_target_": BASIC_SWEEPER},
                                         "overrides": {"task": ["algo.beta=0.3"]}}})
    assert grid_mismatches(config, tmp_path, ["0", "1"]) == ["job 1: a job, now no such job"]


# ----------------------------------------------------------------------------- apps/config.py


def _no_launcher(monkeypatch) -> None:
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_PROCID",
                "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_a_single_task_srun_step_gets_random_digits_not_the_step_id(monkeypatch):
    """run_suffix: only the ranks of a *multi-task* srun step (SLURM_NTASKS > 1) share the step id; one
    task of a step (two runs started in the background of `srun -n1 bash -c ...`) is "any other
    process": 4 random hex digits, so two such runs in the same second get two dirs."""
    import re

    from infalign.apps.config import run_suffix

    _no_launcher(monkeypatch)
    for var, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "3", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(var, value)
    drawn = {run_suffix() for _ in range(20)}
    assert all(re.fullmatch(r"4242_[0-9a-f]{4}", s) for s in drawn) and len(drawn) > 1


def test_a_master_port_without_several_ranks_is_no_shared_suffix(monkeypatch):
    """run_suffix: torchrun's master port names the dir only for a launch of several ranks (WORLD_SIZE >
    1: they must share it); a single process with MASTER_PORT in its environment (WORLD_SIZE=1, or a
    shell that exports it) gets 6 random hex digits -- two such runs in one second must not share a dir."""
    import re

    from infalign.apps.config import run_suffix

    _no_launcher(monkeypatch)
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("WORLD_SIZE", "1")
    drawn = {run_suffix() for _ in range(20)}
    assert all(re.fullmatch(r"[0-9a-f]{6}", s) for s in drawn) and len(drawn) > 1


def test_a_dir_added_under_nested_sweeps_joins_the_outermost(tmp_path):
    """outermost_sweep_dir: runs added with hydra.sweep.dir=<sweep>/more (and more under that) join the
    outermost sweep (the highest directory holding a multirun.yaml), so their W&B group is that sweep's
    (run_group: multirun-<its name>)."""
    from infalign.infra.sweeps import outermost_sweep_dir

    top, middle = tmp_path / "sweep", tmp_path / "sweep" / "more"
    added = middle / "again"
    added.mkdir(parents=True)
    (top / "multirun.yaml").write_text("{}")
    (middle / "multirun.yaml").write_text("{}")
    assert outermost_sweep_dir(added) == top
    assert outermost_sweep_dir(tmp_path / "alone") == tmp_path / "alone"  # no sweep above: itself


def test_the_key_of_a_deletion_override_and_keys_without_deletions(monkeypatch):
    """override_key strips Hydra's prefixes: +key=, ++key=, ~key (a deletion) all set ``key``;
    command_line_keys(deletions=False) leaves out the deleted keys (a ``~data.seed`` sets nothing the
    data source could ignore)."""
    from infalign.apps import config

    assert [config.override_key(o) for o in ("+algo.beta=0.3", "++seed=2", "~data.seed", "t=4")] == [
        "algo.beta", "seed", "data.seed", "t"]
    monkeypatch.setattr(config, "task_overrides", lambda: ["~data.seed", "+data.max_examples=5", "seed=1"])
    assert config.command_line_keys() == {"data.seed", "data.max_examples", "seed"}
    assert config.command_line_keys(deletions=False) == {"data.max_examples", "seed"}


def test_at_refuses_a_negative_index():
    """``${at:[a,b,c],i}`` takes i in [0, len - 1]: i = -1 (Python's last item) is a ConfigError naming
    kl_point -- a sweep's kl_point=-1 must not silently pick the last method knob."""
    from infalign.apps.config import _at

    assert refused_key(_at, [1, 2, 3], -1) == "kl_point"
    assert _at([1, 2, 3], 0) == 1


def test_apply_threads_divides_the_cores_among_the_launchers_jobs(monkeypatch):
    """apply_threads exports the joblib launcher's n_jobs as the concurrent jobs before resolving
    ``threads: auto`` (infra/threads.py: usable cores // concurrent jobs): 2 parallel jobs on 8 usable
    cores get 8 // 2 = 4 threads each, and the jobs' own child processes inherit the count of jobs."""
    from threadpoolctl import threadpool_limits

    from infalign.apps import config
    from infalign.infra import threads

    for var in (threads.JOBS_ENV, "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS", "TORCHELASTIC_RUN_ID", *threads.LATE_POOL_ENV):
        monkeypatch.delenv(var, raising=False)  # (set_threads exports LATE_POOL_ENV: restored after the test)
    monkeypatch.setattr(threads, "_warned", set())
    monkeypatch.setattr(threads, "cpu_quota", lambda root="": None)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(config, "launcher_jobs", lambda: 2)
    with threadpool_limits(limits=None):  # every pool back to its own count after (torch's OpenMP among them)
        assert config.apply_threads("auto", torch=False) == 4
        assert threads.os.environ[threads.JOBS_ENV] == "2"


def test_slurm_asks_for_one_task_and_gpu_per_device_on_a_gpu_trainer():
    """``${slurm_tasks:${trainer.devices}}`` is a count >= 1 (trainer.devices=0 would ask SLURM for 0 tasks
    per node: a ConfigError naming trainer.devices); ``${slurm_gpus:...}`` asks one GPU per task for every
    GPU trainer -- gpu, cuda and auto (which runs on the node's GPUs: distributed.accelerator_kind) -- and
    none for cpu."""
    from infalign.apps.config import slurm_gpus, slurm_tasks

    assert refused_key(slurm_tasks, 0) == "trainer.devices"
    assert slurm_tasks(1) == 1
    assert [slurm_gpus(a, 2) for a in ("gpu", "cuda", "auto", "cpu")] == [2, 2, 2, 0]


def test_a_key_that_is_an_int_in_one_entry_and_a_float_in_another_is_a_float(tmp_path, monkeypatch):
    """default_types: a key's type is its defaults' one kind; an int in one entry and a float in another is
    float (``check_value_types`` then takes both entries' values; int would refuse the other entry's own
    default 0.5); a string anywhere leaves the key untyped; a null default makes it optional. A config tree made for
    the test (the shipped one has no such key today)."""
    from infalign.apps import config

    (tmp_path / "train.yaml").write_text("seed: 0\nname: a\n")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "a.yaml").write_text("rate: 4\nscope: prompt\nlimit: null\n")
    (tmp_path / "calibration" / "b.yaml").write_text("rate: 0.5\nscope: 1\nlimit: 3\n")
    monkeypatch.setattr(config, "CONFIG_DIR", str(tmp_path))
    types = config.default_types.__wrapped__()
    assert types["calibration.rate"] == (float, False) and types["seed"] == (int, False)
    assert types["calibration.limit"] == (int, True) and "calibration.scope" not in types and "name" not in types


def test_an_entry_without_self_in_its_defaults_overrides_them(tmp_path, monkeypatch):
    """_entry applies an entry's ``defaults:`` list as Hydra composes it: ``_self_`` where it stands, and at
    the end when not listed (Hydra >= 1.1, version_base 1.3) -- the entry's own values win over the entries
    it extends. ``child`` = ``defaults: [base]`` + ``t: 4`` is base's target with t = 4 (base's t = 1 only if
    ``_self_`` came first, which must be written out)."""
    from infalign.apps import config

    group = tmp_path / "transform"
    group.mkdir()
    (group / "base.yaml").write_text("_target_: infalign.math.transforms.Exp\nt: 1.0\n")
    (group / "child.yaml").write_text("defaults:\n  - base\nt: 4.0\n")
    (group / "first.yaml").write_text("defaults:\n  - _self_\n  - base\nt: 4.0\n")
    monkeypatch.setattr(config, "CONFIG_DIR", str(tmp_path))
    child = config._entry("transform", "child")
    assert child.t == 4.0 and child._target_ == "infalign.math.transforms.Exp"
    assert config._entry("transform", "first").t == 1.0


def test_the_error_blocks_traceback_hint_offers_v_only_for_infalign_train():
    """config_error_block: the last line names how to see the full traceback -- HYDRA_FULL_ERROR=1 for every
    app, and ``-v`` only for infalign-train (the only app with that flag: apps/train.py's docstring)."""
    from infalign.apps.config import config_error_block

    error = ConfigError("t", "abc", "numbers", "a hint")
    train = config_error_block(error).splitlines()
    analyze = config_error_block(error, "infalign-analyze").splitlines()
    assert train[0] == "infalign-train: configuration error" and analyze[0] == "infalign-analyze: configuration error"
    assert train[-1] == "(full traceback: HYDRA_FULL_ERROR=1 or -v)"
    assert analyze[-1] == "(full traceback: HYDRA_FULL_ERROR=1)"
    assert "  hint:    a hint" in analyze and "  allowed: numbers" in analyze


# ---------------------------------------------------------------------- apps/train.py: validate


def validate_train(tmp_path, *overrides):
    from infalign.apps import train as train_app
    from pipeline_helpers import compose_train

    return train_app.validate(compose_train(tmp_path / "cache", tmp_path / "run", *overrides))


@pytest.mark.parametrize(("refused", "passes", "key"), [
    ("calibration.K=0", "calibration.K=1", "calibration.K"),  # K >= 1 reference samples per prompt
    ("calibration.batch_size=0", "calibration.batch_size=1", "calibration.batch_size"),  # >= 1 rows
    ("log_every_n_steps=0", "log_every_n_steps=1", "log_every_n_steps"),  # >= 1 optimizer steps
    ("objective.kl_penalty=-0.5", "objective.kl_penalty=0", "objective.kl_penalty"),  # >= 0: no reward past the budget
    ("seed=-1", "seed=0", "seed"),  # >= 0: numpy's and torch's seeds
    ("eval.ns=[]", "eval.ns=[1]", "eval.ns"),  # a non-empty list of N
    ("calibration.scope=global", "calibration.scope=pooled", "calibration.scope"),  # prompt | pooled
    # a *-true precision converts registered modules in place (the reference: only when its pool is drawn)
    ("trainer.precision=bf16-true", "trainer.precision=bf16-mixed", "trainer.precision"),
    ("trainer.precision=16-true", "trainer.precision=32-true", "trainer.precision"),
    ("trainer.precision=64-true", "trainer.precision=32-true", "trainer.precision"),
    ("trainer.precision=64", "trainer.precision=32", "trainer.precision"),  # Lightning's short names
    ("trainer.precision=64", "trainer.precision=bf16", "trainer.precision"),
])
def test_a_bound_of_the_train_config_is_refused_before_compute_and_its_edge_passes(tmp_path, refused, passes, key):
    """apps/train.py:validate: each value just past its documented bound is a ConfigError naming the key
    (before the world is built), and the bound itself passes (the rest of the tiny config valid)."""
    assert refused_key(validate_train, tmp_path, refused) == key
    validate_train(tmp_path, passes)


def test_an_n_of_eval_ns_the_procedure_does_not_take_is_refused_before_compute(tmp_path, monkeypatch):
    """Extension walkthrough: a procedure family of odd N only (median-of-N) with eval.ns=[1, 2, 4] trained, then
    failed at the evaluation naming procedure.n=2. Validation serves the procedure at every N of eval.ns and
    names eval.ns (here BestOfN made to refuse even N)."""
    from infalign.math.procedures import BestOfN

    original = BestOfN.at

    def odd_only(self, n):
        require(n % 2 == 1, "procedure.n", n, "an odd N")
        return original(self, n)

    monkeypatch.setattr(BestOfN, "at", odd_only)
    with pytest.raises(ConfigError) as err:
        validate_train(tmp_path, "procedure.n=3", "eval.ns=[1,2,3]")
    assert err.value.key == "eval.ns" and "N=2" in str(err.value) and "an odd N" in str(err.value)
    validate_train(tmp_path, "procedure.n=3", "eval.ns=[1,3]")

def test_pooled_calibration_needs_a_calibrated_transform(tmp_path):
    """calibration.scope=pooled ranks a reward among all prompts' samples, which only a calibrated
    transform reads (docs/method.md §2): with transform=raw it is a ConfigError naming calibration.scope;
    with the calibrated identity it passes."""
    assert refused_key(validate_train, tmp_path, "transform=raw", "calibration.scope=pooled") == "calibration.scope"
    validate_train(tmp_path, "transform=identity", "calibration.scope=pooled")


@pytest.mark.parametrize(("devices", "count"), [(1, 1), (-1, -1), ("auto", "auto"), ("3", 3), ("-1", -1),
                                                ("0,1", 2), ([0, 1, 2], 3), ("1,", 1), ("0,", 1), ("3,", 1)])
def test_trainer_devices_reduce_to_lightnings_count(devices, count):
    """trainer_devices reads trainer.devices as Lightning does: an int is a count (-1: all); a string
    without a comma is a count ("3": three devices, "-1": all), one with a comma or a list is that many
    device ids ("3,": the one GPU of id 3 -- review finding: it was read as three devices)."""
    from infalign.apps.train import trainer_devices

    assert trainer_devices(devices) == count


# (the strings: Lightning's `Trainer(accelerator='cpu', devices='0')` refuses them too; they passed, and a run
# failed later or with another key's hint; "--1" and a superscript two were a bare ValueError of int(); " auto",
# which Lightning reads as a number -- a TypeError once the trainer is built, after the toy world's -- passed)
@pytest.mark.parametrize("devices", [0, -2, [], "", "a,b", True, "0", "-2", "0,-1", "--1", "\u00b2", "0,0", " auto",
                                     "auto "])
def test_trainer_devices_refuses_what_lightning_cannot_read(devices):
    """0 devices, -2, an empty list or string, non-numbers and booleans are ConfigErrors naming
    trainer.devices."""
    from infalign.apps.train import trainer_devices

    assert refused_key(trainer_devices, devices) == "trainer.devices"


@pytest.mark.parametrize("devices", ["-1", "'0,1'", "'3,'", "[0,1]"])
def test_the_cpu_accelerator_takes_a_count_of_processes_only(tmp_path, devices):
    """Review finding: trainer_devices read -1, id strings and lists as Lightning's GPU parser does, but its
    CPU accelerator takes a count of processes only (``L.Trainer(accelerator="cpu", devices="0,1")`` raises a
    TypeError): with trainer.accelerator=cpu they are ConfigErrors of trainer.devices, before the launcher
    hint, which would have sent the user to torchrun; 2 and 'auto' pass that check (2 then needs torchrun)."""
    import lightning as L

    with pytest.raises(Exception):  # noqa: B017 - Lightning's own refusal (TypeError / MisconfigurationException)
        L.Trainer(accelerator="cpu", devices=[0, 1] if devices == "[0,1]" else devices.strip("'"), logger=False)
    with pytest.raises(ConfigError) as err:
        validate_train(tmp_path, "trainer.accelerator=cpu", f"trainer.devices={devices}")
    assert err.value.key == "trainer.devices" and "number of processes" in err.value.allowed
    validate_train(tmp_path, "trainer.accelerator=cpu", "trainer.devices=auto")


def test_several_nodes_need_a_launcher(tmp_path, monkeypatch):
    """One device on each of two nodes is a distributed run: without torchrun / SLURM (one process per
    device) it is a ConfigError naming trainer.devices, as several devices on one node are."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert refused_key(validate_train, tmp_path, "trainer.devices=1", "trainer.num_nodes=2") == "trainer.devices"
    validate_train(tmp_path, "trainer.devices=1", "trainer.num_nodes=1")


@pytest.mark.parametrize(("override", "key"), [
    ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches"),
    ("+trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val"),
])
def test_lightnings_automatic_accumulation_and_clipping_are_refused_for_rl(tmp_path, override, key):
    """RL optimises manually, which Lightning's automatic gradient accumulation and clipping refuse in fit:
    set with an online algorithm they are ConfigErrors naming the key; their no-op values pass."""
    assert refused_key(validate_train, tmp_path, override) == key
    validate_train(tmp_path, override.replace("=2", "=1").replace("=1.0", "=0"))


def test_plain_sampling_has_only_the_standard_win_rate_as_objective(tmp_path):
    """objective_metric: the evaluation writes a win rate per N only for a procedure that uses N
    (math/pool_stats.py: plain sampling writes standard_win_rate alone), so with procedure=sample
    objective.metric=sample1_win_rate names a column no run writes: a ConfigError naming objective.metric
    before compute (not a KeyError when the finished run's objective is read); standard_win_rate passes."""
    sample = ("procedure=sample", "procedure.n=1")
    assert refused_key(validate_train, tmp_path, *sample, "objective.metric=sample1_win_rate") == "objective.metric"
    validate_train(tmp_path, *sample, "objective.metric=standard_win_rate")


# ---------------------------------------------------------------------------- apps/train_stages.py


def test_trained_steps_is_the_checkpoints_global_step(tmp_path):
    """trained_steps: the optimizer steps a Lightning checkpoint has trained are its ``global_step`` (0 when
    absent), which decides whether a finished run with nothing left to train is kept (train_stages)."""
    import torch

    from infalign.apps.train_stages import trained_steps

    torch.save({"global_step": 7, "state_dict": {}}, tmp_path / "a.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "b.ckpt")
    assert trained_steps(str(tmp_path / "a.ckpt")) == 7 and trained_steps(str(tmp_path / "b.ckpt")) == 0


def test_the_beta_a_kl_target_chose_is_recorded_in_the_config_and_the_logger():
    """record_effective_beta: with algo.kl_target the run trains at the beta it chose, so the config the
    record writes (metrics.json) and the logger's hyperparameters say that beta (as a float), not the
    configured one."""
    from omegaconf import OmegaConf

    from infalign.apps.train_stages import record_effective_beta

    class Logger:
        def __init__(self):
            self.logged = []

        def log_hyperparams(self, params):
            self.logged.append(params)

    cfg = OmegaConf.create({"algo": {"beta": 20, "kl_target": 0.5}})
    OmegaConf.set_struct(cfg, True)
    logger = Logger()
    record_effective_beta(cfg, np.float64(0.125), logger)
    assert cfg.algo.beta == 0.125 and type(cfg.algo.beta) is float
    assert logger.logged == [{"algo": {"beta": 0.125, "kl_target": 0.5}}]


# ---------------------------------------------------------------- apps/config.decreasing_transform


def test_a_decreasing_transform_is_warned_about_and_an_unevaluable_one_refused():
    """Extension-walkthrough finding: a decreasing custom transform (Phi(u) = 1 - u) trained to a best-of-4
    win rate of 0.20 with no word said; and a custom callable that raises passed validation and failed
    mid-run. A decreasing Phi is warned about before compute (where it decreases, its ends); one that raises
    on numpy arrays and torch tensors alike is a ConfigError of the key; a torch-only callable and every
    built-in transform pass -- exp(t u) with t < 0 is increasing in its signed form, and so are the optimal
    transforms of best- and worst-of-N."""
    import torch

    from infalign.apps.config import decreasing_transform
    from infalign.math.theory import optimal_transform
    from infalign.math.transforms import Custom, Exp, Identity, Log, Raw

    why = decreasing_transform(Custom(lambda u: 1.0 - u, name="neg"), "transform")
    assert why.startswith("transform: the transform neg decreases on [0, 1]") and "Phi(0) = 1, Phi(1) = 0" in why
    bump = decreasing_transform(Custom(lambda u: -(u - 0.5) ** 2, name="bump"), "transform")  # up, then down
    assert "the most at u = 1" in bump
    builtins = [Identity(), Log(), Exp(4.0), Exp(-4.0), Exp(8.0, normalized=True), Exp(-8.0, normalized=True),
                Raw(), optimal_transform("bon", 4, 0.1), optimal_transform("won", 4, 0.1)]
    assert [decreasing_transform(t, "transform") for t in builtins] == [None] * len(builtins)
    assert decreasing_transform(Custom(lambda u: u.clamp(0.1, 0.9) if isinstance(u, torch.Tensor)
                                       else u.no_such_method(), name="torch_only"), "transform") is None

    def broken(u):
        raise TypeError("_parse_args() got an unexpected keyword argument 'aa'")

    with pytest.raises(ConfigError) as err:
        decreasing_transform(Custom(broken, name="broken"), "transform")
    assert err.value.key == "transform" and "unexpected keyword argument 'aa'" in str(err.value)


def test_analyze_refuses_a_transform_with_nan_or_plus_inf_on_0_1_before_compute(monkeypatch):
    """Extension walkthrough: ``infalign-analyze transforms=[<a NaN function>]`` failed in the theory's helper
    process, a traceback and exit 1. The theory's own check (math/theory.phi_table: no NaN, no +inf on its grid)
    runs first, a ConfigError of ``transforms``, through build_transforms; -inf at u = 0 (log) is density 0 and
    passes, as every built-in transform does, and so does u / tanh(u), NaN at u = 0 exactly, which the theory's
    grid never reaches (review finding: a check at u = 0 refused it)."""
    import numpy as np

    from infalign.math.procedures import make_procedure
    from infalign.math.transforms import Custom, Exp, Identity, Log

    half_nan = Custom(lambda u: np.where(u > 0.5, np.nan, u), name="half_nan")
    with pytest.raises(ConfigError) as err:
        analyze_app.check_finite_transform(half_nan)
    assert err.value.key == "transforms" and "half_nan gave NaN/+inf" in str(err.value)
    assert "first at u = 0.5" in str(err.value)  # where (review finding: the location was lost)
    with pytest.raises(ConfigError, match="inf_top gave NaN/"):
        analyze_app.check_finite_transform(Custom(lambda u: np.where(u > 0.9, np.inf, u), name="inf_top"))
    for transform in (Identity(), Log(), Exp(700.0), Exp(-700.0), Custom(np.log, name="log_fn"),
                      Custom(lambda u: u / np.tanh(u), name="u_over_tanh")):
        analyze_app.check_finite_transform(transform)
    with pytest.raises(ConfigError, match="ragged"):  # one that cannot be evaluated on the grid at all
        analyze_app.check_finite_transform(Custom(lambda u: [[1.0], [1.0, 2.0]], name="ragged"))
    monkeypatch.setattr(analyze_app, "instantiate_entry", lambda group, name, cfg, **kw: half_nan)
    monkeypatch.setattr(analyze_app, "decreasing_transform", lambda *a: None)
    with pytest.raises(ConfigError, match="half_nan gave NaN/"):  # (build_transforms runs the check)
        analyze_app.build_transforms(analyze_cfg("transforms=[identity]"), make_procedure("bon", 4))


def test_train_validation_warns_about_a_decreasing_transform(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="infalign.apps.train"):
        validate_train(tmp_path, "transform=sqrt", "transform.fn=numpy.negative", "transform.name=neg",
                       "algo.beta=0.5")
    assert any("the transform neg decreases on [0, 1]" in r.getMessage() for r in caplog.records)


def test_analyze_refuses_two_transforms_of_one_label_and_an_entry_that_cannot_take_t(tmp_path, monkeypatch):
    """Extension-walkthrough findings: ``transforms=[identity, neg, fakeid]`` (fakeid: a custom entry named
    identity) wrote two "identity" curves, rows and plot lines no one could tell apart; and a custom entry
    with a ``t`` key -- drawn once per t, as the exp family is -- failed with a TypeError traceback. Both
    are ConfigErrors of ``transforms`` before any compute; a decreasing entry is warned about."""
    import logging
    import shutil

    from infalign.apps import config as app_config

    conf = tmp_path / "conf"
    shutil.copytree(app_config.CONFIG_DIR, conf)
    (conf / "transform" / "fakeid.yaml").write_text(
        "_target_: infalign.math.transforms.Custom\nfn: numpy.square\nname: identity\n")
    (conf / "transform" / "neg.yaml").write_text("_target_: infalign.math.transforms.Custom\nfn: numpy.negative\n"
                                                 "name: neg\n")
    (conf / "transform" / "sqrt_t.yaml").write_text("_target_: infalign.math.transforms.Custom\nfn: numpy.sqrt\n"
                                                    "name: sqrt_t\nt: 2.0\n")
    monkeypatch.setattr(app_config, "CONFIG_DIR", str(conf))
    procedure = make_procedure("bon", 4)
    with pytest.raises(ConfigError) as err:
        analyze_app.build_transforms(analyze_cfg("transforms=[identity,fakeid]"), procedure)
    assert err.value.key == "transforms" and "['identity']" in str(err.value)
    with pytest.raises(ConfigError) as err:
        analyze_app.build_transforms(analyze_cfg("transforms=[sqrt_t]"), procedure)
    assert err.value.key == "transforms" and "unexpected keyword argument 't'" in str(err.value)
    logger = logging.getLogger("infalign.apps.analyze")
    with pytest.MonkeyPatch.context() as patch:
        seen = []
        patch.setattr(logger, "warning", lambda msg, *a: seen.append(msg % a if a else msg))
        analyze_app.build_transforms(analyze_cfg("transforms=[identity,neg]"), procedure)
    assert any("the transform neg decreases on [0, 1]" in m for m in seen)


@pytest.mark.parametrize(("overrides", "note"), [
    (("eval.temperature=0.7",), "eval.temperature=0.7"),
    (("eval.top_k=5", "eval.top_p=0.9"), "eval.top_k=5, eval.top_p=0.9"),
    ((), None),
])
def test_an_evaluation_with_a_modified_sampler_is_warned_about(tmp_path, monkeypatch, overrides, note):
    """docs/method.md (7.3): with eval.temperature != 1, eval.top_k or eval.top_p < 1 the evaluation's KL column
    is E_q[log pi - log pi_ref] and no theory is put beside the run: validate says so, once, naming the
    settings; not for the default evaluation."""
    from infalign.apps import train as train_app

    seen = []
    monkeypatch.setattr(train_app.log, "warning", lambda msg, *a: seen.append(msg % a if a else msg))
    validate_train(tmp_path, *overrides)
    said = [m for m in seen if "E_q[log pi - log pi_ref]" in m]
    assert said == ([] if note is None else [said[0]]) and (note is None or said[0].startswith(f"{note}: "))

def test_few_held_out_prompts_are_warned_about(tmp_path, monkeypatch):
    """Walkthrough finding: with 4 evaluation prompts an untrained policy's standard win-rate interval
    excluded 0.5 for 2 of 7 seeds, without a word. validate warns below FEW_EVAL_PROMPTS (20) held-out
    prompts -- a percentile bootstrap of a mean covers ~80 % at 4, ~89 % at 10, ~92 % at 20 and ~94 % at 40
    (2000 normal samples each, 1000 resamples: the figures the warning quotes) -- and not at 20."""
    from infalign.apps import train as train_app

    seen = []
    monkeypatch.setattr(train_app.log, "warning", lambda msg, *a: seen.append(msg % a if a else msg))
    validate_train(tmp_path, "data.eval_prompts=4")
    assert [m for m in seen if m.startswith("data.eval_prompts=4: ")]
    seen.clear()
    validate_train(tmp_path, "data.eval_prompts=20")
    assert not [m for m in seen if m.startswith("data.eval_prompts=")]
    rng = np.random.default_rng(0)  # the quoted coverage at 4 prompts, by the same Monte Carlo (fewer draws)
    covered = 0
    for _ in range(400):
        x = rng.normal(size=4)
        low, high = np.percentile(x[rng.integers(0, 4, size=(500, 4))].mean(1), [2.5, 97.5])
        covered += low <= 0 <= high
    assert 0.74 <= covered / 400 <= 0.86  # ~0.80; 400 draws: +-0.04 at 2 standard errors, +-0.06 here



def test_a_failed_jobs_reason_is_its_message_not_omegaconfs_trailer(tmp_path):
    """An error raised while OmegaConf resolves an interpolation (a ``kl_point`` out of range: the sweep axis of
    every paper sweep) ends with OmegaConf's ``full_key:`` / ``object_type=`` lines: the sweep's failure line
    and the report showed ``object_type=dict`` (sweep walkthrough); they show the message."""
    from omegaconf import OmegaConf

    from infalign.apps.hydra_callbacks import sweep_failures
    from infalign.errors import ConfigError
    from infalign.report.collect import collect

    def refuse(value):
        raise ConfigError("kl_point", value, "an integer in [0, 4]")

    OmegaConf.register_new_resolver("test_refuse", refuse, replace=True)
    try:
        OmegaConf.to_container(OmegaConf.create({"algo": {"kl_target": "${test_refuse:9}"}}), resolve=True)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's own wrapper, as a run records it
        error = f"{type(exc).__name__}: {exc}"
    assert error.splitlines()[-1].strip().startswith("object_type=")  # (the trailer this test is about)
    _job(tmp_path, "0", {"status": "failed", "error": error, "config": {}})
    _, failures = sweep_failures(tmp_path)
    assert "kl_point=9 is not allowed: an integer in [0, 4]" in failures["0"]
    (job,) = collect(tmp_path)
    assert "kl_point=9 is not allowed" in job.reason and "object_type" not in job.reason


def test_a_job_killed_without_a_record_is_reported_with_how_to_continue_it(tmp_path):
    """A parallel launcher's abort (a Ctrl-C, SIGTERM or a worker killed by the OOM killer) SIGKILLs its running
    jobs: a job dir with checkpoints and no metrics.json. The report says the sweep again with
    ckpt_path=last_or_new continues it (sweep walkthrough: it said only "still running, killed, or crashed");
    a dir with no checkpoint gets no such hint."""
    from infalign.report.collect import collect

    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    (_job(tmp_path, "0", hydra=True) / "checkpoints").mkdir()
    _job(tmp_path, "1", hydra=True)
    jobs = {j.job: j for j in collect(tmp_path)}
    assert jobs["0"].status == "missing" and "no metrics.json" in jobs["0"].reason
    assert f"hydra.sweep.dir={tmp_path}) with ckpt_path=last_or_new continues it" in jobs["0"].reason
    assert "ckpt_path" not in jobs["1"].reason


def test_a_stopped_sweep_does_not_claim_every_job_was_recorded(monkeypatch):
    """infalign-train's closing line after Ctrl-C / SIGTERM: a run is recorded as interrupted; so is a sweep's
    running job, and the line says how to continue them (a parallel sweep's lines: tests/test_sweep_stop.py)."""
    import threading

    from infalign.apps import hydra_callbacks, train

    monkeypatch.setattr(hydra_callbacks, "MULTIRUN_STARTED", threading.Event())  # (other tests start multiruns)
    monkeypatch.setattr("sys.argv", ["infalign-train", "transform=identity"])
    assert train._stopped_note().startswith("recorded as interrupted")
    for flag in ("-m", "--multirun"):
        monkeypatch.setattr("sys.argv", ["infalign-train", flag, "transform=identity,raw"])
        note = train._stopped_note()
        assert note.startswith("a job that was running is recorded as interrupted") and "ckpt_path=last_or_new" in note
    # a sweep entry sets hydra.mode: MULTIRUN (no -m): the sweep's start marks it (review)
    monkeypatch.setattr("sys.argv", ["infalign-train", "+sweeps=paper_bon"])
    assert train._stopped_note().startswith("recorded as interrupted")
    hydra_callbacks.MULTIRUN_STARTED.set()
    assert train._stopped_note().startswith("a job that was running is recorded as interrupted")


def test_an_entry_whose_class_refuses_its_arguments_is_a_config_error_naming_the_entry_chosen():
    """Extensibility walkthrough: a transform entry with a misspelt argument (``nmae: pow3``) ended
    infalign-train with Hydra's raw TypeError traceback and exit 1 (infalign-analyze gave one block); and a typo
    inside a custom ``fn`` was reported under the entry's ``name`` field -- another, valid entry's name --
    instead of the entry chosen. Both name ``transform`` and the entry chosen now."""
    from omegaconf import OmegaConf

    from infalign.apps.config import decreasing_transform, entry_name, instantiate_group
    from infalign.errors import ConfigError

    fn = {"_target_": "scipy.stats.beta.cdf", "_partial_": True, "a": 3.0, "b": 1.0}
    cfg = OmegaConf.create({"transform": {"_target_": "infalign.math.transforms.Custom", "nmae": "pow3", "fn": fn},
                            "hydra": {"runtime": {"choices": {"transform": "pow3typo2"}}}})
    with pytest.raises(ConfigError) as info:
        instantiate_group(cfg, "transform")
    assert (info.value.key, info.value.value) == ("transform", "pow3typo2") and "nmae" in str(info.value)
    typo = OmegaConf.create({"transform": {"_target_": "infalign.math.transforms.Custom", "name": "pow3",
                                           "fn": fn | {"aa": 3.0}},
                             "hydra": {"runtime": {"choices": {"transform": "pow3typo"}}}})
    transform = instantiate_group(typo, "transform")  # (the callable fails only when called)
    with pytest.raises(ConfigError) as info:
        decreasing_transform(transform, "transform", value=entry_name(typo, "transform"))
    assert (info.value.key, info.value.value) == ("transform", "pow3typo") and "aa" in str(info.value)
