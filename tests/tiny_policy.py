"""An exactly solvable RL problem for the algorithm tests: two prompts, 9 responses each.

The policy is a tabular bigram "causal LM" (``TabularLM``): the next-token logits depend only on
the current token. A fixed transition mask makes every response exactly ``a b <eos>``:

    prompt x1 -> a in {a1, a2, a3},   prompt x2 -> a in {a4, a5, a6},   a -> b in {b1, b2, b3},
    b -> <eos> (probability 1, so the eos token adds 0 to every log-ratio).

Each prompt has its own first-token set, so the family represents *every* distribution over a
prompt's 9 responses (chain rule), and the tilted target softmax(log pi_ref + Phi/beta) is
reachable. Everything the tests compare with is computed by enumeration: the policy's exact
response distribution, its exact KL from the reference, the tilted target, the best-of-N policy.

The model plugs into the real code paths: ``models.generation.sample`` (KV-cache keyword accepted
and ignored -- a bigram needs only the last token), ``sequence_logprobs``, the SFT loss of
``LMPretrainModule`` (``model(input_ids, attention_mask).logits``); the tokenizer is a word-level
``PreTrainedTokenizerFast``, like the toy world's.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from infalign.math.calibration import CalibrationTable

VOCAB = ["<pad>", "<eos>", "<unk>", "x1", "x2", "a1", "a2", "a3", "a4", "a5", "a6", "b1", "b2", "b3"]
ID = {w: i for i, w in enumerate(VOCAB)}
PROMPTS = ["x1", "x2"]
FIRST = {"x1": ["a1", "a2", "a3"], "x2": ["a4", "a5", "a6"]}
SECOND = ["b1", "b2", "b3"]

# reference logits on the allowed transitions (rows: current token, columns: next token)
REF_FIRST = {"x1": [1.0, 0.3, -0.5], "x2": [-0.2, 0.6, 0.0]}
REF_SECOND = {"a1": [0.5, 0.0, -0.5], "a2": [0.0, 0.8, 0.0], "a3": [-0.3, 0.0, 0.6],
              "a4": [0.2, -0.4, 0.1], "a5": [0.0, 0.0, 0.9], "a6": [0.7, -0.1, 0.0]}
# reward-model score r(x, "a b"): distinct per prompt, different scales per prompt (calibration
# removes them); rows a, columns b
REWARD = {"x1": [[0.1, 0.9, 0.4], [0.7, 0.2, 1.0], [0.5, 0.0, 0.8]],
          "x2": [[3.0, -1.0, 5.0], [0.0, 4.0, 1.0], [2.0, -2.0, 6.0]]}


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(ID, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def _allowed() -> torch.Tensor:
    allowed = torch.ones(len(VOCAB), len(VOCAB), dtype=torch.bool)  # pad/eos/unk rows: anything
    for x, firsts in FIRST.items():
        allowed[ID[x]] = False
        allowed[ID[x], [ID[a] for a in firsts]] = True
        for a in firsts:
            allowed[ID[a]] = False
            allowed[ID[a], [ID[b] for b in SECOND]] = True
    for b in SECOND:
        allowed[ID[b]] = False
        allowed[ID[b], ID["<eos>"]] = True
    return allowed


def reference_logits() -> torch.Tensor:
    table = torch.zeros(len(VOCAB), len(VOCAB))
    for x, firsts in FIRST.items():
        table[ID[x], [ID[a] for a in firsts]] = torch.tensor(REF_FIRST[x])
        for a in firsts:
            table[ID[a], [ID[b] for b in SECOND]] = torch.tensor(REF_SECOND[a])
    return table


class TabularLM(torch.nn.Module):
    """Bigram LM: ``logits[b, i] = table[input_ids[b, i]] + mask`` (``-inf`` off the allowed
    transitions). ``table`` is the only parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(reference_logits())
        self.register_buffer("mask", torch.where(_allowed(), 0.0, float("-inf")))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False,
                past_key_values=None, **_):
        return SimpleNamespace(logits=(self.table + self.mask)[input_ids], past_key_values=None)


