"""Tensor-level merging: strategies (:mod:`tvcfs.merge.strategies`)."""

from .strategies import (  # noqa: F401
    STRATEGIES,
    MissingBaseError,
    Strategy,
    StrategyDef,
    StrategyError,
    get_strategy,
    parse_params,
    parse_strategy_spec,
)
