"""FewShotDetector as a scikit-learn estimator and a PyOD-style detector."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn
import torch
from helpers import normal_rows, tiny_bundle
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from metakd.data.transforms import AlignmentConfig
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.distill import DistillConfig
from metakd.errors import InputError, MetakdError
from metakd.persist import TeacherBundle

# Any feature count, projected to the teacher's 8 inputs (scikit-learn's checks vary it).
ANY_WIDTH = AlignmentConfig(kind="project", width=8)


NO_STUDENT = AdaptConfig(student=False)


def test_params_round_trip_and_clone_is_unfitted() -> None:
    det = FewShotDetector("teacher.pt", config=NO_STUDENT, contamination=0.05)
    params = det.get_params()
    assert params == {
        "teacher": "teacher.pt",
        "config": NO_STUDENT,
        "contamination": 0.05,
        "verbose": False,
    }
    assert FewShotDetector(**params).get_params() == params
    det.set_params(contamination=0.2)
    assert det.contamination == 0.2
    copy = clone(det)
    assert copy is not det and copy.get_params() == det.get_params()
    assert not hasattr(copy, "threshold_")
    # The default config is stored as given (None), so clone's identity check holds.
    assert FewShotDetector("teacher.pt").get_params()["config"] is None
    clone(FewShotDetector("teacher.pt"))


def test_clone_of_a_fitted_detector_with_a_bundle_refits_the_same() -> None:
    det = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(normal_rows(10, 1))
    copy = clone(det)
    assert isinstance(copy.teacher, TeacherBundle) and not hasattr(copy, "decision_scores_")
    X = normal_rows(7, 2)
    np.testing.assert_array_equal(
        copy.fit(normal_rows(10, 1)).decision_function(X), det.decision_function(X)
    )


def test_pyod_attributes_fit_predict_and_proba() -> None:
    X = normal_rows(12, 1)
    det = FewShotDetector(tiny_bundle(4), config=NO_STUDENT)
    labels = det.fit_predict(X, np.zeros(12))  # labelled: X is the support, all normal
    assert det.decision_scores_.shape == (12,)
    np.testing.assert_array_equal(labels, det.labels_)
    np.testing.assert_array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    # Without a student the training scores are the leave-one-out ones the threshold was fitted on.
    assert det.report_["threshold_method"] == "normal_quantile"
    assert np.sum(det.decision_scores_ <= det.threshold_) >= 0.95 * 12 - 1
    Xe = np.concatenate([normal_rows(5, 3), normal_rows(5, 4, shift=6.0)])
    for method in ("linear", "unify"):
        proba = det.predict_proba(Xe, method=method)
        assert proba.shape == (10, 2)
        assert (proba >= 0).all() and (proba <= 1).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    proba = det.predict_proba(Xe)
    train = det.decision_scores_.astype(np.float64)
    expected = (det.decision_function(Xe) - train.min()) / (train.max() - train.min())
    np.testing.assert_allclose(proba[:, 1], expected.clip(0, 1), rtol=1e-6)
    with pytest.raises(MetakdError, match="method"):
        det.predict_proba(Xe, method="bogus")  # type: ignore[arg-type]


def test_contamination_sets_the_threshold_quantile() -> None:
    X, pool = normal_rows(8, 1), normal_rows(40, 5)
    default = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(X, unlabeled=pool)
    same = FewShotDetector(tiny_bundle(4), config=NO_STUDENT, contamination=0.1).fit(
        X, unlabeled=pool
    )
    assert default.threshold_ == same.threshold_  # 0.1 is the default
    assert default.report_["threshold_method"] == "contamination"
    low = FewShotDetector(tiny_bundle(4), config=NO_STUDENT, contamination=0.3).fit(
        X, unlabeled=pool
    )
    assert low.threshold_ < default.threshold_


def test_unlabelled_rows_in_y_join_the_pool() -> None:
    X, pool = normal_rows(8, 1), normal_rows(20, 5)
    anomalies = normal_rows(2, 6, shift=5.0)
    rows = np.concatenate([X[:3], pool[:10], anomalies, X[3:], pool[10:]])
    y = np.concatenate([np.zeros(3), -np.ones(10), np.ones(2), np.zeros(5), np.full(10, np.nan)])
    Xe = normal_rows(9, 7)
    direct = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(
        np.concatenate([X[:3], anomalies, X[3:]]), np.r_[np.zeros(3), np.ones(2), np.zeros(5)], pool
    )
    mixed = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(rows, y)
    np.testing.assert_array_equal(mixed.decision_function(Xe), direct.decision_function(Xe))
    assert mixed.threshold_ == direct.threshold_
    assert mixed.report_["unlabeled_rows"] == 20 and mixed.report_["support_rows"] == 10
    # Training scores follow the order of X; the support rows' are the direct fit's.
    support = (y == 0) | (y == 1)
    np.testing.assert_array_equal(mixed.decision_scores_[support], direct.decision_scores_)
    assert np.isfinite(mixed.decision_scores_).all() and mixed.labels_.shape == (30,)
    # Passing unlabelled rows both ways: those of y come first in the pool.
    both = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(
        np.concatenate([X, pool[:10]]), np.r_[np.zeros(8), -np.ones(10)], unlabeled=pool[10:]
    )
    plain = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(X, unlabeled=pool)
    np.testing.assert_array_equal(both.decision_function(Xe), plain.decision_function(Xe))
    with pytest.raises(MetakdError, match="at least one normal"):
        FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(X, -np.ones(8), unlabeled=pool)


def test_save_to_str_and_load_score_the_same(tmp_path: Path) -> None:
    det = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(normal_rows(10, 1))
    paths = det.save(str(tmp_path / "model"))
    assert set(paths) == {"teacher"}
    loaded = FewShotDetector.load(str(tmp_path / "model"))
    Xe = np.concatenate([normal_rows(5, 3), normal_rows(5, 4, shift=6.0)])
    np.testing.assert_array_equal(loaded.decision_function(Xe), det.decision_function(Xe))
    np.testing.assert_array_equal(loaded.predict(Xe), det.predict(Xe))
    assert loaded.threshold_ == det.threshold_ and loaded.student_scorer_ is None
    with pytest.raises(MetakdError, match="decision_scores_"):
        loaded.predict_proba(Xe)
    with pytest.raises(MetakdError, match="fitted with fit"):
        loaded.save(tmp_path / "again")


def test_student_save_load_and_float64_torchscript(tmp_path: Path) -> None:
    config = AdaptConfig(distill=DistillConfig(steps=50))
    det = FewShotDetector(tiny_bundle(4, kind="svdd"), config=config).fit(
        normal_rows(10, 1), unlabeled=normal_rows(30, 5)
    )
    # With a student the training scores are the student's own: decision_function of the rows.
    X = normal_rows(10, 1)
    np.testing.assert_array_equal(det.decision_scores_, det.decision_function(X))
    paths = det.save(str(tmp_path / "model"))
    loaded = FewShotDetector.load(tmp_path / "model")
    assert loaded.student_scorer_ is not None and loaded.teacher_scorer_ is not None
    Xe = np.concatenate([normal_rows(5, 3), normal_rows(5, 4, shift=6.0)])
    np.testing.assert_array_equal(loaded.decision_function(Xe), det.decision_function(Xe))
    np.testing.assert_array_equal(
        FewShotDetector.load(paths["teacher"]).decision_function(Xe),
        det.teacher_scorer_(torch.from_numpy(Xe)).detach().numpy(),
    )
    np.testing.assert_array_equal(
        det.decision_function(Xe.astype(np.float64)), det.decision_function(Xe)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(paths["torchscript"]))
    with torch.no_grad():
        s32 = scripted(torch.from_numpy(Xe))
        s64 = scripted(torch.from_numpy(Xe.astype(np.float64)))
        p64 = scripted.predict(torch.from_numpy(Xe.astype(np.float64)))
    assert s64.dtype == torch.float32
    torch.testing.assert_close(s64, s32, rtol=0, atol=0)
    np.testing.assert_array_equal(s32.numpy(), det.decision_function(Xe))
    np.testing.assert_array_equal(p64.numpy(), det.predict(Xe))


# The scikit-learn checks that do not apply, and why. Every other check must pass.
EXPECTED_FAILED_CHECKS = {
    "check_estimators_dtypes": "passes labels 1 and 2 (a column of X); a detector's labels are "
    "0 normal / 1 anomaly / -1 unlabelled, and others are refused, never coerced",
    "check_fit2d_1feature": "passes labels 1 and 2, as check_estimators_dtypes",
    "check_estimators_overwrite_params": "compares joblib hashes of the parameters before and "
    "after fit, and a torch module (in the TeacherBundle) hashes differently in a deep copy; "
    "test_fit_leaves_the_teacher_unchanged checks its weights instead",
    "check_methods_subset_invariance": "holds scores of subsets to 1e-7 relative; in float32 a "
    "matmul's rounding may depend on its row count (the kernel it picks): with the orthonormal "
    "projection 1 of 40 probabilities moved by 7.6e-7 (it passed with the Gaussian one by "
    "chance); test_batch_invariance_within_float32_rounding holds every score to 1e-5",
}
# scikit-learn 1.6 (the oldest metakd supports: its Tags API) makes the binary target of a
# non-multi-class estimator from the first label and that label + 1 (1.7 onwards: the minimum
# and the minimum + 1), so more checks pass labels 1 and 2 there.
if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 7):
    EXPECTED_FAILED_CHECKS |= dict.fromkeys(
        (
            "check_dont_overwrite_parameters",
            "check_estimators_fit_returns_self",
            "check_readonly_memmap_input",
            "check_dtype_object",
            "check_pipeline_consistency",
            "check_estimators_pickle",
            "check_f_contiguous_array_estimator",
            "check_methods_sample_order_invariance",
            "check_dict_unchanged",
            "check_fit_check_is_fitted",
            "check_fit2d_predict1d",
        ),
        "scikit-learn < 1.7 passes labels 1 and 2 (y[0] and y[0] + 1), as check_estimators_dtypes",
    )


@parametrize_with_checks(
    [FewShotDetector(tiny_bundle(8, alignment=ANY_WIDTH), config=NO_STUDENT)],
    expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator: FewShotDetector, check: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks' own warnings (e.g. float64 casts)
        check(estimator)  # type: ignore[operator]


def test_fit_leaves_the_teacher_unchanged() -> None:
    bundle = tiny_bundle(8, alignment=ANY_WIDTH)
    before = {k: v.clone() for k, v in bundle.teacher.state_dict().items()}
    FewShotDetector(bundle, config=NO_STUDENT).fit(normal_rows(12, 1), unlabeled=normal_rows(20, 2))
    after = bundle.teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batch_invariance_within_float32_rounding() -> None:
    """A row's score does not depend on the batch it comes in, for new rows and the support's
    own. scikit-learn's check_methods_subset_invariance (above) scores the rows the detector was
    fitted on, with labelled anomalies: it failed at 4e-4 relative until distances below the
    norm expansion's resolution got a floor (``_expansion_distance``)."""
    support = normal_rows(12, 1)
    det = FewShotDetector(tiny_bundle(8, alignment=ANY_WIDTH), config=NO_STUDENT).fit(support)
    for X in (normal_rows(40, 3, shift=1.0), support):
        whole = det.decision_function(X)
        parts = np.concatenate([det.decision_function(X[i : i + 5]) for i in range(0, len(X), 5)])
        np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("contamination", [0.05, 0.1, 0.2])
