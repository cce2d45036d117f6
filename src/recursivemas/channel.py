"""Channel tests (docs/method.md#channel-tests): does what crosses between agents carry information?

A latent system whose accuracy does not drop when each input receives another input's latents has
learned a soft prompt, not communication. ``channel_test`` runs the same inputs as run, with every
slot's payload shuffled across the batch, zeroed, and (text mode) with the gold upstream text, and
reports the channel gain: accuracy as run minus accuracy shuffled, with a paired bootstrap interval
and an exact McNemar p-value, since both arms answer the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MODE_ARMS = ("none", "shuffle", "zero")  # run for every mode; gold is a text-only extra


@dataclass(frozen=True)
class Difference:
    """``a - b`` in accuracy points over paired outcomes, with a 95% paired bootstrap interval."""

    diff: float
    low: float
    high: float
    p_value: float  # exact two-sided McNemar test on the discordant pairs
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.diff:+.1f} [{self.low:+.1f}, {self.high:+.1f}] (p = {self.p_value:.2g}, n = {self.n})"


def paired_difference(a: Sequence[bool], b: Sequence[bool], seed: int = 0, n_boot: int = 10000) -> Difference:
    """Accuracy of ``a`` minus accuracy of ``b`` (points) on the same items, with its uncertainty."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired outcomes need two equal, non-empty lists; got {len(a)} and {len(b)}")
    d = np.array([int(x) - int(y) for x, y in zip(a, b)], dtype=np.int64)
    n = len(d)
    boots = d[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.quantile(boots, [0.025, 0.975])
    wins, losses = int((d == 1).sum()), int((d == -1).sum())
    return Difference(100 * float(d.mean()), 100 * float(low), 100 * float(high), _mcnemar(wins, losses), n)


def _mcnemar(wins: int, losses: int) -> float:
    k, m = min(wins, losses), wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)


def gold_texts(system: Any, record: Mapping[str, Any]) -> dict[str, str]:
    """The decoding agent's slots filled with the gold text of the agent upstream of each (its ``target`` field)."""
    out = {}
    for e in system.graph.incoming(system.graph.decoder):
        target = system.config.agents[e.src].target
        if not target or not isinstance(record.get(target), str):
            raise ValueError(f"no gold text for slot {e.slot!r}: agent {e.src!r} needs a 'target' field that the record "
                             f"holds as text (target: {target!r})")
        out[e.slot] = record[target]
    return out


@dataclass
class ChannelReport:
    """Accuracy (percent) per arm, each arm's per-input outcomes, and the channel gain per mode."""

    n: int
    rounds: int
    latent_steps: int
    accuracy: dict[str, float] = field(default_factory=dict)
    correct: dict[str, list[bool]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # mean generated tokens per input
    gain: dict[str, Difference] = field(default_factory=dict)  # mode -> as run minus shuffled

    def add(self, arm: str, correct: list[bool], tokens: float) -> None:
        self.correct[arm] = correct
        self.accuracy[arm] = 100 * sum(correct) / len(correct)
        self.tokens[arm] = tokens

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "gain"}
        data["gain"] = {mode: asdict(d) for mode, d in self.gain.items()}
        return data

    def to_markdown(self) -> str:
        """A table of the arms and one sentence per mode saying whether its channel carries information."""
        lines = [f"{self.n} inputs, {self.rounds} rounds, m = {self.latent_steps}.", "",
                 "| mode | as run | shuffled | zeroed | channel gain (as run - shuffled, 95% CI) |", "|---|---|---|---|---|"]
        for mode, gain in self.gain.items():
            lines.append(f"| {mode} | {self.accuracy[mode]:.1f}% | {self.accuracy[f'{mode}/shuffle']:.1f}% | "
                         f"{self.accuracy[f'{mode}/zero']:.1f}% | {gain} |")
        extras = [(arm, label) for arm, label in (("text/gold", "decoder with gold upstream text"), ("single", "decoder alone"))
                  if arm in self.accuracy]
        if extras:
            lines += ["", " / ".join(f"{label}: {self.accuracy[arm]:.1f}%" for arm, label in extras) + "."]
        lines.append("")
        for mode, gain in self.gain.items():
            verdict = ("carries information about the input" if gain.excludes_zero and gain.diff > 0
                       else "shows no information about the input (the interval includes 0)" if not gain.excludes_zero
                       else "hurts: another input's payload does better")
            lines.append(f"- {mode}: the channel {verdict}.")
        return "\n".join(lines)


def channel_test(
    system: Any,
    inputs: Sequence[Any],
    is_correct: Callable[[str, int], bool],
    *,
    gold: Sequence[Mapping[str, str]] | None = None,
    rounds: int | None = None,
    latent_steps: int | None = None,
    batch_size: int | None = None,
    modes: Sequence[str] = ("latent", "text"),
    seed: int = 0,
    single: bool = True,
    progress: bool = False,
) -> ChannelReport:
    """Run ``inputs`` as run, shuffled and zeroed in each mode (+ text with ``gold``, + the decoder alone).

    ``is_correct(text, i)`` grades the answer to ``inputs[i]``. Every arm answers the same inputs in the
    same batches, so outcomes pair up input by input.
    """
    rounds = system.config.rounds if rounds is None else rounds
    steps = system.config.latent_steps if latent_steps is None else latent_steps
    report = ChannelReport(len(inputs), rounds, steps)
    common = dict(rounds=rounds, latent_steps=steps, batch_size=batch_size, progress=progress)

    def arm(name: str, **kwargs) -> None:
        results = system.run(list(inputs), **common, **kwargs)
        report.add(name, [bool(is_correct(r.text, i)) for i, r in enumerate(results)],
                   sum(r.usage.generated_tokens for r in results) / len(results))

    for mode in modes:
        for probe in MODE_ARMS:
            arm(mode if probe == "none" else f"{mode}/{probe}", mode=mode, probe=probe, probe_seed=seed)
        report.gain[mode] = paired_difference(report.correct[mode], report.correct[f"{mode}/shuffle"], seed=seed)
    if gold is not None:
        arm("text/gold", mode="text", probe="gold", gold=gold)
    if single:
        arm("single", mode="single")
    return report
