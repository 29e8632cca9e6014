"""One operator contract: every operator is built by ``from_config(config, *, body=...)`` with its
config's defaults when none is given, shares one health check, and says clearly when it cannot
build its own body."""

from __future__ import annotations

import inspect

import pytest

from avatar_ops.avatar.fit import FitConfig, FittingOperator
from avatar_ops.avatar.reconstruct import ReconstructConfig, ReconstructionOperator
from avatar_ops.body.base import BodyOperator
from avatar_ops.synthesis.operator import SynthesisConfig, SynthesisOperator
from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator

OPERATORS = [(TrackingOperator, TrackingConfig), (ReconstructionOperator, ReconstructConfig), (SynthesisOperator, SynthesisConfig), (FittingOperator, FitConfig)]


@pytest.mark.parametrize(("operator", "config_class"), OPERATORS, ids=lambda x: getattr(x, "__name__", ""))
def test_every_operator_is_built_and_checked_the_same_way(operator, config_class, anny_body):
    assert issubclass(operator, BodyOperator) and operator.config_class is config_class
    params = inspect.signature(operator.from_config).parameters
    assert list(params) == ["config", "body"] and params["body"].kind is inspect.Parameter.KEYWORD_ONLY
    assert operator.check_health is BodyOperator.check_health  # one health check, not a copy each
    kwargs = {"device": "cpu"} if "device" in config_class.model_fields else {}
    op = operator.from_config(config_class(**kwargs), body=anny_body)
    assert isinstance(op.config, config_class) and op.body is anny_body
    op.check_health()
    if operator is not TrackingOperator:  # tracking's config names a body model and builds it
        with pytest.raises(ValueError, match=f"{operator.__name__}.from_config needs `body`"):
            operator.from_config(config_class())
