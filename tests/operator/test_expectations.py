from modelship.operator.expectations import Expectations, is_at_least


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pending_until_the_cache_shows_our_write() -> None:
    expectations = Expectations(ttl=30, clock=Clock())
    expectations.expect("ref", "12")
    assert expectations.pending("ref", "11")
    assert expectations.pending("ref", None)
    assert not expectations.pending("ref", "12")
    # Once seen, a later edit by someone else is no longer covered: it gets repaired.
    assert not expectations.pending("ref", "13")


def test_a_later_version_meets_the_expectation_too() -> None:
    # Kopf may deliver only the last of a burst of events (our write, then a status update).
    expectations = Expectations(ttl=30, clock=Clock())
    expectations.expect("ref", "12")
    expectations.observe("ref", "11")
    assert expectations.pending("ref", "11")
    expectations.observe("ref", "15")
    assert not expectations.pending("ref", "11")


def test_resource_versions_compare_as_integers() -> None:
    assert is_at_least("100", "99")
    assert is_at_least("12", "12")
    assert not is_at_least("99", "100")
    assert not is_at_least(None, "1")
    # Anything that is not a canonical integer only compares equal.
    assert is_at_least("abc", "abc") and not is_at_least("abd", "abc")
    assert not is_at_least("012", "11")


def test_a_deletion_is_pending_until_the_object_is_gone() -> None:
    expectations = Expectations(clock=Clock())
    expectations.expect("ref", None)
    assert expectations.pending("ref", "5")
    assert not expectations.pending("ref", None)


def test_expectations_expire() -> None:
    clock = Clock()
    expectations = Expectations(ttl=30, clock=clock)
    expectations.expect("ref", "12")
    clock.now = 31
    assert not expectations.pending("ref", "11")
    assert len(expectations) == 0


def test_forgetting_a_model_deployment_drops_its_expectations() -> None:
    expectations = Expectations(clock=Clock())
    expectations.expect((("ml", "iris"), "Deployment", "iris-a"), "1")
    expectations.expect((("ml", "other"), "Deployment", "other-a"), "1")
    expectations.forget(("ml", "iris"))
    assert len(expectations) == 1


def test_a_deletion_settles_an_expected_version() -> None:
    # Our write's own event may be handled before the expectation is recorded; if the object
    # is then deleted, nothing would ever show that version.
    expectations = Expectations(clock=Clock())
    expectations.expect("ref", "12")
    expectations.observe("ref", None)
    assert not expectations.pending("ref", None)
