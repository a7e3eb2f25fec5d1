"""The toy world's prompt counts (``data.train_prompts`` / ``data.eval_prompts``): checked before compute
against the prompts a toy world has, and drawn from it with a ConfigError naming the key. Apart from
``pipeline/settings.py`` -- whose text keys the cached policies and pools -- because it reads the toy world's
defaults, and a check that refuses a config changes no result."""

from __future__ import annotations

from infalign.errors import ConfigError, require

__all__ = ["check_toy_prompt_counts", "toy_prompt_capacity", "toy_prompts", "toy_split_bound"]


def check_toy_prompt_counts(data_cfg) -> None:
    """For ``data.source=toy``: ``data.train_prompts`` / ``data.eval_prompts`` at most their split's share of the
    toy world's prompts (:func:`toy_split_bound`) and together at most all of them (ConfigError naming the key):
    more than the world has was searched for until the search gave up (minutes to hours: it hung)."""
    if data_cfg.get("source") != "toy":
        return
    capacity = toy_prompt_capacity((data_cfg.get("toy") or {}).get("world") or {})
    if capacity is not None:
        hint = "raise data.toy.world.n_attributes or data.toy.world.prompt_len"
        for key, share in (("train_prompts", 0.8), ("eval_prompts", 0.1)):
            most = toy_split_bound(capacity, share)
            require(int(data_cfg[key]) <= most, f"data.{key}", data_cfg[key],
                    f"at most {most}: the toy world's {capacity} distinct prompts fall {share:.0%} in the "
                    f"{'train' if key == 'train_prompts' else 'test'} split, and the search for the last of them "
                    "takes long", hint)
        total = int(data_cfg.train_prompts) + int(data_cfg.eval_prompts)
        require(total <= capacity, "data.train_prompts", data_cfg.train_prompts,
                f"at most the toy world's {capacity} distinct prompts with data.eval_prompts "
                f"({data_cfg.eval_prompts}): about 80 % of them fall in the train split, 10 % in the test split",
                hint)


LARGE_WORLD = 10_000  # prompts: from here on a split's last 10 % take its search long (toy_split_bound)


def toy_split_bound(capacity: int, share: float) -> int:
    """The most prompts asked of a split holding ``share`` of the toy world's ``capacity``. A prompt falls in a
    split by a hash of its text (toy/world.py: 80 / 10 / 10), so a split's size is as a Binomial(capacity, share)'s:
    at most six standard deviations above its expected size. The world draws prompts at random until it has
    enough distinct ones of the split, so the last of them cost a coupon collector's time (review: 5,000,000 of the
    default world's ~5,070,000 train prompts, 18 minutes; 15 us a draw): in a world of :data:`LARGE_WORLD` prompts
    or more, a split is asked for at most 90 % of its expected size (its spread is then under 1 % of it; a small
    world is searched through quickly whatever is asked)."""
    most = min(capacity, int(share * capacity + 6 * (capacity * share * (1 - share)) ** 0.5) + 1)
    return min(most, int(0.9 * share * capacity)) if capacity >= LARGE_WORLD else most


def toy_prompt_capacity(world_cfg) -> int | None:
    """How many distinct prompts a toy world has: ordered choices of ``k`` of its ``n_attributes`` attribute
    words without repeats, ``k`` in ``prompt_len`` (toy/world.py), ``sum_k n! / (n - k)!`` -- 6,333,600 at the
    defaults (16 attributes, 4 to 6 words). None when the settings are not numbers (ToyWorld then refuses them)."""
    import math

    from infalign.toy.defaults import WORLD_DEFAULTS

    n, lengths = world_cfg.get("n_attributes", WORLD_DEFAULTS["n_attributes"]), world_cfg.get(
        "prompt_len", WORLD_DEFAULTS["prompt_len"])
    try:
        lo, hi = (int(v) for v in lengths)
        n = int(n)
    except (TypeError, ValueError):
        return None
    if not 1 <= lo <= hi <= n:
        return None
    return sum(math.perm(n, k) for k in range(lo, hi + 1))


def toy_prompts(world, data) -> tuple[list[str], list[str]]:
    """The toy world's ``data.train_prompts`` train and ``data.eval_prompts`` test prompts; a split with fewer
    distinct prompts than asked for is a ConfigError naming the key (it was a ValueError naming the world's
    settings, after a long search when far too many were asked for: :func:`check_toy_prompt_counts` refuses
    more than the world has before compute)."""
    out = []
    for split, key in (("train", "data.train_prompts"), ("test", "data.eval_prompts")):
        n = int(data.get(key.split(".")[1]))
        try:
            out.append(world.prompts(split, n))
        except ConfigError:
            raise
        except ValueError as exc:  # (the search for distinct prompts gave up)
            raise ConfigError(key, n, f"at most the number of distinct {split!r} prompts of the toy world (about "
                              f"{'80' if split == 'train' else '10'} % of its prompts)",
                              "raise data.toy.world.n_attributes or data.toy.world.prompt_len") from exc
    return out[0], out[1]
