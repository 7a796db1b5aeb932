"""Detail checks: look-alikes with another meaning must not share an answer."""

import pytest

from cache.guards import details, mismatch


@pytest.mark.parametrize("query,candidate", [
    ("How do I reverse a list in JavaScript?", "How do I reverse a list in Python?"),
    ("How do I undo my last three git commits?", "How do I undo my last git commit?"),
    ("Plan a 5-day itinerary for Rome.", "Plan a 3-day itinerary for Rome."),
    ("Plan a five day itinerary for Rome.", "Plan a 3-day itinerary for Rome."),
    ("Regex to match anything except a US ZIP code", "Regex to match a US ZIP code"),
    ("What can I cook with spinach and rice but no chicken?", "What can I cook with chicken, spinach, and rice?"),
    ("Convert 350 degrees Celsius to Fahrenheit.", "Convert 350 degrees Fahrenheit to Celsius."),
    ("Simplify the fraction 56/42.", "Simplify the fraction 42/56."),
    ("How much should he weigh at that age?", "How much should she weigh at that age?"),
    ("Plan a 3-day itinerary for Rome on a tight budget.", "Plan a 3-day itinerary for Rome."),
    ("How much is $10,000 at 7% after 20 years?", "How much is $10,000 at 6% after 20 years?"),
    ("How do I unclog a bathroom sink with chemicals?", "How do I unclog a bathroom sink without chemicals?"),
    ("Which foods contain only protein?", "Which foods contain no protein?"),
])
def test_look_alikes_are_rejected(query, candidate):
    assert mismatch(query, candidate) is not None


@pytest.mark.parametrize("query,candidate", [
    ("What's the way to reverse a Python list?", "How do I reverse a list in Python?"),
    ("python list vs tuple - whats the difference?", "What is the difference between a list and a tuple in Python?"),
    ("How do I reverse a list in Python", "how do I reverse a list in python?"),
    ("Plan a three-day itinerary for Rome", "Plan a 3-day itinerary for Rome."),
    ("unclog a bathroom sink with no chemicals", "How do I unclog a bathroom sink without chemicals?"),
])
def test_rewordings_that_keep_the_details_pass(query, candidate):
    assert mismatch(query, candidate) is None


def test_numbers_are_normalised():
    assert details("$10,000 and 1/2 cup").numbers == details("10000 dollars, 0.5 cup").numbers
    assert details("1 cup, 1/2 cup").numbers != details("1 cup, 1 cup").numbers
