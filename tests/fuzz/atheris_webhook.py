"""A coverage-guided (libFuzzer, via atheris) target over the webhook's decode + mutate path.

Run it alone for as long as you like, with the corpus as seeds::

    python tests/fuzz/atheris_webhook.py -max_total_time=600 /tmp/fuzz-work tests/fuzz/corpus

Every input must end as a BadReview (the webhook's 400/413) or as a MutationResult that the
webhook can encode, whose patch applies to the pod. Anything else raises, and libFuzzer stops
with a crash file (crash-<sha1>) holding the input: add it to tests/fuzz/corpus.
``test_atheris.py`` runs it for a bounded number of iterations on every test run.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["taskcreds"]):
    import jsonpatch
    import orjson
    from taskcreds.operator import webhook
    from taskcreds.operator.config import InjectionConfig
    from taskcreds.operator.injection import MutationResult, mutate_pod

CONFIG = InjectionConfig()


def test_one_input(data: bytes) -> None:
    try:
        review = webhook.parse_review(data)
    except webhook.BadReview as exc:
        assert exc.status in (400, 413) and str(exc), "a refusal without a reason"
        return
    result = mutate_pod(review.pod, CONFIG, review.operation, namespace=review.namespace)
    assert isinstance(result, MutationResult), type(result)
    answer, outcome = webhook.review_for(review.uid, result)
    orjson.dumps(answer)
    assert answer["response"]["uid"] == review.uid
    if outcome == "injected":
        jsonpatch.apply_patch(review.pod, result.patch)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
