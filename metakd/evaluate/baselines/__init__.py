"""Few-shot baselines for the evaluation benchmark, behind one PyOD-like interface.

Every baseline is a :class:`~metakd.evaluate.methods.Detector`: ``fit(X, y, unlabeled)`` on a
task's labelled support rows ``X [n, d]`` (``y``: 0 normal, 1 anomaly) and optional unlabelled
pool ``[m, d]``, then ``decision_function(X) -> [N]`` with higher = more anomalous. They see
exactly what :class:`~metakd.detector.FewShotDetector` sees and never the rows they are
evaluated on; all scaling is fitted on the support and pool (or on the pool alone for the
unsupervised ones). Inputs are checked as the detector checks its own
(:mod:`metakd.detect.validation`).

One module per kind of baseline, each declaring its methods (``METHODS``) right below the code
that builds them; :mod:`metakd.evaluate.registry` lists the modules:

* :mod:`.pyod`: PyOD's kNN, Isolation Forest, LOF, ECOD and COPOD, each fitted on the support
  normals (``<name>-support``: what a user with only the few labelled normals would run) or on
  the unlabelled pool (``<name>-pool``: a user with no labels at all).
* :mod:`.supervised`: logistic regression and DevNet, which need labelled anomalies in the
  support (PyOD's DevNet is not used: see :class:`.supervised.DevNetDetector`).
* :mod:`.transfer`: a teacher network adapted with metakd's inner loop but not meta-trained:
  the ``scratch`` (random initialisation) and ``pooled-finetune`` (non-meta multi-task
  pretraining) ablations.
* :mod:`.common`: what they share (fitted scaling, the rows an unsupervised one is fitted on).

This package's ``__init__`` imports nothing, so that importing one baseline module loads no
other.
"""
