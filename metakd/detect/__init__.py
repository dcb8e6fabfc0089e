"""Few-shot adaptation to a new domain: a PyOD-style detector built from a meta-trained teacher.

``FewShotDetector.fit`` runs three steps on one domain's rows, each fitted only on the support
and the unlabelled pool: scale them (and build the neighbourhood profile), adapt the teacher
with the same inner loop as meta-training (:func:`metakd.meta.inner.adapt`) and calibrate its
threshold, then distil it into a small student and calibrate the student's.
``decision_function`` returns scores (higher = more anomalous), ``predict`` 0/1 labels.
The detector is a scikit-learn estimator (``get_params``, ``set_params``, ``clone``) with PyOD's
fitted attributes (``decision_scores_``, ``labels_``, ``threshold_``) and methods
(``fit_predict``, ``predict_proba``).

One module per role: :mod:`.config` (settings), :mod:`.validation` and :mod:`.inputs` (checked
rows), :mod:`.adaptation` (preprocessing and the inner loop), :mod:`.estimator`
(:class:`FewShotDetector`), :mod:`.many` (many domains at once), :mod:`.scoring`.
"""

from typing import TYPE_CHECKING, Any

from metakd.detect.config import (
    MIN_NORMALS_WITHOUT_POOL,
    SCORE_BLOCK_ROWS,
    AdaptConfig,
    ScoreConfig,
)
from metakd.detect.scoring import decision_scores, score_rows

if TYPE_CHECKING:
    from metakd.detect.estimator import FewShotDetector
    from metakd.detect.many import fit_many


def __getattr__(name: str) -> Any:
    # Imported on first use (PEP 562): the estimator is a scikit-learn estimator, and importing
    # scikit-learn costs about a second that `metakd score` of a saved detector never needs.
    if name == "FewShotDetector":
        from metakd.detect.estimator import FewShotDetector

        return FewShotDetector
    if name == "fit_many":
        from metakd.detect.many import fit_many

        return fit_many
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MIN_NORMALS_WITHOUT_POOL",
    "SCORE_BLOCK_ROWS",
    "AdaptConfig",
    "FewShotDetector",
    "ScoreConfig",
    "decision_scores",
    "fit_many",
    "score_rows",
]
