import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship.operator.durations import format_duration, parse_duration

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("2m", 120),
        ("1h30m", 5400),
        ("1h0m5s", 3605),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("0s", 0),
        (" 45s ", 45),
        (30, 30),
        (0, 0),
        (2.5, 2.5),
        ("30", 30),  # an integer of seconds, as text
    ],
)
def test_parses_go_style_durations_and_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "s", "1.5s", "30 s", "-5s", "5d", "1h30", "ten seconds", -1, True])
def test_rejects_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_the_error_says_what_a_duration_looks_like() -> None:
    with pytest.raises(ValueError, match=r"'soon' is not a duration such as 30s, 2m or 1h30m"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (30, "30s"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (3605, "1h5s"), (0.25, "250ms")],
)
def test_formats_the_short_form_a_user_writes(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNIT_SECONDS))), min_size=1, max_size=4)
)
def test_a_compound_duration_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * UNIT_SECONDS[unit] for n, unit in parts))


@given(st.integers(0, 10 * 24 * 3600))
def test_whole_seconds_survive_formatting(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(1, 999))
def test_milliseconds_survive_formatting(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)
