"""The margin math of the angular heads, on cosines (pure TensorFlow ops, no Keras state).

Every function takes `cos` = cos(theta) between L2-normalised embeddings and L2-normalised class
weights, shape (N, C), and returns the modified TARGET-class cosine. `margin_logits` puts it at the
label's column and scales: the margin is only ever applied from the label inside the loss, so the
model itself never sees a label.
"""

from __future__ import annotations

import math

import tensorflow as tf

_EPS = 1e-7


def arcface_target(cos: tf.Tensor, m: float, easy_margin: bool = False) -> tf.Tensor:
    """cos(theta + m) (ArcFace). cos(theta + m) stops decreasing once theta + m > pi, so, as in
    insightface, the target falls back to cos(theta) - m*sin(m) there (theta > pi - m), which keeps
    the logit monotonic in theta. With `easy_margin`, the margin is only applied where
    cos(theta) > 0."""
    cos = tf.clip_by_value(cos, -1.0 + _EPS, 1.0 - _EPS)
    sin = tf.sqrt(1.0 - tf.square(cos))
    phi = cos * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        return tf.where(cos > 0.0, phi, cos)
    th = math.cos(math.pi - m)
    mm = math.sin(math.pi - m) * m
    return tf.where(cos > th, phi, cos - mm)


def cosface_target(cos: tf.Tensor, m: float) -> tf.Tensor:
    """cos(theta) - m (CosFace / AM-Softmax)."""
    return cos - m


def sphereface_psi(cos: tf.Tensor, m: int) -> tf.Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m]: SphereFace's
    monotonically decreasing extension of cos(m theta) to [0, pi]."""
    cos = tf.clip_by_value(cos, -1.0 + _EPS, 1.0 - _EPS)
    theta = tf.acos(cos)
    k = tf.floor(m * theta / math.pi)
    k = tf.minimum(k, float(m - 1))  # theta == pi exactly belongs to the last interval
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * tf.cos(m * theta) - 2.0 * k


def sphereface_target(cos: tf.Tensor, m: int, lam: float = 5.0) -> tf.Tensor:
    """(lam * cos + psi) / (1 + lam): SphereFace's target with its softening weight lambda (the
    paper anneals lambda from 1000 down to 5; the fixed final value is used here). lam=0 is the
    pure psi."""
    psi = sphereface_psi(cos, int(m))
    return (lam * cos + psi) / (1.0 + lam)


def target_cosine(
    cos: tf.Tensor,
    head: str,
    margin: float,
    *,
    easy_margin: bool = False,
    sphereface_lambda: float = 5.0,
) -> tf.Tensor:
    if head == "arcface":
        return arcface_target(cos, margin, easy_margin)
    if head == "cosface":
        return cosface_target(cos, margin)
    if head == "sphereface":
        return sphereface_target(cos, int(margin), sphereface_lambda)
    if head == "normface":
        return cos
    raise ValueError(f"head {head!r} has no cosine margin")


def margin_logits(
    cos: tf.Tensor,
    labels: tf.Tensor,
    head: str,
    scale: float,
    margin: float,
    *,
    easy_margin: bool = False,
    sphereface_lambda: float = 5.0,
) -> tf.Tensor:
    """s * (cos with the label's column replaced by its margin target). labels: (N,) ints."""
    cos = tf.convert_to_tensor(cos, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    onehot = tf.one_hot(labels, tf.shape(cos)[-1], dtype=tf.float32) > 0.5
    target = target_cosine(
        cos, head, margin, easy_margin=easy_margin, sphereface_lambda=sphereface_lambda
    )
    return scale * tf.where(onehot, target, cos)
