"""Strategies: what is trained, in which stages, with which losses (see base.py).

One file per strategy; :func:`build_strategy` builds one from an experiment config.
"""

from fusionseg.strategies.base import Stage, Strategy
from fusionseg.strategies.decoupled import DecoupledFusion
from fusionseg.strategies.early import EarlyFusion
from fusionseg.strategies.joint import JointFusion
from fusionseg.strategies.registry import STRATEGIES, build_strategy

__all__ = ["Stage", "Strategy", "EarlyFusion", "DecoupledFusion", "JointFusion", "STRATEGIES", "build_strategy"]