def response_probs(model: TabularLM, prompt: str) -> torch.Tensor:
    """Exact ``pi(a, b | prompt)`` as a ``[3, 3]`` tensor (float64)."""
    logits = (model.table + model.mask).detach().double()
    first = torch.softmax(logits[ID[prompt]], 0)[[ID[a] for a in FIRST[prompt]]]
    second = torch.stack([torch.softmax(logits[ID[a]], 0)[[ID[b] for b in SECOND]] for a in FIRST[prompt]])
    return first[:, None] * second


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """``KL(p || q) = sum p log(p/q)`` with ``0 log 0 = 0``."""
    return float(torch.special.xlogy(p, p / q).sum())


def mean_kl(model: TabularLM, other) -> float:
    """``mean over prompts of KL(pi(.|x) || other(x))``; ``other`` maps a prompt to a ``[3, 3]``."""
    return sum(kl(response_probs(model, x), other(x)) for x in PROMPTS) / len(PROMPTS)


def reward_table(prompt: str) -> torch.Tensor:
    return torch.tensor(REWARD[prompt], dtype=torch.float64)


class TableScorer:
    """The reward model: ``score(prompts, responses)`` looks the text ``"a b"`` up in :data:`REWARD`."""

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        out = []
        for x, y in zip(prompts, responses):
            a, b = y.split()
            out.append(REWARD[x][FIRST[x].index(a)][SECOND.index(b)])
        return torch.tensor(out, dtype=torch.float32)


def calibration_table() -> CalibrationTable:
    """Each prompt's K = 9 reference 'samples' are its 9 rewards: C_hat(y) = (rank(y) + 1/2) / 9."""
    return CalibrationTable.from_rewards(torch.stack([reward_table(x).flatten() for x in PROMPTS]).float())


def calibrated(prompt: str) -> torch.Tensor:
    """``C_hat(x, y)`` of every response of ``prompt``, ``[3, 3]`` (what the calibration table gives)."""
    r = reward_table(prompt).flatten()
    return ((r.argsort().argsort().double() + 0.5) / 9).view(3, 3)


def tilted(prompt: str, phi: torch.Tensor, beta: float) -> torch.Tensor:
    """The KL-RL solution (method.md (1.2)): ``pi_ref * exp(phi / beta)``, normalised."""
    q = response_probs(reference(), prompt)
    w = q * torch.exp(phi / beta)
    return w / w.sum()


def best_of_n(prompt: str, n: int) -> torch.Tensor:
    """The best-of-n policy of the reference under the (tie-free) reward: ``F(y)^n - F(y^-)^n``."""
    q = response_probs(reference(), prompt).flatten()
    r = reward_table(prompt).flatten()
    order = r.argsort()
    cdf = q[order].cumsum(0)
    below = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    out = torch.empty_like(q)
    out[order] = cdf**n - below**n
    return out.view(3, 3)


def reference() -> TabularLM:
    return TabularLM().requires_grad_(False)


def world(train_prompts: list[str] | None = None):
    """What ``pipeline.fit.fit_policy`` reads from a world: policy (starts at the reference),
    reference, tokenizer, reward, training prompts."""
    return SimpleNamespace(policy=TabularLM(), reference=reference(), tokenizer=tokenizer(),
                           reward=TableScorer(), train_prompts=list(train_prompts or PROMPTS))


def ctrl_module(prompts=None, transform=None, table=None, p=2, g=4, perturb=False, name="rloo", **algo):
    """A CTRLModule on this tabular world: ``name``'s algorithm with P = ``p`` prompts x G = ``g`` samples, 3
    new tokens and ``algo``'s other settings; ``transform`` (default raw) and calibration ``table``;
    ``perturb``: a policy off the reference."""
    from infalign.math.transforms import Raw
    from infalign.training.algorithms import make_algorithm
    from infalign.training.ctrl import CTRLModule

    settings = {"name": name, "group_size": g, "prompts_per_step": p, "max_new_tokens": 3, **algo}
    policy = TabularLM()
    if perturb:
        with torch.no_grad():
            policy.table.add_(torch.randn(policy.table.shape, generator=torch.Generator().manual_seed(0)))
    return CTRLModule(policy, reference(), tokenizer(), TableScorer(), Raw() if transform is None else transform,
                      table, list(PROMPTS) if prompts is None else prompts, make_algorithm(settings))


def as_rank(module, rank: int, world: int, global_step: int = 0):
    """``module`` as rank ``rank`` of ``world`` at optimizer step ``global_step`` (what step_prompts,
    rl_step and the sampling seeds read from the trainer)."""
    module._trainer = SimpleNamespace(world_size=world, global_rank=rank, global_step=global_step)
    return module
