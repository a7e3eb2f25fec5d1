"""A rule-based reward for tests/test_custom_reward.py: ``scale`` x the response's number of words."""

from __future__ import annotations

CALLS: list[int] = []  # rows scored per call, by every instance (what a run asked of it)


class LengthScorer:
    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        CALLS.append(len(responses))
        return [self.scale * len(r.split()) for r in responses]


class PromptRecorder:
    """Scores 0 and keeps the prompts it was given (what a scorer reads)."""

    seen: list[str] = []

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        PromptRecorder.seen = list(prompts)
        return [0.0] * len(responses)
