"""Algorithms as registered classes (training/algorithms/), and each one trained through the real
module on an exactly solvable problem (tests/tiny_policy.py: two prompts, 9 responses each).

What the exact tests assert, per algorithm (docs/method.md §6):

* rloo, ppo -- training through ``fit_policy`` / ``CTRLModule`` moves the policy to the tilted
  policy ``softmax(log pi_ref + Phi(C_hat)/beta)`` (method.md (1.2)), and the logged ``train/kl``
  is an unbiased estimate of the policy's exact KL at each rollout;
* bon_sft -- SFT on the best of N reference samples moves the policy to its data's best-of-N
  distribution, which is the exact best-of-N policy up to sampling noise;
* ipo -- the policy reaches the exact minimiser of the IPO loss on its pairs (a least-squares
  problem in the log-ratios).

Tolerances (measured on this machine): the online runs end at mean KL(pi || target) 1e-5 to
1.4e-4 (seeds 0-2) from 0.39 at the start, and the asserted bound is 0.01; with k3 folded into the
reward (one of the deliberate breaks) the same run ends at ~1.0. The logged-vs-exact KL difference
is averaged over the steps and compared with 4 standard errors of its per-step values. The
offline bounds are stated beside each assertion (sampling noise of 200 draws per prompt, and the
responses the data never contain, whose probability SFT only drives towards 0).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import tiny_policy as tp
from infalign.apps.config import CONFIG_DIR
from infalign.data.batches import SampledResponses
from infalign.errors import ConfigError
from infalign.math.calibration import CalibrationTable
from infalign.math.transforms import Exp, Identity, Log
from infalign.pipeline.baselines import best_and_worst_of_n
from infalign.pipeline.fit import fit_policy
from infalign.pipeline.trainer import StageTrainers
from infalign.training.algorithms import (
    ALGORITHMS,
    AlgoConfig,
    OnlineAlgorithm,
    make_algorithm,
    register_algorithm,
)

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers"),
              pytest.mark.filterwarnings("ignore:.*`isinstance\\(treespec, LeafSpec\\)`")]

PREDICT = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                            enable_model_summary=False)
TRAINERS = StageTrainers(predict=PREDICT, fit=functools.partial(PREDICT, logger=False, enable_checkpointing=False))


# ---------------------------------------------------------------- the registry
def _conf_entry(name: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["~experiment", f"algo={name}", "procedure.n=4"])
    return OmegaConf.to_container(cfg.algo, resolve=True)


@pytest.mark.parametrize("name", ["rloo", "ppo", "bon_sft", "ipo"])
def test_each_yaml_entry_holds_exactly_its_algorithms_settings(name):
    entry = _conf_entry(name)
    assert set(entry) == set(ALGORITHMS[name].settings())
    algo = make_algorithm(entry)
    assert type(algo) is ALGORITHMS[name] and algo.name == name


def test_registry_names_and_errors_name_the_key(caplog):
    assert sorted(ALGORITHMS) == ["bon_sft", "ipo", "ppo", "rloo"]
    with pytest.raises(ConfigError, match=r"algo\.name='nosuch'.*\['bon_sft', 'ipo', 'ppo', 'rloo'\]"):
        make_algorithm({"name": "nosuch"})
    with pytest.raises(ConfigError, match=r"algo\.grup_size.*a setting of algo=rloo.*no algorithm has"):
        make_algorithm({"name": "rloo", "grup_size": 4})
    # an experiment's RL settings under an offline method: ignored, with a warning naming them
    with caplog.at_level(logging.WARNING):
        algo = make_algorithm({"name": "bon_sft", "beta": 20.0, "group_size": 2})
    assert not hasattr(algo.cfg, "beta") and algo.beta is None
    assert "algo=bon_sft ignores beta=20.0 (ipo|ppo|rloo), group_size=2 (ppo|rloo)" in caplog.text
    # only what the command line gave is a warning; the experiment's own settings are logged at info
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="infalign.training.algorithms.base"):
        make_algorithm({"name": "bon_sft", "beta": 20.0, "group_size": 2}, explicit={"group_size"})
    (warned,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    (info,) = [r for r in caplog.records if r.levelno == logging.INFO]
    assert "ignores group_size=2" in warned.getMessage() and "beta" not in warned.getMessage()
    assert "ignores beta=20.0 (ipo|ppo|rloo) (settings of other algorithms, from the config files)" in info.getMessage()
    with pytest.raises(ConfigError, match=r"algo\.kl_target=0\.3.*algo=bon_sft moves its KL with algo\.steps"):
        make_algorithm({"name": "bon_sft", "kl_target": 0.3})


@pytest.mark.parametrize("settings, key", [
    ({"name": "rloo", "kl_estimator": "k3"}, "algo.kl_estimator"),
    ({"name": "ppo", "kl_estimator": "k3"}, "algo.kl_estimator"),
    ({"name": "rloo", "temperature": 0.7}, "algo.temperature"),
    ({"name": "ipo", "temperature": 1.3}, "algo.temperature"),
    ({"name": "rloo", "top_k": 50}, "algo.top_k"),
    ({"name": "rloo", "top_k": 0}, "algo.top_k"),
    ({"name": "ppo", "top_p": 0.9}, "algo.top_p"),
    ({"name": "bon_sft", "top_p": 0.0}, "algo.top_p"),
    ({"name": "rloo", "beta": 0.0}, "algo.beta"),
    ({"name": "rloo", "group_size": 1}, "algo.group_size"),
    ({"name": "rloo", "lr": -1.0}, "algo.lr"),
    ({"name": "ppo", "minibatches": 3, "prompts_per_step": 2, "group_size": 2}, "algo.minibatches"),
    ({"name": "ppo", "clip_eps": 1.0}, "algo.clip_eps"),
    ({"name": "ipo", "beta": -0.1}, "algo.beta"),
    ({"name": "bon_sft", "n_samples": 1}, "algo.n_samples"),
])
def test_range_checks_name_the_key(settings, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_algorithm(settings)


def test_k3_and_temperature_refusals_say_why():
    with pytest.raises(ConfigError, match=r"allowed: one of \['k1'\].*its gradient is not the KL gradient"):
        make_algorithm({"name": "rloo", "kl_estimator": "k3"})
    with pytest.raises(ConfigError, match=r"allowed: 1\.0.*off-policy"):
        make_algorithm({"name": "ppo", "temperature": 0.7})
    with pytest.raises(ConfigError, match=r"algo\.top_p=0\.9.*off-policy.*set eval\.top_k / eval\.top_p"):
        make_algorithm({"name": "rloo", "top_p": 0.9})
    with pytest.raises(ConfigError, match=r"algo\.top_k=40.*off-policy"):
        make_algorithm({"name": "rloo", "top_k": 40})


def test_theory_targets_and_labels():
    exp = Exp(t=4.0, normalized=True)
    rloo, ppo = make_algorithm({"name": "rloo", "beta": 0.3}), make_algorithm({"name": "ppo", "beta": 0.2})
    assert rloo.theory_target(exp) == (exp, 0.3) and ppo.theory_target(exp) == (exp, 0.2)
    transform, beta = make_algorithm({"name": "bon_sft", "n_samples": 5}).theory_target(exp)
    assert isinstance(transform, Log) and beta == 0.25  # the best-of-5 policy: log at 1/(N-1)
    assert make_algorithm({"name": "ipo"}).theory_target(exp) is None
    assert [a.method_label(exp) for a in (rloo, ppo)] == ["expn(t=4)", "expn(t=4)+ppo"]
    assert make_algorithm({"name": "ipo", "n_samples": 8}).method_label(exp) == "ipo(N=8)"
    assert rloo.run_label("expn-t4") == "expn-t4-b0.3"
    assert make_algorithm({"name": "ppo", "kl_target": 0.4}).run_label("identity") == "identity-kl0.4-ppo"
    assert make_algorithm({"name": "bon_sft", "steps": 16}).run_label("exp-t4") == "bon_sft-n4-s16"
    assert [a.needs_calibration(Identity()) for a in (rloo, make_algorithm({"name": "ipo"}))] == [True, False]


def test_an_algorithm_is_one_registered_class(monkeypatch):
    monkeypatch.setattr("infalign.training.algorithms.base.ALGORITHMS", dict(ALGORITHMS))

    @dataclasses.dataclass
    class SignConfig(AlgoConfig):
        name: str = "sign"
        beta: float = 1.0

    @register_algorithm
    class Sign(OnlineAlgorithm):
        name, Config = "sign", SignConfig

    from infalign.training.algorithms import base

    assert type(make_algorithm({"name": "sign", "beta": 2.0})) is Sign and "sign" in base.ALGORITHMS
    with pytest.raises(ValueError, match="registered twice"):
        register_algorithm(Sign)


# ---------------------------------------------------------------- exact problems
class KLRecorder(L.Callback):
    """Per rollout: the policy's exact mean KL from the reference (before the step) and the logged KL."""

    def __init__(self) -> None:
        self.exact: list[float] = []
        self.logged: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.exact.append(tp.mean_kl(pl_module.policy, lambda x: tp.response_probs(tp.reference(), x)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged.append(float(trainer.callback_metrics["train/kl"]))


def _target(beta: float):
    return lambda x: tp.tilted(x, tp.calibrated(x), beta)  # Phi = identity on C_hat


@pytest.mark.slow
@pytest.mark.parametrize("name, steps", [("rloo", 80), ("ppo", 40)])
def test_online_algorithm_reaches_the_tilted_policy_and_logs_the_exact_kl(name, steps):
    beta = 0.3  # the target has KL 0.36 from the reference; the reference is 0.39 from the target
    algo = make_algorithm({"name": name, "beta": beta, "lr": 0.05, "steps": steps, "group_size": 8,
                           "prompts_per_step": 8, "max_new_tokens": 4, "grad_clip": 0.0})
    world, recorder = tp.world(), KLRecorder()
    start = tp.mean_kl(world.policy, _target(beta))
    fit_policy(world, OmegaConf.create({"seed": 0}), algo, Identity(), tp.calibration_table(),
               StageTrainers(predict=PREDICT, fit=functools.partial(TRAINERS.fit, callbacks=[recorder])), None)
    # the logged KL is the policy's KL at each rollout, in expectation (k1 over 64 samples)
    assert len(recorder.logged) == steps  # one rollout per step, ppo's epochs x minibatches included
    diff = torch.tensor(recorder.logged, dtype=torch.float64) - torch.tensor(recorder.exact, dtype=torch.float64)
    se = float(diff.std() / len(diff) ** 0.5)
    assert se < 0.02 and abs(float(diff.mean())) < 4 * se, (float(diff.mean()), se)
    # the policy reaches the tilted target
    assert start > 0.35
    assert tp.mean_kl(world.policy, _target(beta)) < 0.01  # measured <= 1.4e-4
    target_kl = sum(tp.kl(_target(beta)(x), tp.response_probs(tp.reference(), x)) for x in tp.PROMPTS) / 2
    assert recorder.exact[-1] == pytest.approx(target_kl, abs=0.02)


def _offline(name: str, **settings):
    prompts = tp.PROMPTS * 200
    algo = make_algorithm({"name": name, "n_samples": 4, "steps": 150, "prompts_per_step": 64, "lr": 0.05,
                           "max_new_tokens": 4, **settings})
    gen = OmegaConf.create({"max_new_tokens": 4, "temperature": 1.0, "batch_size": 100})
    world = tp.world(prompts)
    picks = best_and_worst_of_n(world, prompts, 4, gen, PREDICT, seed=0)  # the data fit_offline draws
    best, worst = (p.texts for p in picks)  # every response is "a b <eos>": its text and ids agree
    start = {x: tp.response_probs(world.policy, x) for x in tp.PROMPTS}
    fit_policy(world, OmegaConf.create({"seed": 0, "calibration": gen}), algo, Identity(), None, TRAINERS, None)
    return world, prompts, best, worst, start


@pytest.mark.parametrize("max_new_tokens, ended", [(2, False), (4, True)])
def test_offline_baselines_fit_the_sampled_ids_with_an_eos_only_where_a_response_ended(max_new_tokens, ended):
    """Every tiny-policy response is "a b <eos>": cut at 2 new tokens none ends, at 4 all do. The picks
    carry the sampler's ids and ended flags, and the BoN-SFT / IPO batches train on exactly those ids (an
    eos appended to the text, as before, would end the cut responses too)."""
    prompts = tp.PROMPTS * 3
    gen = OmegaConf.create({"max_new_tokens": max_new_tokens, "temperature": 1.0, "batch_size": 100})
    world = tp.world(prompts)
    best, worst = best_and_worst_of_n(world, prompts, 4, gen, PREDICT, seed=0)
    assert best.ended == worst.ended == [ended] * len(prompts)
    eos = world.tokenizer.eos_token_id
    assert all((ids[-1] == eos) == ended and len(ids) == 2 + ended for ids in best.ids + worst.ids)
    assert best.ids == [world.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] * ended
                        for t in best.texts]
    algo = make_algorithm({"name": "bon_sft", "n_samples": 4, "steps": 1, "prompts_per_step": len(prompts)})
    _, loader = algo.fit_module(world.policy, world.reference, world.tokenizer, prompts, best, worst, seed=0)
    batch = next(iter(loader))
    trained = sorted(tuple(t for t in row if t != -100) for row in batch["labels"].tolist())
    assert trained == sorted(tuple(ids) for ids in best.ids)
    algo = make_algorithm({"name": "ipo", "n_samples": 4, "steps": 1, "prompts_per_step": len(prompts)})
    _, loader = algo.fit_module(world.policy, world.reference, world.tokenizer, prompts, best, worst, seed=0)
    batch = next(iter(loader))
    rows = sorted(tuple(r[m.bool()].tolist()) for r, m in zip(batch["rejected_ids"], batch["rejected_mask"]))
    assert rows == sorted(tuple(ids) for ids in worst.ids)


def _counts(prompts, responses, prompt):
    c = torch.zeros(3, 3, dtype=torch.float64)
    for x, y in zip(prompts, responses):
        if x == prompt:
            a, b = y.split()
            c[tp.FIRST[x].index(a), tp.SECOND.index(b)] += 1
    return c


@pytest.mark.slow
def test_bon_sft_reaches_the_best_of_n_policy():
    world, prompts, best, _, start = _offline("bon_sft")
    for x in tp.PROMPTS:
        data = _counts(prompts, best, x)
        data /= data.sum()  # the SFT loss's exact minimiser: the data's distribution
        exact = tp.best_of_n(x, 4)
        trained = tp.response_probs(world.policy, x)
        assert tp.kl(exact, start[x]) > 0.5  # the reference is far from the best-of-4 policy
        # measured 0.024-0.051: responses absent from the data keep ~0.005 each after 150 steps
        assert float((trained - data).abs().sum()) < 0.1, x
        # 200 best-of-4 draws per prompt: E KL(data || exact) ~ (9-1)/(2*200) = 0.02; measured
        # KL(exact || trained) 0.023-0.039
        assert tp.kl(data, exact) < 0.06 and tp.kl(exact, trained) < 0.1, x


@pytest.mark.slow
def test_ipo_reaches_the_least_squares_solution_of_its_pairs():
    tau = 0.2
    world, prompts, best, worst, start = _offline("ipo", beta=tau)
    for x in tp.PROMPTS:
        # loss = mean (d(w) - d(l) - 1/(2 tau))^2 in the log-ratios d = log pi/pi_ref (the normaliser
        # cancels): least squares over the 9 d's (the pairs connect all 9; d is fixed up to a constant)
        rows = [(tp.FIRST[x].index(w.split()[0]) * 3 + tp.SECOND.index(w.split()[1]),
                 tp.FIRST[x].index(lo.split()[0]) * 3 + tp.SECOND.index(lo.split()[1]))
                for p, w, lo in zip(prompts, best, worst) if p == x and w != lo]  # w == lo: h = 0, no gradient
        design = torch.zeros(len(rows), 9, dtype=torch.float64)
        for i, (w, lo) in enumerate(rows):
            design[i, w], design[i, lo] = 1.0, -1.0
        assert torch.linalg.matrix_rank(design) == 8  # connected: a unique solution up to the constant
        d = torch.linalg.lstsq(design, torch.full((len(rows), 1), 1 / (2 * tau), dtype=torch.float64)).solution
        ref = tp.response_probs(tp.reference(), x).flatten()
        solution = (ref * d.flatten().exp() / (ref * d.flatten().exp()).sum()).view(3, 3)
        trained = tp.response_probs(world.policy, x)
        assert tp.kl(solution, start[x]) > 0.4  # measured 0.43-0.46
        assert tp.kl(solution, trained) < 0.01, x  # measured 1e-3 to 3.2e-3


# ---------------------------------------------------------------- missing-EOS penalty
class LengthScorer:
    """``r(x, y)`` = number of words of ``y`` (distinct values, so the penalty is visible on each row)."""

    def score(self, prompts, responses):
        return torch.tensor([float(len(y.split())) for y in responses])


@pytest.mark.parametrize("transform", ["raw", "identity"])
def test_missing_eos_penalty_lowers_exactly_the_responses_cut_without_eos(transform):
    """docs/method.md (6.1b): with eos after ``b`` at probability < 1 (the bigram may also continue
    with ``b1``), some responses end within max_new_tokens=3 and some are cut; the task reward of the
    cut ones, and only those, drops by the penalty, before the advantages."""
    from infalign.math.transforms import Raw
    from infalign.training.ctrl import CTRLModule

    def rollout(penalty):
        policy, reference = tp.TabularLM(), tp.reference()
        for model in (policy, reference):
            for b in tp.SECOND:
                model.mask[tp.ID[b], tp.ID["b1"]] = 0.0  # b -> eos or b1
        algo = make_algorithm({"name": "rloo", "group_size": 8, "prompts_per_step": 2, "max_new_tokens": 3,
                               "missing_eos_penalty": penalty})
        phi = Raw() if transform == "raw" else Identity()
        table = CalibrationTable.from_rewards(torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2))
        module = CTRLModule(policy, reference, tp.tokenizer(), LengthScorer(), phi, table, tp.PROMPTS, algo)
        return module.rollout(0)

    base, penalised = rollout(None), rollout(0.75)
    roll = penalised["roll"]
    assert torch.equal(roll.response_ids, base["roll"].response_ids)  # same draws
    last = roll.response_ids.gather(1, (roll.response_lengths - 1)[:, None]).squeeze(1)
    assert torch.equal(roll.ended, last == tp.ID["<eos>"]) and roll.ended.any() and not roll.ended.all()
    torch.testing.assert_close(penalised["task"], base["task"] - 0.75 * (~roll.ended).float(), atol=0, rtol=0)
    torch.testing.assert_close(penalised["advantages"],
                               make_algorithm({"name": "rloo", "group_size": 8}).advantages(
                                   penalised["task"], penalised["kl"])[1])


