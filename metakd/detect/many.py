"""Many domains at once: each fitted as :meth:`FewShotDetector.fit` does, the teacher adapted in batches."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from metakd.detect.adaptation import _InnerSetup, _Prepared
from metakd.detect.estimator import FewShotDetector
from metakd.errors import MetakdError
from metakd.threads import torch_threads


def fit_many(
    detectors: Sequence[FewShotDetector],
    data: Sequence[tuple[Any, Any, Any]],
    *,
    on_fitted: Callable[[int], None] | None = None,
) -> list[FewShotDetector | MetakdError]:
    """Fit each detector on its domain's ``(X, y, unlabeled)``, as :meth:`FewShotDetector.fit`
    does, adapting the teacher on domains of the same shapes (support rows, reference pool rows,
    with or without anomalies) in one batched inner loop (``torch.func.vmap``, the path of
    meta-training). Results equal separate fits to float rounding.

    Returns:
        Per domain, in order, the fitted detector or the :class:`MetakdError` that stopped it
        (bad rows, too few normals, ...): one domain's failure does not stop the others.
        ``on_fitted(i)`` is called as domain ``i`` finishes (progress).
    """
    # Every detector of a call shares one thread setting (the first's): torch's count is global.
    threads = detectors[0]._resolved_config().threads if detectors else None
    with torch_threads(threads):
        return _fit_many(detectors, data, on_fitted=on_fitted)


def _fit_many(
    detectors: Sequence[FewShotDetector],
    data: Sequence[tuple[Any, Any, Any]],
    *,
    on_fitted: Callable[[int], None] | None,
) -> list[FewShotDetector | MetakdError]:
    results: list[FewShotDetector | MetakdError] = []
    prepared: dict[int, _Prepared] = {}
    for i, (detector, (X, y, unlabeled)) in enumerate(zip(detectors, data, strict=True)):
        try:
            prepared[i] = detector._prepare(X, y, unlabeled)
            results.append(detector)
        except MetakdError as err:
            results.append(err)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, p in prepared.items():
        # The same teacher, inner settings and shapes: one inner loop serves them all.
        key = (id(p.bundle), json.dumps(p.cfg.inner, sort_keys=True), *p.batch_key())
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        first = prepared[members[0]]
        setup = _InnerSetup.of(first.bundle, first.cfg, first.labels)
        params = setup.run_batch([prepared[i] for i in members])
        for i, adapted in zip(members, params, strict=True):
            try:
                detectors[i]._finish(prepared[i], setup, adapted)
            except MetakdError as err:
                results[i] = err
            if on_fitted is not None:
                on_fitted(i)
    return results
