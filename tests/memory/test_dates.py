"""resolve_relative: every relative phrase resolved once, correctly, in UTC, and a second run changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from memory.dates import format_date, format_datetime, resolve_relative


def _ts(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


MON = _ts(2023, 5, 8)  # Monday 8 May 2023
SUN = _ts(2023, 5, 7)  # Sunday 7 May 2023
SAT = _ts(2023, 5, 13)  # Saturday 13 May 2023


def _note(phrase: str, ts: float = MON) -> str:
    """The resolved note alone, for a text that is just the phrase."""
    out = resolve_relative(phrase, ts)
    assert out.startswith(f"{phrase} (") and out.endswith(")"), out
    return out[len(phrase) + 2 : -1]


# -- unchanged helpers ------------------------------------------------------------------------------


def test_format_date_has_no_zero_padding() -> None:
    assert format_date(MON) == "8 May 2023"


def test_format_datetime_is_utc() -> None:
    assert format_datetime(_ts(2023, 5, 8, 9, 5)) == "8 May 2023, 09:05 UTC"


# -- days -------------------------------------------------------------------------------------------


def test_yesterday() -> None:
    assert resolve_relative("I ran a 10k yesterday", MON) == "I ran a 10k yesterday (7 May 2023)"


def test_the_day_before_yesterday_gets_exactly_one_note() -> None:
    assert resolve_relative("the day before yesterday", MON) == "the day before yesterday (6 May 2023)"


def test_day_before_yesterday_without_the() -> None:
    assert resolve_relative("I left day before yesterday.", MON) == "I left day before yesterday (6 May 2023)."


def test_tomorrow() -> None:
    assert _note("tomorrow") == "9 May 2023"


def test_the_day_after_tomorrow_gets_exactly_one_note() -> None:
    assert resolve_relative("the day after tomorrow", MON) == "the day after tomorrow (10 May 2023)"


@pytest.mark.parametrize("phrase", ["today", "tonight", "this morning", "this afternoon", "this evening"])
def test_same_day_phrases(phrase: str) -> None:
    assert _note(phrase) == "8 May 2023"


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("a day ago", "7 May 2023"),
        ("one day ago", "7 May 2023"),
        ("two days ago", "6 May 2023"),
        ("three days ago", "5 May 2023"),
        ("four days ago", "4 May 2023"),
        ("five days ago", "3 May 2023"),
        ("six days ago", "2 May 2023"),
        ("seven days ago", "1 May 2023"),
        ("eight days ago", "30 April 2023"),
        ("nine days ago", "29 April 2023"),
        ("ten days ago", "28 April 2023"),
        ("3 days ago", "5 May 2023"),
        ("12 days ago", "26 April 2023"),
    ],
)
def test_days_ago(phrase: str, expected: str) -> None:
    assert _note(phrase) == expected


@pytest.mark.parametrize(
    ("weekday", "expected"),
    [
        ("Monday", "1 May 2023"),  # base is a Monday: strictly before, so a week back
        ("Tuesday", "2 May 2023"),
        ("Wednesday", "3 May 2023"),
        ("Thursday", "4 May 2023"),
        ("Friday", "5 May 2023"),
        ("Saturday", "6 May 2023"),
        ("Sunday", "7 May 2023"),
    ],
)
def test_last_weekday_is_the_most_recent_one_strictly_before(weekday: str, expected: str) -> None:
    assert _note(f"last {weekday}") == expected


def test_last_sunday_on_a_sunday_is_seven_days_before() -> None:
    assert resolve_relative("last Sunday", SUN) == "last Sunday (30 April 2023)"


@pytest.mark.parametrize("text", ["See you on Friday", "Saturday was fun", "Mondays are hard"])
def test_bare_weekdays_are_left_alone(text: str) -> None:
    assert resolve_relative(text, MON) == text


# -- weekends and weeks: the period, never a guessed day --------------------------------------------


def test_last_weekend() -> None:
    assert resolve_relative("last weekend", MON) == "last weekend (the weekend before 8 May 2023)"


def test_next_weekend() -> None:
    assert _note("next weekend") == "the weekend after 8 May 2023"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (MON, "the weekend of 13 May 2023"),  # Monday: the coming Saturday
        (_ts(2023, 5, 12), "the weekend of 13 May 2023"),  # Friday
        (SAT, "the weekend of 13 May 2023"),  # Saturday: base itself
        (_ts(2023, 5, 14), "the weekend of 13 May 2023"),  # Sunday: the Saturday before
        (SUN, "the weekend of 6 May 2023"),
    ],
)
def test_this_weekend_is_the_saturday_of_the_current_week(ts: float, expected: str) -> None:
    assert _note("this weekend", ts) == expected


def test_last_week() -> None:
    assert _note("last week") == "the week before 8 May 2023"


def test_next_week() -> None:
    assert _note("next week") == "the week after 8 May 2023"


def test_this_week() -> None:
    assert _note("this week") == "the week of 8 May 2023"


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("a week ago", "the week of 1 May 2023"),
        ("two weeks ago", "the week of 24 April 2023"),
        ("3 weeks ago", "the week of 17 April 2023"),
    ],
)
def test_weeks_ago(phrase: str, expected: str) -> None:
    assert _note(phrase) == expected


# -- months and years -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phrase", "expected"), [("last month", "April 2023"), ("this month", "May 2023"), ("next month", "June 2023")]
)
def test_months(phrase: str, expected: str) -> None:
    assert _note(phrase) == expected


def test_last_month_in_january_is_december_of_the_year_before() -> None:
    assert _note("last month", _ts(2024, 1, 15)) == "December 2023"


def test_next_month_in_december_is_january_of_the_next_year() -> None:
    assert _note("next month", _ts(2023, 12, 31)) == "January 2024"


def test_next_month_from_the_end_of_january() -> None:
    assert _note("next month", _ts(2023, 1, 31)) == "February 2023"


@pytest.mark.parametrize(
    ("phrase", "ts", "expected"),
    [
        ("a month ago", MON, "April 2023"),
        ("two months ago", MON, "March 2023"),
        ("a month ago", _ts(2024, 1, 10), "December 2023"),
        ("two months ago", _ts(2024, 2, 29), "December 2023"),
        ("14 months ago", _ts(2024, 1, 10), "November 2022"),
        ("one month ago", _ts(2023, 3, 31), "February 2023"),
    ],
)
def test_months_ago(phrase: str, ts: float, expected: str) -> None:
    assert _note(phrase, ts) == expected


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("last year", "2022"),
        ("this year", "2023"),
        ("next year", "2024"),
        ("a year ago", "2022"),
        ("two years ago", "2021"),
        ("10 years ago", "2013"),
    ],
)
def test_years(phrase: str, expected: str) -> None:
    assert _note(phrase) == expected


# -- boundaries and UTC ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phrase", "ts", "expected"),
    [
        ("yesterday", _ts(2024, 3, 1), "29 February 2024"),  # leap year
        ("yesterday", _ts(2023, 3, 1), "28 February 2023"),
        ("yesterday", _ts(2024, 1, 1), "31 December 2023"),
        ("yesterday", _ts(2023, 6, 1), "31 May 2023"),
        ("tomorrow", _ts(2023, 12, 31), "1 January 2024"),
        ("tomorrow", _ts(2024, 2, 28), "29 February 2024"),
        ("the day before yesterday", _ts(2024, 1, 1), "30 December 2023"),
        ("the day after tomorrow", _ts(2023, 12, 31), "2 January 2024"),
        ("last Friday", _ts(2024, 1, 1), "29 December 2023"),
        ("this weekend", _ts(2023, 12, 31), "the weekend of 30 December 2023"),
    ],
)
def test_month_and_year_boundaries(phrase: str, ts: float, expected: str) -> None:
    assert _note(phrase, ts) == expected


def test_the_day_is_the_utc_day_of_the_timestamp() -> None:
    # 01:00 on 9 May at UTC+5 is 20:00 on 8 May UTC.
    ts = datetime(2023, 5, 9, 1, 0, tzinfo=timezone(timedelta(hours=5))).timestamp()
    assert _note("yesterday", ts) == "7 May 2023"
    assert _note("today", _ts(2023, 5, 8, 23, 59)) == "8 May 2023"
    assert _note("today", _ts(2023, 5, 8, 0, 0)) == "8 May 2023"


# -- idempotence ------------------------------------------------------------------------------------

EVERY_PHRASE = [
    "yesterday", "the day before yesterday", "day before yesterday", "tomorrow", "the day after tomorrow",
    "day after tomorrow", "today", "tonight", "this morning", "this afternoon", "this evening",
    "a day ago", "two days ago", "ten days ago", "3 days ago",
    "last Monday", "last Tuesday", "last Wednesday", "last Thursday", "last Friday", "last Saturday",
    "last Sunday", "last weekend", "this weekend", "next weekend", "last week", "next week", "this week",
    "a week ago", "two weeks ago", "last month", "this month", "next month", "a month ago",
    "two months ago", "last year", "this year", "next year", "a year ago", "two years ago",
]


@pytest.mark.parametrize("phrase", EVERY_PHRASE)
@pytest.mark.parametrize("ts", [MON, SUN, _ts(2024, 1, 1)])
def test_applying_twice_equals_applying_once(phrase: str, ts: float) -> None:
    text = f"Well, {phrase} I went out."
    once = resolve_relative(text, ts)
    assert once != text
    assert once.count("(") == 1
    assert resolve_relative(once, ts) == once


def test_an_existing_note_is_kept_as_is() -> None:
    assert resolve_relative("yesterday (7 May 2023)", MON) == "yesterday (7 May 2023)"
    # Even when a later run has another base date: the note written first stays.
    assert resolve_relative("yesterday (7 May 2023)", _ts(2024, 1, 1)) == "yesterday (7 May 2023)"


# -- case, word boundaries, several phrases ---------------------------------------------------------


def test_case_of_the_phrase_is_kept() -> None:
    assert resolve_relative("Yesterday was long.", MON) == "Yesterday (7 May 2023) was long."
    assert resolve_relative("LAST WEEK", MON) == "LAST WEEK (the week before 8 May 2023)"
    assert resolve_relative("Last sunday", MON) == "Last sunday (7 May 2023)"
    assert resolve_relative("Two Days Ago", MON) == "Two Days Ago (6 May 2023)"


def test_extra_whitespace_inside_a_phrase_is_matched_and_kept() -> None:
    assert resolve_relative("last  week", MON) == "last  week (the week before 8 May 2023)"


@pytest.mark.parametrize(
    "text", ["yesterdays", "lastweek", "nextweek", "thisyear", "todays", "the weekday", "1000 days ago"]
)
def test_words_that_must_not_match(text: str) -> None:
    assert resolve_relative(text, MON) == text


def test_two_phrases_in_one_sentence() -> None:
    assert resolve_relative("yesterday I ran and next week I fly", MON) == (
        "yesterday (7 May 2023) I ran and next week (the week after 8 May 2023) I fly"
    )


@pytest.mark.parametrize("text", ["", "I like ramen with extra egg.", "My teacher is Mrs Okafor (violin)."])
def test_text_without_a_phrase_is_unchanged(text: str) -> None:
    assert resolve_relative(text, MON) == text