def test_missing_eos_penalty_must_be_null_or_non_negative():
    with pytest.raises(ConfigError, match=r"algo\.missing_eos_penalty=-1\.0.*subtracted"):
        make_algorithm({"name": "ppo", "missing_eos_penalty": -1.0})
    assert make_algorithm({"name": "ppo", "missing_eos_penalty": 1.0}).missing_eos_penalty == 1.0


def test_policy_log_probs_in_training_equal_the_samplers_for_a_model_with_functional_dropout():
    """Qwen2 applies attention dropout as a function of the module's mode (no ``nn.Dropout`` to zero):
    with Lightning's train mode, the teacher-forced forward of the update must still be the sampler's
    (eval-mode) policy, so the PPO ratio starts at 1 and RLOO's gradient is that of the sampled
    policy's log-probs. Control: the same forward in train mode differs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from infalign.math.transforms import Raw
    from infalign.models.generation import sequence_logprobs
    from infalign.toy import ToyWorld
    from infalign.training.ctrl import CTRLModule

    world = ToyWorld(seed=0)
    tok = world.tokenizer()
    tok.padding_side = "left"
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attention_dropout=0.5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    policy, reference = Qwen2ForCausalLM(config), Qwen2ForCausalLM(config)
    reference.load_state_dict(policy.state_dict())
    algo = make_algorithm({"name": "rloo", "group_size": 2, "prompts_per_step": 2, "max_new_tokens": 6})
    module = CTRLModule(policy, reference, tok, LengthScorer(), Raw(), None, world.prompts("train", 4), algo)
    module.train()  # as Lightning leaves it for fit
    roll = module.rollout(0)["roll"]
    rows = torch.arange(roll.response_ids.shape[0])
    lp = module.policy_logprobs(roll, rows)
    torch.testing.assert_close(lp, roll.logprobs, atol=1e-5, rtol=1e-5)
    lp.sum().backward()  # gradients flow in eval mode
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    policy.train()
    live = sequence_logprobs(policy, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    assert (live - roll.logprobs).abs().max() > 1e-3  # what the update saw before


def test_ipo_takes_the_policys_log_ratios_without_dropout():
    """A GPT-2 with dropout 0.1 (as hub checkpoints ship) that is its own reference: h = 0 exactly,
    so the first loss is (0 - 1/(2 tau))^2 = 25 at tau = 0.1 (with dropout on, h was noisy: the
    review measured loss 25.87, margin -0.085)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from infalign.data.batches import PolicyPairCollator
    from infalign.training.ipo import IPOModule

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tp.VOCAB), n_positions=32, n_embd=16, n_layer=2, n_head=2,
                     resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, initializer_range=0.5)
    policy, reference = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    reference.load_state_dict(policy.state_dict())
    module = IPOModule(policy, reference, tau=0.1, lr=1e-3)
    policy.train()  # as Lightning leaves it at the start of an epoch
    tok = tp.tokenizer()
    pairs = [(x, tok.convert_tokens_to_ids([tp.FIRST[x][0], "b1", "<eos>"]),
              tok.convert_tokens_to_ids([tp.FIRST[x][1], "b2", "<eos>"])) for x in tp.PROMPTS]
    batch = PolicyPairCollator(tok)(pairs)
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    loss = module.training_step(batch, 0)
    assert float(loss.detach()) == pytest.approx(25.0, abs=1e-9)
    assert logged["train/margin"] == pytest.approx(0.0, abs=1e-9)


