"""RecursiveMAS: multi-agent LLM systems whose agents talk in embedding space."""

from recursivemas.links import InnerLink, LatentMASLink, OuterLink

__all__ = ["InnerLink", "OuterLink", "LatentMASLink"]
__version__ = "0.1.0"
