"""A system's directed graph: agents, edges that carry outer links into named slots, one decoding agent.

Forward edges run within a round and must form a DAG; feedback edges carry an agent's latents into
the next round (edges leaving the decoding agent are always feedback: it only speaks at the end).
"""

from __future__ import annotations

from dataclasses import dataclass

from recursivemas.config import ConfigError, EdgeConfig, SystemConfig
from recursivemas.markers import prompt_slots


def edge_name(edge: EdgeConfig) -> str:
    """The outer link's name, used as its key in checkpoints."""
    return f"{edge.src}->{edge.dst}"


@dataclass
class Graph:
    agents: list[str]
    edges: list[EdgeConfig]
    decoder: str

    @classmethod
    def from_config(cls, config: SystemConfig) -> "Graph":
        edges = [EdgeConfig(e.src, e.dst, e.slot, e.feedback or e.src == config.decoder) for e in config.edges]
        graph = cls(list(config.agents), edges, config.decoder)
        graph.validate({name: a.prompt for name, a in config.agents.items()})
        return graph

    @property
    def forward_edges(self) -> list[EdgeConfig]:
        return [e for e in self.edges if not e.feedback]

    @property
    def feedback_edges(self) -> list[EdgeConfig]:
        return [e for e in self.edges if e.feedback]

    def incoming(self, agent: str) -> list[EdgeConfig]:
        return [e for e in self.edges if e.dst == agent]

    def outgoing(self, agent: str, feedback: bool | None = None) -> list[EdgeConfig]:
        return [e for e in self.edges if e.src == agent and (feedback is None or e.feedback == feedback)]

    def order(self) -> list[str]:
        """Agents in topological order of the forward edges (ties keep the file's order)."""
        remaining, done = list(self.agents), []
        while remaining:
            ready = [a for a in remaining if all(e.src in done for e in self.forward_edges if e.dst == a)]
            if not ready:
                raise ConfigError(
                    f"edges form a cycle among {', '.join(remaining)} within one round; mark the edge that closes "
                    f"the loop with 'feedback: true' (feedback edges carry latents into the next round)"
                )
            done.append(ready[0])
            remaining.remove(ready[0])
        return done

    def stages(self) -> list[list[str]]:
        """Agents grouped by depth in the forward DAG: each stage needs only earlier stages (and feedback)."""
        depth: dict[str, int] = {}
        for agent in self.order():
            depth[agent] = max((depth[e.src] + 1 for e in self.forward_edges if e.dst == agent), default=0)
        return [[a for a in depth if depth[a] == d] for d in range(max(depth.values()) + 1)]

    def ancestors(self, agent: str) -> set[str]:
        """Agents whose latents reach ``agent`` within one round (forward edges only), itself included."""
        found, frontier = {agent}, [agent]
        while frontier:
            node = frontier.pop()
            for e in self.forward_edges:
                if e.dst == node and e.src not in found:
                    found.add(e.src)
                    frontier.append(e.src)
        return found

    def active(self, agent: str, final_round: bool) -> bool:
        """Whether ``agent`` runs in a round: in the final round only the decoder's ancestors matter."""
        if final_round:
            return agent in self.ancestors(self.decoder)
        return bool(self.outgoing(agent))  # an agent with nothing to send has no work before the end

    def validate(self, prompts: dict[str, str]) -> None:
        known = set(self.agents)
        if self.decoder not in known:
            raise ConfigError(f"decoding agent {self.decoder!r} is not one of the agents ({', '.join(self.agents)})")
        for e in self.edges:
            for end in (e.src, e.dst):
                if end not in known:
                    raise ConfigError(f"edge {edge_name(e)} names unknown agent {end!r}; agents are {', '.join(self.agents)}")
            if e.src == e.dst:
                raise ConfigError(f"edge {edge_name(e)} loops an agent onto itself; latents already recur inside an agent")
            if e.slot not in prompt_slots(prompts[e.dst]):
                raise ConfigError(
                    f"edge {edge_name(e)} fills slot <<{e.slot}>>, but {e.dst}'s prompt has no such marker; "
                    f"add <<{e.slot}>> to agents.{e.dst}.prompt"
                )
        names = [edge_name(e) for e in self.edges]
        if len(set(names)) != len(names):
            raise ConfigError("two edges join the same pair of agents; merge them into one edge")
        for agent, prompt in prompts.items():
            slots = prompt_slots(prompt)
            filled = [e.slot for e in self.incoming(agent)]
            for slot in set(slots):
                if slots.count(slot) > 1:
                    raise ConfigError(f"agents.{agent}.prompt has marker <<{slot}>> more than once")
                if slot not in filled:
                    raise ConfigError(f"agents.{agent}.prompt has marker <<{slot}>> but no edge fills it; add an edge or remove the marker")
            for slot in set(filled):
                if filled.count(slot) > 1:
                    raise ConfigError(f"two edges fill slot <<{slot}>> of {agent}; give each edge its own slot")
        self.order()  # raises on a cycle of forward edges
        reach = self.ancestors(self.decoder)
        for agent in self.agents:
            if agent not in reach and not any(e.dst in reach for e in self.outgoing(agent)):
                raise ConfigError(f"agent {agent!r} is not connected to the decoding agent {self.decoder!r}; add an edge or remove it")
