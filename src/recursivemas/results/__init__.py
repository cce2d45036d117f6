"""``recursivemas report``: the paper's comparisons at small scale, measured and written to ``docs/results.md``.

Sections, each the shape of a table or figure of the paper (arXiv 2604.25917), on the procedural arithmetic world
with the system given (by default the bundled sequential system):

- (a) accuracy and cost by rounds, RecursiveMAS (latent) vs the same agents in text (Table 2's shape);
- (b) trained vs untrained links;
- (c) the latent length ``m`` from 0 upward (the m ablation);
- (d) RecursiveMAS links vs LoRA vs full fine-tuning of the decoding agent, same data and step budget (Table 5's shape);
- (e) teacher-forced vs rollout-consistent outer training;
- (f) channel tests: as run vs shuffled vs zeroed latents (and gold upstream text), docs/method.md#channel-tests.

Modules by job: ``protocol`` (budgets, data, choosing m and rounds on validation), ``arms`` (the systems compared),
``workdir`` (locking and resuming a run's directory), ``runner`` (the stages in order), ``stats`` (accuracy and
intervals), ``tables`` (compute each section), ``plots`` and ``markdown`` (render them). The CLI is
``recursivemas.commands.report``.
"""

from recursivemas.results.protocol import BUDGETS, Budget, choose_on_validation, default_system_path, world_examples
from recursivemas.results.runner import run_report

__all__ = ["BUDGETS", "Budget", "choose_on_validation", "default_system_path", "run_report", "world_examples"]
