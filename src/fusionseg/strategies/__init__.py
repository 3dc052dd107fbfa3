"""Strategies: what is trained, with which losses. A strategy is an ``nn.Module``
with ``forward(image) -> logits`` and ``training_loss(batch) -> (loss, logs)``; the
training loop calls only these."""

from fusionseg.strategies.early import EarlyFusion

STRATEGIES = {"early": EarlyFusion}

__all__ = ["EarlyFusion", "STRATEGIES"]
