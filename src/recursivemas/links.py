"""RecursiveLink modules (docs/method.md#links).

Parameter names match the public release so its state dicts load unchanged:
inner ``proj1, proj2, pre_ln, post_ln``; outer ``proj1, proj2, ln_source, ln_target, residual_proj``.
``kind`` picks the variant: ``ln_res`` (release default), ``res`` (the paper's equations, no
LayerNorm) or ``linear`` (a single projection, for ablations).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from recursivemas.validation import ConfigError

LINK_KINDS = ("ln_res", "res", "linear")


def _check_kind(kind: str) -> None:
    if kind not in LINK_KINDS:
        raise ValueError(f"unknown link kind {kind!r}; choose one of {', '.join(LINK_KINDS)}")


class InnerLink(nn.Module):
    """``R_in``: maps an agent's last-layer hidden state back into its own input-embedding space (d -> d)."""

    def __init__(self, hidden_size: int, kind: str = "ln_res") -> None:
        super().__init__()
        _check_kind(kind)
        self.hidden_size, self.kind = hidden_size, kind
        self.proj1 = nn.Linear(hidden_size, hidden_size)
        if kind != "linear":
            self.proj2 = nn.Linear(hidden_size, hidden_size)
        if kind == "ln_res":
            self.pre_ln = nn.LayerNorm(hidden_size)
            self.post_ln = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.proj1.weight.dtype)
        if self.kind == "linear":
            return self.proj1(x)
        u = self.pre_ln(x) if self.kind == "ln_res" else x
        y = x + self.proj2(F.gelu(self.proj1(u)))  # residual on the raw input, as released
        return self.post_ln(y) if self.kind == "ln_res" else y

    @staticmethod
    def num_params_formula(d: int, kind: str = "ln_res") -> int:
        return {"ln_res": 2 * d * d + 6 * d, "res": 2 * d * d + 2 * d, "linear": d * d + d}[kind]

    @torch.no_grad()
    def ridge_init_(self, source: torch.Tensor, target: torch.Tensor, lam: float = 1e-2) -> "InnerLink":
        """The inner loop's objective solved by least squares (``linear`` links only): states -> next tokens' embeddings."""
        if self.kind != "linear":
            raise ValueError(f"a least-squares inner link needs links.kind: linear (this one is {self.kind!r}); train it with the inner loop instead")
        ridge_fit_(self.proj1, source, target, lam)
        return self


