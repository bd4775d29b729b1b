"""Evaluation: one protocol for every entry, sampled reproducibly and measured with stated feature extractors.

    from benchmark.evaluation import EvalProtocol, evaluate
    metrics = evaluate(module, EvalProtocol(num_samples=1000, guidance_scale=1.5), datamodule)

`evaluate(module, protocol, datamodule=None, *, device=None, progress=True, ckpt_path=None, stats_root=None)`
samples the entry under the protocol's sampler, steps, guidance and seeds (`EvalProtocol.apply` overrides the
entry's own settings while it runs) and returns one flat dict. Its keys are stable; with guidance the protocol
also measures without it (scale 1.0), and those keys carry the suffix ``_noguidance``:

=============================  =========================================================================================
``fd_shapes``                  Fréchet distance of the embedded Shapes CLIP's pooled image features, generated vs the
                               reference Shapes images (feature extractor ``shapes-clip``). Lower is better. Not FID.
``fid``                        Fréchet Inception distance (torch-fidelity ``inception-v3-compat``, 2048-d pool
                               features) against the reference statistics (feature extractor ``inception-v3-compat``).
``inception_score``            Inception score (10 splits), when ``protocol.inception_score``.
``precision`` / ``recall``     Improved precision / recall (k = 3 nearest-neighbour manifolds, Kynkäänniemi et al.
                               2019) in the extractor's features, when ``protocol.precision_recall``.
``fd_data``                    Fréchet distance in the features of a classifier trained on the entry's own labelled
                               data (feature extractor ``data-classifier``), with ``evaluator_val_accuracy``.
``<key>_sd``                   The evaluation-noise SD of ``<key>``: a bootstrap over the samples
                               (`benchmark.evaluation.stats`); the leaderboard combines it with training seeds.
``refused``                    Metrics refused, one line each (e.g. flip metrics of data trained without flips).
``class_accuracy``             Fraction of samples whose shape kind (read by the Shapes CLIP's class head) is the class
                               asked for; for caption entries, the kind the caption names. Shapes only.
``flip_obeyed``                Fraction of asymmetric-kind samples (arrow, crescent, L shape) facing the way the flip
                               control asked; 0.5 is chance. Entries conditioned on control metadata only.
``control_disentanglement``    For entries conditioned on control metadata: each control swept at fixed noise and
                               condition; harmonic mean of ``disentanglement_semantic_kept`` (shape kind unchanged)
                               and ``disentanglement_control_obeyed`` (mirrored on flip, larger on a smaller crop),
                               with per-sweep ``disentanglement_*`` keys (see `benchmark.evaluation.disentanglement`).
``clip_score``                 100 × mean positive cosine of image and caption embeddings (caption entries; the Shapes
                               CLIP, or the CLIP named in the protocol for real data).
``sampling_images_per_s``      Generated images per second under the protocol (with guidance; all ranks together).
``num_samples``                Images generated per guidance setting.
``guidance_scale``             The semantic guidance scale of the keys without suffix.
``eval_seconds``               Wall time of the whole evaluation (reference statistics included on a cache miss).
``protocol`` / ``protocol_id`` The protocol's fields and its stable hash (`EvalProtocol.id`).
``checkpoint`` /               The checkpoint file, its SHA-256 and training step (when known), and the code's commit
``checkpoint_sha256`` /        (``git rev-parse HEAD``), and ``code_diff``: a hash of how the packages differ from it.
``checkpoint_step`` /
``commit``
=============================  =========================================================================================

Sample ``i`` of a set draws all its randomness from ``torch.Generator().manual_seed(seed * 1_000_003 + i)`` and its
class is ``protocol.labels(K)[i] = i % K``, so a set does not depend on the batch size or the number of ranks; under
``torch.distributed`` every rank generates a disjoint slice, its extractor turns it into per-sample features, and
the metrics (`benchmark.evaluation.metrics`, torchmetrics Metrics) gather those features, never the images.
"""

from benchmark.evaluation.evaluate import evaluate
from benchmark.evaluation.frechet import frechet_distance, load_npz_stats, stats_from_features
from benchmark.evaluation.generate import GeneratedSet, generate
from benchmark.evaluation.metrics import (
    ClassAccuracy,
    CLIPScore,
    ControlDisentanglement,
    FeatureMetric,
    FlipObeyed,
    FrechetDistance,
    MetricUnavailable,
    PrecisionRecall,
)
from benchmark.evaluation.protocol import EvalProtocol, sample_seed

__all__ = [
    "CLIPScore",
    "ClassAccuracy",
    "ControlDisentanglement",
    "EvalProtocol",
    "FeatureMetric",
    "FlipObeyed",
    "FrechetDistance",
    "GeneratedSet",
    "MetricUnavailable",
    "PrecisionRecall",
    "evaluate",
    "frechet_distance",
    "generate",
    "load_npz_stats",
    "sample_seed",
    "stats_from_features",
]
