"""Sweep configs compose and expand to the expected jobs; W&B grouping; concurrent cache builders."""

from __future__ import annotations

import itertools
import multiprocessing as mp

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from infalign.apps.config import CONFIG_DIR
from infalign.infra.cache import cached, load_tensors, save_tensors
from pipeline_helpers import compose_config
from sweep_helpers import compose_sweep, expand

EXPECTED = {  # sweep -> (number of jobs, swept keys)
    # N is an evaluation axis (eval.ns), not a training axis: 6 x 3 jobs, not 6 x 3 x 3
    "bon_transforms": (6 * 3, ["transform", "algo.beta"]),
    "won_transforms": (6 * 3, ["transform", "algo.beta"]),
    "beta_frontier": (7, ["algo.beta"]),
}
PAPER = {  # paper sweep -> (methods, KL points, seeds)
    "paper_standard": (5, 5, 3),
    "paper_bon": (7, 5, 3),
    "paper_won": (4, 5, 3),
    "paper_hacking": (3, 5, 3),
    "paper_control": (3, 5, 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_grid_sweeps_expand_to_distinct_jobs(name):
    cfg = compose_sweep(name)
    assert cfg.sweep_name == name and cfg.hydra.mode.name == "MULTIRUN"
    jobs = expand(cfg)
    count, keys = EXPECTED[name]
    assert len(jobs) == count
    as_dicts = [dict(o.split("=", 1) for o in job) for job in jobs]
    combos = {tuple(d[k] for k in keys) for d in as_dicts}
    assert len(combos) == count  # no (family, t) duplicates: every job trains something different
    for d in as_dicts[:: max(1, count // 6)]:  # each job's config composes and instantiates
        job_cfg = compose_config("train", f"+sweeps={name}", *[f"{k}={v}" for k, v in d.items()])
        transform = instantiate(job_cfg.transform)
        assert job_cfg.procedure.name in ("bon", "won")
        if d.get("transform", "").startswith("expn"):
            assert transform.normalized and (transform.t < 0) == (job_cfg.procedure.name == "won")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_sweeps_compose_and_each_method_walks_its_kl_knob(name):
    from omegaconf import OmegaConf

    from infalign.math.procedures import Procedure
    from infalign.math.transforms import as_transform
    from infalign.pipeline.record import method_info
    from infalign.training.algorithms import make_algorithm

    cfg = compose_sweep(name)
    assert cfg.sweep_name == name and cfg.hydra.mode.name == "MULTIRUN"
    jobs = [dict(o.split("=", 1) for o in job) for job in expand(cfg)]
    methods, points, seeds = PAPER[name]
    assert len(jobs) == methods * points * seeds
    assert len({(j["method"], j["kl_point"], j["seed"]) for j in jobs}) == len(jobs)
    for method in sorted({j["method"] for j in jobs}):
        knobs, settings = [], []
        first = next(j for j in jobs if j["method"] == method)  # the method's first job (as test_config_entries)
        job = compose_config("train", f"+sweeps={name}", *(f"{k}={v}" for k, v in first.items()))
        for point in range(points):
            job.kl_point = point  # the method's knob is an interpolation of kl_point
            algo = job.algo
            knobs.append(algo.get("kl_target") if algo.get("kl_target") is not None else
                         (algo.steps if algo.name == "bon_sft" else 1.0 / algo.beta))
            procedure: Procedure = instantiate(job.procedure)
            trained = make_algorithm(OmegaConf.to_container(algo, resolve=True))
            info = method_info(job, trained, as_transform(instantiate(job.transform)), procedure)
            assert info["depends_on_n"] == (algo.name in ("bon_sft", "ipo")), (method, info)
            settings.append(OmegaConf.to_container(algo, resolve=True))
        assert knobs == sorted(knobs) and len(set(knobs)) == points, (method, knobs)  # KL grows with kl_point
        # ... and nothing but the knob its records name: the report keeps the method's runs one curve
        walked = {f"algo.{k}" for k in settings[0] if any(s[k] != settings[0][k] for s in settings)}
        assert walked and walked <= set(info["kl_knob"]), (method, walked, info["kl_knob"])


def test_optuna_sweep_composes_with_its_search_space():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_sweep("optuna_t")
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper") and sw.direction == "maximize"
    assert set(sw.params) == {"transform.t", "algo.beta"} and cfg.objective.kl_budget == 0.5


def test_objective_penalises_kl_over_budget():
    from infalign.apps.train import objective

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["objective.kl_budget=0.5", "objective.kl_penalty=2.0"])
    metrics = {"eval": {"judges": {"reward_model": {"bon4_win_rate": {"mean": 0.8}, "kl": {"mean": 0.75}}}}}
    assert objective(cfg, metrics) == pytest.approx(0.8 - 2.0 * 0.25)
    metrics["eval"]["judges"]["reward_model"]["kl"]["mean"] = 0.3
    assert objective(cfg, metrics) == pytest.approx(0.8)


@pytest.mark.parametrize("launcher, target", [("local_parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_entries_compose(launcher, target):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":  # one task per device: Lightning owns the ranks
        assert cfg.hydra.launcher.tasks_per_node == 4 == cfg.hydra.launcher.gpus_per_node


def _build_in_process(path: str, counter_dir: str, barrier) -> list[float]:
    def build():
        (__import__("pathlib").Path(counter_dir) / f"built-{mp.current_process().pid}").touch()
        __import__("time").sleep(0.5)  # a slow build: the other process must wait, not build too
        return {"x": torch.arange(5.0)}

    barrier.wait()
    value, _ = cached(path, build, lambda v, p: save_tensors(p, v), lambda p: load_tensors(p)[0])
    return value["x"].tolist()


@pytest.mark.slow  # two spawned interpreters importing torch
def test_two_processes_build_a_cache_entry_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    path = str(tmp_path / "entry.pt")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_build_in_process, [(path, str(tmp_path), barrier)] * 2)
    assert results == [[0.0, 1.0, 2.0, 3.0, 4.0]] * 2
    assert len(list(tmp_path.glob("built-*"))) == 1  # built once, read by the other
    assert not list(tmp_path.glob(".entry.pt.*"))  # no temp files left behind


def test_sweep_jobs_cover_families_times_betas():
    cfg = compose_sweep("bon_transforms")
    families = cfg.hydra.sweeper.params.transform.split(",")
    betas = cfg.hydra.sweeper.params["algo.beta"].split(",")
    jobs = {tuple(sorted(job)) for job in expand(cfg)}
    for fam, beta in itertools.product(families, betas):
        assert any(f"transform={fam}" in job and f"algo.beta={beta}" in job for job in jobs)


@pytest.mark.parametrize(("overrides", "metric"), [
    ([], "bon4_win_rate"),
    (["procedure.n=1"], "standard_win_rate"),
    (["procedure=sample"], "standard_win_rate"),
    (["procedure=won"], "won4_win_rate"),
    (["objective.metric=bon8_win_rate"], "bon8_win_rate"),
])
def test_objective_reads_the_procedures_own_column_by_default(overrides, metric):
    from infalign.apps.train import objective

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cols = {k: {"mean": i / 10} for i, k in enumerate(
        ["bon4_win_rate", "bon8_win_rate", "won4_win_rate", "standard_win_rate", "kl"])}
    assert objective(cfg, {"eval": {"judges": {"reward_model": cols}}}) == cols[metric]["mean"]


def test_unknown_objective_metric_fails_before_compute():
    from infalign.apps.train import validate
    from infalign.errors import ConfigError

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["objective.metric=bon16_win_rate", "logger=none"])
    with pytest.raises(ConfigError) as err:  # eval.ns = [1, 2, 4, 8]: no best-of-16 column
        validate(cfg)
    assert err.value.key == "objective.metric" and "bon8_win_rate" in str(err.value.allowed)


def test_composed_configs_are_independent_copies():
    """pipeline_helpers.compose_config composes once per process: each caller still gets its own copy."""
    first = compose_config("train", "seed=5")
    first.seed, first.algo.beta = 6, 123.0
    again = compose_config("train", "seed=5")
    assert again.seed == 5 and again.algo.beta != 123.0
    assert compose_config("train", "seed=7").seed == 7  # another override set, another compose


@pytest.mark.slow
@pytest.mark.parametrize("null, base, arms", [
    ("paper_null", "paper_bon", (("identity", "identity"), ("expn_t8", "expn(t=8)"))),
    ("paper_null_won", "paper_won", (("identity", "identity"), ("expn_tm4", "expn(t=-4)"))),
    ("paper_null_hacking", "paper_hacking", (("raw", "raw"), ("identity", "identity")))])
def test_a_null_sweep_pairs_each_arm_with_an_independent_retraining_of_itself(null, base, arms):
    """sweeps/paper_null*.yaml: two arms x replica {0, 1} x 5 KL points x 3 seeds, with their base sweep's
    training and evaluation settings (so replica 0 is the base sweep's run of that method: a
    policy-cache hit after it); replica 1 is labelled <method>[replica=1] and trains from other draws."""
    from infalign.math.transforms import as_transform
    from infalign.pipeline.record import method_info
    from infalign.pipeline.settings import training_seed
    from infalign.training.algorithms import make_algorithm

    cfg = compose_sweep(null)
    jobs = [dict(o.split("=", 1) for o in job) for job in expand(cfg)]
    assert len(jobs) == 60 and len({(j["method"], j["replica"], j["kl_point"], j["seed"]) for j in jobs}) == 60
    assert {j["method"] for j in jobs} == {method for method, _ in arms}
    for method, label in arms:
        bon = compose_config("train", f"+sweeps={base}", f"method={method}", "kl_point=2", "seed=1")
        seeds, labels = set(), set()
        for replica in (0, 1):
            job = compose_config("train", f"+sweeps={null}", f"method={method}", "kl_point=2", "seed=1",
                                 f"replica={replica}")
            assert job.eval == bon.eval and job.procedure == bon.procedure and job.algo == bon.algo
            assert job.transform == bon.transform and job.kl_grid == bon.kl_grid and job.data == bon.data
            algo = make_algorithm(OmegaConf.to_container(job.algo, resolve=True))
            transform = as_transform(instantiate(job.transform))
            labels.add(method_info(job, algo, transform, instantiate(job.procedure))["method"])
            seeds.add(training_seed(job))
        assert labels == {label, f"{label}[replica=1]"} and len(seeds) == 2


@pytest.mark.slow  # 14 composes
@pytest.mark.parametrize("fill, base, budgets", [("paper_hacking_raw", "paper_hacking", (2.5, 3.0, 3.5)),
                                                 ("paper_hacking_control_raw", "paper_hacking_control",
                                                  (1.25, 1.5, 1.75))])
def test_the_hacking_raw_fills_are_their_sweeps_raw_runs_between_two_of_its_budgets(fill, base, budgets):
    """sweeps/paper_hacking{,_control}_raw.yaml: raw at three KL budgets x 3 seeds, between two budgets
    of the sweep they fill (where raw's measured KL jumped: README), every other setting (world,
    steps, evaluation, W&B group) that sweep's, so the report compares their runs with its runs as
    one experiment."""
    cfg = compose_sweep(fill)
    jobs = [dict(o.split("=", 1) for o in job) for job in expand(cfg)]
    assert len(jobs) == 9 and {j["method"] for j in jobs} == {"raw"}
    grid = list(compose_sweep(base).kl_grid)
    assert list(cfg.kl_grid) == list(budgets)
    assert any(a < budgets[0] and budgets[-1] < b for a, b in zip(grid, grid[1:]))  # between two of its budgets
    for point, budget in enumerate(budgets):
        job = compose_config("train", f"+sweeps={fill}", "method=raw", f"kl_point={point}", "seed=1")
        ref = compose_config("train", f"+sweeps={base}", "method=raw", "kl_point=3", "seed=1")
        assert job.algo.kl_target == budget
        assert {k: v for k, v in job.algo.items() if k != "kl_target"} == \
            {k: v for k, v in ref.algo.items() if k != "kl_target"}
        for key in ("data", "eval", "procedure", "calibration", "sweep_name", "transform"):
            assert job[key] == ref[key], key


@pytest.mark.slow  # 7 composes
def test_the_null_hacking_raw_fill_is_the_hacking_fill_at_both_replicas():
    """sweeps/paper_null_hacking_raw.yaml: without it the A/A control's raw pair had no runs between KL
    ~2.7 and raw's runaway, where the hacking finding's raw curve is measured (a reviewer's find). Its
    replica-0 jobs are paper_hacking_raw's (everything but sweep_name and the W&B group it names, which no
    cache key holds), so
    they load from the cache; replica 1 re-trains them."""
    cfg = compose_sweep("paper_null_hacking_raw")
    jobs = [dict(o.split("=", 1) for o in job) for job in expand(cfg)]
    assert len(jobs) == 18 and {j["method"] for j in jobs} == {"raw"} and {j["replica"] for j in jobs} == {"0", "1"}
    for point in (0, 2):
        fill = compose_config("train", "+sweeps=paper_hacking_raw", "method=raw", f"kl_point={point}", "seed=1")
        for replica in (0, 1):
            job = compose_config("train", "+sweeps=paper_null_hacking_raw", "method=raw", f"kl_point={point}",
                                 "seed=1", f"replica={replica}")
            assert job.sweep_name == "paper_null_hacking"
            differ = {k for k in fill if job[k] != fill[k]}  # the W&B group (logger) follows sweep_name
            assert differ == {"sweep_name", "logger"} | ({"replica"} if replica else set())


@pytest.mark.parametrize("trainer, devices, tasks, gpus", [("ddp", "4", 4, 4), ("ddp_cpu", "2", 2, 0)])
def test_the_slurm_launcher_asks_for_gpus_only_for_a_gpu_trainer(trainer, devices, tasks, gpus):
    """trainer=ddp_cpu asked SLURM for GPUs (its CPU ranks then landed on a GPU node, where the
    process group was NCCL-only; a review's find); trainer.devices=auto failed in submitit's typed
    config with an interpolation error, now a ConfigError naming trainer.devices."""
    from omegaconf.errors import InterpolationResolutionError

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", f"trainer={trainer}", f"trainer.devices={devices}"],
                      return_hydra_config=True)
        auto = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=auto"],
                       return_hydra_config=True)
    assert (cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node) == (tasks, gpus)
    with pytest.raises(InterpolationResolutionError) as err:
        auto.hydra.launcher.tasks_per_node  # noqa: B018 - resolving it is the test
    assert "ConfigError" in str(err.value) and "trainer.devices='auto'" in str(err.value)