def test_fit_x_alone_is_pyods_unsupervised_call(contamination: float) -> None:
    """PyOD parity: ``fit(X)`` takes ``X`` as unlabelled and contaminated: ``labels_`` flags
    the ``contamination`` share of it (PyOD's KNN flags the same share), and its scores rank
    the anomalies planted in ``X``."""
    rng = np.random.default_rng(0)
    n, planted = 600, int(600 * contamination)
    X = np.concatenate([rng.normal(size=(n - planted, 6)), rng.uniform(-6, 6, size=(planted, 6))])
    y = np.r_[np.zeros(n - planted), np.ones(planted)]
    det = FewShotDetector(tiny_bundle(6), config=NO_STUDENT, contamination=contamination).fit(X)
    assert det.report_["threshold_method"] == "contamination"
    assert det.report_["support_rows"] == NO_STUDENT.unlabeled_support
    assert abs(det.labels_.mean() - contamination) <= 0.01
    pyod_knn = pytest.importorskip("pyod.models.knn").KNN(contamination=contamination).fit(X)
    assert abs(det.labels_.mean() - pyod_knn.labels_.mean()) <= 0.01
    assert roc_auc_score(y, det.decision_scores_) > 0.9
    np.testing.assert_array_equal(det.labels_, det.decision_scores_ > det.threshold_)


def test_duplicated_support_rows_count_once() -> None:
    X = normal_rows(10, 2)
    once = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(X, np.zeros(10))
    twice = FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(
        np.concatenate([X, X]), np.zeros(20)
    )
    assert twice.report_["support_rows"] == 10 and twice.report_["support_duplicates"] == 10
    assert twice.threshold_ == once.threshold_
    np.testing.assert_array_equal(twice.decision_scores_, np.tile(once.decision_scores_, 2))
    with pytest.raises(InputError, match="exact duplicates"):
        FewShotDetector(tiny_bundle(4), config=NO_STUDENT).fit(
            np.repeat(X[:1], 20, 0), np.zeros(20)
        )


def test_a_large_support_is_adapted_on_a_bounded_subsample_and_every_row_scored() -> None:
    X = normal_rows(40, 3)
    config = dataclasses.replace(NO_STUDENT, max_support=16)
    det = FewShotDetector(tiny_bundle(4), config=config).fit(X, np.zeros(40))
    assert det.report_["support_rows"] == 16
    assert det.decision_scores_.shape == (40,) and np.isfinite(det.decision_scores_).all()
