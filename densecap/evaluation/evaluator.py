"""The evaluator protocol (detectron2's ``DatasetEvaluator``), shared by every evaluator here.

An evaluator scores predictions a model already made; it never runs a model::

    evaluator.reset()                      # forget what was processed
    evaluator.process(inputs, outputs)     # per batch: the dataset dicts and the model's outputs
    metrics = evaluator.evaluate()         # a dict (gathered over ranks under torch.distributed)

The loop that runs a model and feeds evaluators is ``densecap.engine.evaluation.run_inference``
(training-time evaluation, ``tools/train_net.py --eval-only`` and ``make demo``).
:class:`DatasetEvaluators` runs several as one.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

__all__ = ["DatasetEvaluator", "DatasetEvaluators"]


class DatasetEvaluator:
    """Base class: ``reset()``, ``process(inputs, outputs)``, ``evaluate() -> dict``."""

    def reset(self) -> None:
        pass

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Any]:
        raise NotImplementedError


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators as one; ``evaluate()`` returns ``{name: that evaluator's dict}``."""

    def __init__(self, evaluators: Mapping[str, DatasetEvaluator]) -> None:
        self.evaluators = dict(evaluators)

    def reset(self) -> None:
        for e in self.evaluators.values():
            e.reset()

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        for e in self.evaluators.values():
            e.process(inputs, outputs)

    def evaluate(self) -> Dict[str, Any]:
        return {name: e.evaluate() for name, e in self.evaluators.items()}
