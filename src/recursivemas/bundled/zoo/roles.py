"""The role prompts of the bundled systems, defined once.

The zoo agents are pretrained on exactly these prompts and the bundled system files
(``configs/{sequential,distillation,mixture,deliberation}.yaml``) copy them, so an agent sees at
inference the text it was trained on. A prompt holds ``{question}`` and slot markers such as
``<<PLAN>>``; the engine fills a marker with the upstream agent's text (text mode), with
latent vectors (latent mode) or with nothing (no input yet, or a single agent alone).

The clerk (the roundtrip system) knows the facts but sees no question: it can only answer a request that
names the fact, which reaches it as feedback from the second round on (docs/zoo.md#roundtrip).

Roles that *know* (planner, expert, the domain experts, the reflector) learn the world's hidden facts
(``recursivemas.bundled.world.FACTS``) and open their message with them; the other roles never see the world's
table (they are pretrained on ``facts="random"`` problems) and must read the facts from their slots.

Each marker sits alone on its line, so tokenizing the prompt whole or in pieces split at the
markers gives the same tokens (the zoo tokenizers never merge across a newline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recursivemas.markers import FIELD_RE, SLOT_RE
from recursivemas.bundled.world import DOMAINS



@dataclass(frozen=True)
class Role:
    """One part an agent plays: its prompts, the record field it learns to write, and its slots."""

    name: str
    system_prompt: str
    prompt: str
    target: str  # the world record field this role writes
    slots: dict[str, str] = field(default_factory=dict)  # slot -> record field with the upstream role's gold text
    knows: bool = False  # pretrained on the world's facts (True) or on random ones it must read from its slots (False)
    # Answers requests (the clerk): it never sees the question; its slot names a fact (drawn from facts="random"
    # problems, so any item), and it writes the world's value; with nothing asked (an empty slot) it writes nothing.
    requests: bool = False

    def user_prompt(self, record: dict[str, Any], fill: dict[str, str] | None = None) -> str:
        """The user message for `record`, each slot replaced by ``fill[slot]`` (missing slots: empty)."""
        fill = fill or {}
        text = FIELD_RE.sub(lambda m: str(record[m.group(1)]), self.prompt)  # {question}, or another field
        return SLOT_RE.sub(lambda m: fill.get(m.group(1), ""), text)

    def gold_fill(self, record: dict[str, Any]) -> dict[str, str]:
        """Every slot filled with the gold text of the role upstream of it (how text mode looks when all goes well)."""
        return {slot: record[src] for slot, src in self.slots.items()}

    def facts_fill(self, record: dict[str, Any], words: int | None = None) -> dict[str, str]:
        """Every slot holding only the first line of the upstream gold text (the facts), or its first ``words`` words:
        what a few latent steps carry."""
        cut = {slot: record[src].split("\n", 1)[0] for slot, src in self.slots.items()}
        return cut if words is None else {slot: " ".join(text.split()[:words]) for slot, text in cut.items()}

    def messages(self, record: dict[str, Any], fill: dict[str, str] | None = None) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": self.user_prompt(record, fill)}]


ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role(
            "planner",
            "You are the planner. List the steps.",
            "Question: {question}\nLast answer:\n<<FEEDBACK>>\nPlan:",
            target="plan",
            slots={"FEEDBACK": "solution"},
            knows=True,
        ),
        Role(
            "critic",
            "You are the critic. Check the plan and write equations.",
            "Question: {question}\nPlan:\n<<PLAN>>\nEquations:",
            target="refined_plan",
            slots={"PLAN": "plan"},
        ),
        Role(
            "solver",
            "You are the solver. Work it out.",
            "Question: {question}\nEquations:\n<<REFINED_PLAN>>\nSolution:",
            target="solution",
            slots={"REFINED_PLAN": "refined_plan"},
        ),
        Role(
            "expert",
            "You are the expert. Explain every step.",
            "Question: {question}\nStudent answer:\n<<FEEDBACK>>\nExplanation:",
            target="expert",
            slots={"FEEDBACK": "solution"},
            knows=True,
        ),
        Role(
            "learner",
            "You are the learner. Work it out.",
            "Question: {question}\nExpert notes:\n<<EXPERT>>\nSolution:",
            target="solution",
            slots={"EXPERT": "expert"},
        ),
        # Mixture: one expert per world domain (agent names = domains, so the pattern's slots are
        # MONEY, COUNTING, TIME); each knows its own domain's facts and declines the others.
        *(
            Role(
                domain,
                f"You are the {domain} expert. Solve {domain} problems only.",
                "Question: {question}\nLast summary:\n<<FEEDBACK>>\nNotes:",
                target=f"{domain}_notes",
                slots={"FEEDBACK": "solution"},
                knows=True,
            )
            for domain in DOMAINS
        ),
        # The summarizer reads one slot line per expert: the expert of the problem's domain gives the fact.
        Role(
            "summarizer",
            "You are the summarizer. Work it out.",
            "Question: {question}\nExpert notes:\n<<MONEY>>\n<<COUNTING>>\n<<TIME>>\nSolution:",
            target="solution",
            slots={d.upper(): f"{d}_notes" for d in DOMAINS},
        ),
        # Deliberation: the reflector is the planner role verbatim, so the zoo's planner (qwen-moe)
        # plays it on the text it was pretrained on; its feedback now comes from the tool-caller.
        Role(
            "reflector",
            "You are the planner. List the steps.",
            "Question: {question}\nLast answer:\n<<FEEDBACK>>\nPlan:",
            target="plan",
            slots={"FEEDBACK": "tool_call"},
            knows=True,
        ),
        # Roundtrip: the asker reads the question and names the fact it lacks; the clerk knows the facts but sees no
        # question (only its desk, the domain), so it can answer only once the request has reached it.
        Role(
            "asker",
            "You are the asker. Name the missing fact.",
            "Question: {question}\nNeed:",
            target="request",
        ),
        Role(
            "clerk",
            "You are the clerk. Look up the facts.",
            "Desk: {domain}\nRequest:\n<<REQUEST>>\nFacts:",
            target="world_facts",
            slots={"REQUEST": "request"},
            knows=True,
            requests=True,
        ),
        Role(
            "tool_caller",
            "You are the tool caller. Write a python program.",
            "Question: {question}\nReflection:\n<<REFLECTION>>\nProgram:",
            target="tool_call",
            slots={"REFLECTION": "plan"},
        ),
    )
}

# The roles whose text the tokenizers are trained on (fixed, so adding roles never changes a rebuilt tokenizer).
BASE_ROLES = ("planner", "critic", "solver", "expert", "learner")
# Which role each agent of a bundled pattern plays (the YAML files use the same names).
PATTERN_ROLES = {
    "sequential": ("planner", "critic", "solver"),
    "distillation": ("expert", "learner"),
    "mixture": (*DOMAINS, "summarizer"),
    "deliberation": ("reflector", "tool_caller"),
    "roundtrip": ("asker", "clerk", "solver"),
}
# The roles that write a final answer ending in ``#### n`` when run alone.
ANSWER_ROLES = ("solver", "learner", "summarizer", "tool_caller")


def render_prompt(tokenizer, role: Role, record: dict[str, Any], fill: dict[str, str] | None = None) -> str:
    """The full text prompt (chat template applied, generation prompt added) as the engine renders it in text mode."""
    return tokenizer.apply_chat_template(role.messages(record, fill), add_generation_prompt=True, tokenize=False)


def training_text(tokenizer, role: Role, record: dict[str, Any], fill: dict[str, str] | None = None,
                  target: str | None = None) -> tuple[str, str]:
    """(prompt, target + eos): the pretraining text of one role on one record, split where the loss weight changes
    (``target``: another text than the role's record field, e.g. the clerk's empty answer to an empty request)."""
    return render_prompt(tokenizer, role, record, fill), (record[role.target] if target is None else target) + tokenizer.eos_token
