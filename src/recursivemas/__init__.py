"""RecursiveMAS: multi-agent LLM systems whose agents talk in embedding space."""

from recursivemas.config import ConfigError, SystemConfig, load_config
from recursivemas.links import InnerLink, LatentMASLink, OuterLink
from recursivemas.rollout import latent_rollout, reencode_rollout
from recursivemas.system import RunResult, System
from recursivemas.usage import StepUsage, Usage

__all__ = [
    "ConfigError",
    "InnerLink",
    "LatentMASLink",
    "OuterLink",
    "RunResult",
    "StepUsage",
    "System",
    "SystemConfig",
    "Usage",
    "latent_rollout",
    "load_config",
    "reencode_rollout",
]
__version__ = "0.1.0"
