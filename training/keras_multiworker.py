"""Keras 3's `model.fit` under MultiWorkerMirroredStrategy with more than one worker.

Keras 3 (checked up to 3.15) fails there at the first step in two places (keras-team/keras#20585,
tensorflow/tensorflow#72388):

1. Before the first step it takes one batch to build the model's metrics and averages it over all
   workers with `strategy.reduce("MEAN", (x, y), axis=None)`, which MultiWorkerMirroredStrategy
   cannot do for a tuple: "Attempt to convert a value (PerReplica...) to a Tensor". Only the
   batch's shapes are used, so this worker's own batch is taken instead.
2. Each step's metrics (scalars) are averaged with `strategy.reduce("MEAN", v, axis=0)`, which
   fails for a scalar ("Invalid reduction dimension 0"). They are averaged over the replicas
   instead (axis=None), which is what MirroredStrategy does on one host: every worker gets the
   same loss, so the callbacks (best epoch, learning-rate cuts, early stop) agree on all workers.

`multiworker_fit` applies both for the duration of a `fit` and only to a multi-worker strategy,
and says which Keras internals it missed if a later Keras moved them.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def multiworker_fit(model: Any, strategy: Any) -> Iterator[None]:
    """Within the block, `model.fit`/`evaluate` work under a multi-worker `strategy`."""
    import keras
    import tensorflow as tf

    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError as exc:  # pragma: no cover - depends on the installed Keras
        raise RuntimeError(
            _moved(keras.__version__, "keras.src.backend.tensorflow.trainer")
        ) from exc
    original: Callable[..., Any] | None = getattr(tf_trainer, "reduce_per_replica", None)
    if original is None or not hasattr(model, "_maybe_symbolic_build"):
        raise RuntimeError(_moved(keras.__version__, "reduce_per_replica/_maybe_symbolic_build"))

    def local(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local, next(batches))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values: Any, strat: Any, reduction: str = "auto") -> Any:
        if strat is strategy and reduction in ("auto", "mean"):

            def mean(v: Any) -> Any:
                if isinstance(v, tf.distribute.DistributedValues):
                    return strat.reduce("MEAN", v, axis=None)
                return v

            return tf.nest.map_structure(mean, values)
        return original(values, strat, reduction=reduction)

    model._maybe_symbolic_build = types.MethodType(symbolic_build, model)
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        del model._maybe_symbolic_build


def _moved(version: str, what: str) -> str:
    return (
        f"Keras {version} no longer has {what}, which multi-worker training works around "
        "(training/keras_multiworker.py): install a Keras this was tested with (3.x up to 3.15), "
        "or train on one host"
    )