class OuterLink(nn.Module):
    """``R_out``: maps agent i's latents (width a) into agent j's input-embedding space (width b)."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "ln_res") -> None:
        super().__init__()
        _check_kind(kind)
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, kind
        self.residual_proj = nn.Linear(in_dim, out_dim)
        if kind != "linear":
            self.proj1 = nn.Linear(in_dim, 2 * out_dim)
            self.proj2 = nn.Linear(2 * out_dim, out_dim)
        if kind == "ln_res":
            self.ln_source = nn.LayerNorm(in_dim)
            self.ln_target = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.residual_proj.weight.dtype)
        if self.kind == "linear":
            return self.residual_proj(x)
        u = self.ln_source(x) if self.kind == "ln_res" else x
        y = self.proj2(F.gelu(self.proj1(u))) + self.residual_proj(x)
        return self.ln_target(y) if self.kind == "ln_res" else y

    @staticmethod
    def num_params_formula(a: int, b: int, kind: str = "ln_res") -> int:
        return {
            "ln_res": 3 * a * b + 2 * b * b + 2 * a + 6 * b,
            "res": 3 * a * b + 2 * b * b + 4 * b,
            "linear": a * b + b,
        }[kind]

    @torch.no_grad()
    def ridge_init_(self, source: torch.Tensor, target: torch.Tensor, lam: float = 1e-2) -> "OuterLink":
        """Least-squares fit of ``residual_proj`` from paired (source hidden, target embedding) rows.

        Randomly initialised outer links start far from useful; this gives the residual path a
        sensible map before training (docs/method.md#training). The MLP branch is zeroed so the link starts
        as the fitted affine map (before ``ln_target``).
        """
        ridge_fit_(self.residual_proj, source, target, lam)
        if self.kind != "linear":
            self.proj2.weight.zero_()
            self.proj2.bias.zero_()
        return self


@torch.no_grad()
def ridge_fit_(linear: nn.Linear, source: torch.Tensor, target: torch.Tensor, lam: float = 1e-2) -> nn.Linear:
    """Set ``linear`` to the ridge-regression map from ``source`` rows to ``target`` rows (with a bias, ``lam`` relative to the row count)."""
    source = source.reshape(-1, linear.in_features).double()
    target = target.reshape(-1, linear.out_features).double()
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"ridge init needs paired rows: got {source.shape[0]} sources, {target.shape[0]} targets")
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    gram = s.T @ s + lam * s.shape[0] * torch.eye(linear.in_features, dtype=s.dtype)
    w = torch.linalg.solve(gram, s.T @ t)  # [in, out]
    linear.weight.copy_(w.T.to(linear.weight.dtype))
    linear.bias.copy_((mu_t - mu_s @ w).to(linear.bias.dtype))
    return linear


class LatentMASLink(nn.Module):
    """Training-free map for one model (LatentMAS, docs/method.md#baselines).

    ``h -> h @ W_a`` with ``W_a = (W_out^T W_out + lam I)^-1 W_out^T W_in``, rescaled so outputs have
    the mean input-embedding norm. Usable wherever an ``InnerLink`` is expected. ``W_in`` is the table as
    the model's embedding module outputs it: Gemma's multiplies the raw table by sqrt(hidden), and a
    raw-table norm would make every thought about 25x too small on gemma-3-270m.
    """

    def __init__(self, w_a: torch.Tensor, target_norm: float) -> None:
        super().__init__()
        self.register_buffer("w_a", w_a, persistent=False)  # recomputed from the model at load: never stored in link files
        self.target_norm = float(target_norm)
        self.hidden_size = w_a.shape[0]

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, lam: float = 1e-5) -> "LatentMASLink":
        embedding = model.get_input_embeddings()
        scale = _embedding_scale(embedding)  # the table as the model sees it, [V, d]
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings; the LatentMAS map needs an LM head")
        w_out = head.weight.detach().float()  # [V, d]
        d = w_out.shape[1]
        # float32 products, double solve: a 262k-row vocabulary (Gemma) takes seconds, not half a minute, in float32.
        gram = (w_out.T @ w_out).double()
        tied = head.weight is embedding.weight
        cross = gram if tied else (w_out.T @ embedding.weight.detach().float()).double()
        w_a = torch.linalg.solve(gram + lam * torch.eye(d, dtype=gram.dtype), cross) * scale
        target_norm = embedding.weight.detach().float().norm(dim=-1).mean().item() * scale
        return cls(w_a.float(), target_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.w_a.dtype) @ self.w_a
        return y * (self.target_norm / y.norm(dim=-1, keepdim=True).clamp_min(1e-6))


@torch.no_grad()
def _embedding_scale(embedding: nn.Module, probe: int = 64) -> float:
    """The factor the embedding module applies on top of its table (1 for plain tables, sqrt(d) for Gemma)."""
    ids = torch.arange(min(probe, embedding.weight.shape[0]), device=embedding.weight.device)
    raw = embedding.weight[ids].double().norm(dim=-1)
    seen = embedding(ids).double().norm(dim=-1)
    keep = raw > 0
    return float((seen[keep] / raw[keep]).mean()) if keep.any() else 1.0


def load_release_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a link checkpoint from the public release (``.pt``) without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"link checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a .pt, or holding objects weights_only refuses
        raise ConfigError(f"links.release file {path} cannot be read as plain tensors ({type(err).__name__}: {str(err)[:200]})") from err
    for key in ("state_dict", "model", "adapter"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} is not a link state dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}