def test_ppo_logs_the_rollouts_mean_over_its_updates():
    """``train/ppo_*`` and ``train/loss`` are the mean over a rollout's ``ppo_epochs x minibatches``
    updates (docs/method.md §6), not the last update's: approx_kl grows from 0 over the updates."""
    algo = make_algorithm({"name": "ppo", "beta": 0.3, "lr": 0.05, "steps": 2, "group_size": 4,
                           "prompts_per_step": 4, "max_new_tokens": 4, "grad_clip": 0.0, "ppo_epochs": 2,
                           "minibatches": 2})
    per_update: list[dict] = []
    loss_fn = algo.loss

    def recording_loss(*args):
        loss, stats = loss_fn(*args)
        per_update.append({"loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()}})
        return loss, stats

    algo.loss = recording_loss
    logged: list[dict] = []

    class Logged(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    fit_policy(tp.world(), OmegaConf.create({"seed": 0}), algo, Identity(), tp.calibration_table(),
               StageTrainers(predict=PREDICT, fit=functools.partial(TRAINERS.fit, callbacks=[Logged()])), None)
    assert len(per_update) == 2 * 4 and len(logged) == 2  # 2 rollouts x (2 epochs x 2 minibatches)
    for step, row in enumerate(logged):
        updates = per_update[4 * step: 4 * step + 4]
        for name in ("approx_kl", "clip_frac"):
            mean = sum(u[name] for u in updates) / 4
            assert row[f"train/ppo_{name}"] == pytest.approx(mean, rel=1e-5, abs=1e-7), name
        assert row["train/loss"] == pytest.approx(sum(u["loss"] for u in updates) / 4, rel=1e-5, abs=1e-7)
    assert per_update[0]["approx_kl"] == 0 and max(u["approx_kl"] for u in per_update[1:4]) > 0


def test_training_metrics_are_reduced_over_ddp_ranks(monkeypatch):
    """Under DDP each rank logs its own rollout: Lightning's ``sync_dist`` path (``strategy.reduce``)
    averages every ``train/*`` value and the progress-bar ``kl`` / ``C`` over the ranks and sums the
    throughputs ``perf/*``. Two ranks are simulated from ``on_train_start`` on: the trainer reports
    itself distributed and ``reduce`` acts as if the other rank had logged the same value + 2 (mean:
    ``v + 1``; sum: ``2 v + 2``), so every logged value must show the reduction it went through."""
    from infalign.training.ctrl import CTRLModule

    algo = make_algorithm({"name": "rloo", "beta": 0.3, "lr": 0.05, "steps": 1, "group_size": 4,
                           "prompts_per_step": 2, "max_new_tokens": 4})
    local: dict[str, float] = {}
    training_step = CTRLModule.training_step

    def recording_step(self, batch, batch_idx):  # the values before any reduction
        log_dict, log = self.log_dict, self.log
        self.log_dict = lambda metrics, **kw: (local.update({k: float(v) for k, v in metrics.items()}),
                                                log_dict(metrics, **kw))[1]
        self.log = lambda name, value, **kw: (local.update({name: float(value)}), log(name, value, **kw))[1]
        try:
            return training_step(self, batch, batch_idx)
        finally:
            self.log_dict, self.log = log_dict, log

    def other_rank(value, group=None, reduce_op="mean"):
        return value + 1 if reduce_op == "mean" else 2 * value + 2

    logged: dict[str, float] = {}

    class TwoRanks(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            monkeypatch.setattr(type(trainer._accelerator_connector), "is_distributed", property(lambda _: True))
            monkeypatch.setattr(trainer.strategy, "reduce", other_rank)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logged.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    monkeypatch.setattr(CTRLModule, "training_step", recording_step)
    fit_policy(tp.world(), OmegaConf.create({"seed": 0}), algo, Identity(), tp.calibration_table(),
               StageTrainers(predict=PREDICT, fit=functools.partial(TRAINERS.fit, callbacks=[TwoRanks()])), None)
    names = [k for k in local if k.startswith(("train/", "perf/")) or k in ("kl", "C")]
    assert {"train/reward", "train/kl", "train/loss", "perf/samples_per_s", "kl", "C"} <= set(names)
    for name in names:
        expected = 2 * local[name] + 2 if name.startswith("perf/") else local[name] + 1
        assert logged[name] == pytest.approx(expected, rel=1e-6), name


def test_a_transform_giving_non_finite_rewards_stops_the_run_naming_it():
    """Phi(C) must be finite: a NaN would silently turn every advantage (and then the weights) into NaN.
    (exp(t) past float32's range is refused before compute: test_train_pipeline's bad-config cases.)"""
    from infalign.math.transforms import Custom

    algo = make_algorithm({"name": "rloo", "beta": 0.3, "lr": 0.05, "steps": 1, "group_size": 4,
                           "prompts_per_step": 4, "max_new_tokens": 4})
    nan_above_half = Custom(lambda u: torch.where(u > 0.5, torch.nan, u), name="nan_above_half")
    with pytest.raises(FloatingPointError, match=r"nan_above_half gave non-finite rewards"):
        fit_policy(tp.world(), OmegaConf.create({"seed": 0}), algo, nan_above_half, tp.calibration_table(),
                   TRAINERS, None)


def test_bon_sft_trains_the_eval_mode_policy():
    """BoN-SFT's target is the eval-mode NLL minimiser: with a hub-style GPT-2 (dropout 0.1) its training
    loss is the eval-mode NLL exactly (control: the same module with dropout on gives another loss)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from infalign.toy import ToyWorld

    tok = ToyWorld(seed=0).tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    algo = make_algorithm({"name": "bon_sft", "n_samples": 2, "steps": 1, "prompts_per_step": 4})
    prompts = ToyWorld(seed=0).prompts("train", 4)
    best = SampledResponses([tok("a1 b1", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]] * 4, [True] * 4,
                            ["a1 b1"] * 4)
    module, loader = algo.fit_module(model, None, tok, prompts, best, best, seed=0)
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        nll = module(batch)
    module.train()  # as Lightning leaves it for fit
    torch.testing.assert_close(module.training_step(batch, 0).detach(), nll)
    module.hparams.dropout = True
    module.train()
    assert abs(float(module.training_step(batch, 0).detach()) - float(nll)) > 1e-4


def test_rloo_algorithm_advantages_are_leave_one_out_over_its_group_size():
    """group_size=4, beta=0.5, k1 KL in the reward: shaped = task - beta kl; advantage = shaped - mean of
    the other three of its group (hand-computed)."""
    algo = make_algorithm({"name": "rloo", "group_size": 4, "beta": 0.5})
    task = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    kl = torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0])
    shaped, adv = algo.advantages(task, kl)
    torch.testing.assert_close(shaped, torch.tensor([1.0, 1.0, 3.0, 6.0, 0.0, 0.0, -1.0, 4.0]))
    expected = torch.tensor([1 - 10 / 3, 1 - 10 / 3, 3 - 8 / 3, 6 - 5 / 3, 0 - 1.0, 0 - 1.0, -1 - 4 / 3, 4 + 1 / 3])
    torch.testing.assert_close(adv, expected)


def test_ppo_algorithm_uses_its_own_epochs_and_clip_eps():
    """Not the defaults (2 epochs, 2 minibatches, clip 0.2): ratio 1.15 is clipped at eps 0.1 -> loss -1.1."""
    import math

    algo = make_algorithm({"name": "ppo", "ppo_epochs": 3, "minibatches": 1, "clip_eps": 0.1})
    assert algo.epochs == 3 and algo.minibatches == 1 and algo.optimizer_steps_per_batch == 3
    new = torch.full((1, 1), math.log(1.15))
    loss, stats = algo.loss(new, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.1, rel=1e-6) and stats["clip_frac"].item() == 1.0


# ---------------------------------------------------------------- guards found by mutation testing


def test_step_prompts_are_disjoint_across_ranks_and_change_with_the_step():
    prompts = [f"p{i}" for i in range(12)]
    per_rank = [tp.as_rank(tp.ctrl_module(prompts, p=3), r, 4).step_prompts(0) for r in range(4)]
    assert sorted(torch.cat(per_rank).tolist()) == list(range(12))  # 4 ranks x 3 = every prompt once
    m = tp.ctrl_module(prompts, p=3)
    assert not all(torch.equal(m.step_prompts(0), m.step_prompts(s)) for s in range(1, 4))


def test_rollout_calibrates_each_response_against_its_own_prompts_row_and_kl_is_log_pi_minus_log_ref():
    m = tp.ctrl_module(list(tp.PROMPTS), transform=Identity(), table=tp.calibration_table(), g=6, perturb=True)
    out = m.rollout(0)
    roll = out["roll"]
    xs = [tp.PROMPTS[i] for i in m.step_prompts(0).tolist() for _ in range(6)]
    expected = []
    for x, y in zip(xs, roll.responses):
        a, b = y.split()
        expected.append(float(tp.calibrated(x)[tp.FIRST[x].index(a), tp.SECOND.index(b)]))
    torch.testing.assert_close(out["calibrated"].double(), torch.tensor(expected, dtype=torch.float64))
    from infalign.models.generation import sequence_logprobs

    lp = sequence_logprobs(m.policy, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    ref = sequence_logprobs(m.reference, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    expected_kl = ((lp - ref) * roll.response_mask).sum(-1).detach()
    assert (expected_kl.abs() > 1e-3).any()
    torch.testing.assert_close(out["kl"], expected_kl, rtol=1e-4, atol=1e-5)


def test_rollout_samples_differ_across_steps_and_ranks():
    prompts = ["x1"] * 4  # every rank and step samples the same prompt
    r0 = tp.ctrl_module(prompts, p=1, g=16)
    r1 = tp.as_rank(tp.ctrl_module(prompts, p=1, g=16), 1, 2)
    s0, s1, s0b = r0.rollout(0)["roll"].responses, r1.rollout(0)["roll"].responses, r0.rollout(1)["roll"].responses
    assert s0 != s1 and s0 != s0b


def _fit_recorded(monkeypatch, world, group_size: int) -> tuple[list[dict], dict]:
    """Two RLOO steps on the tiny world with every rollout's output and the last logged metrics recorded."""
    from infalign.training.ctrl import CTRLModule

    algo = make_algorithm({"name": "rloo", "beta": 0.3, "lr": 0.5, "steps": 2, "group_size": group_size,
                           "prompts_per_step": 2, "max_new_tokens": 4})
    outs, logged = [], {}
    rollout = CTRLModule.rollout
    monkeypatch.setattr(CTRLModule, "rollout", lambda self, step: outs.append(rollout(self, step)) or outs[-1])
    log_dict = CTRLModule.log_dict
    monkeypatch.setattr(CTRLModule, "log_dict", lambda self, metrics, **kw: (
        logged.update({k: float(v) for k, v in metrics.items()}), log_dict(self, metrics, **kw))[1])
    fit_policy(world, OmegaConf.create({"seed": 0}), algo, Log(), tp.calibration_table(),
               StageTrainers(predict=PREDICT, fit=TRAINERS.fit), None)
    return outs, logged


def test_logged_kl_and_calibrated_reward_are_the_rollouts_means(monkeypatch):
    outs, logged = _fit_recorded(monkeypatch, tp.world(), group_size=4)
    last = outs[-1]
    assert float(last["kl"].mean()) > 0  # the second step's policy has moved
    assert logged["train/kl"] == pytest.approx(float(last["kl"].mean()), rel=1e-5)
    assert logged["train/calibrated_reward"] == pytest.approx(float(last["calibrated"].mean()), rel=1e-5)
    assert logged["train/task_reward"] == pytest.approx(float(last["task"].mean()), rel=1e-5)
    assert logged["train/reward"] == pytest.approx(float(last["reward"].mean()), rel=1e-5)
    assert last["reward_cut"] is None and "train/reward_cut" not in logged  # (a scorer that reads no tokens)


class CuttingTableScorer(tp.TableScorer):
    """The table reward, saying (as a reward model past reward.max_length does) that it read responses
    starting with the first prompt's first word cut."""

    def score_and_cut(self, prompts, responses):
        return self.score(prompts, responses), torch.tensor([y.split()[0] == tp.FIRST[x][0]
                                                             for x, y in zip(prompts, responses)])


def test_the_share_of_a_steps_responses_the_reward_model_read_cut_is_logged(monkeypatch):
    world = tp.world()
    world.reward = CuttingTableScorer()
    outs, logged = _fit_recorded(monkeypatch, world, group_size=8)
    cut = outs[-1]["reward_cut"]
    assert 0 < float(cut.float().mean()) < 1 and logged["train/reward_cut"] == pytest.approx(float(cut.float().mean()))
