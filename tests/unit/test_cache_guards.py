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
    assert details("$10,000 and 1/2 cup").numbers == details("10000 dollars, half a cup").numbers
    assert details("$10,000 and 1/2 cup").ratios == details("10000 dollars, half a cup").ratios == ("1/2",)
    assert mismatch("1 cup, 1/2 cup", "1 cup, 1 cup") == "numbers"


# ---- WordNet-aware content checks (cache/lexicon.py) -------------------------------------------

from cache import lexicon  # noqa: E402

wordnet = pytest.mark.skipif(lexicon.load() is None, reason="WordNet not installed (scripts/setup.sh installs it)")


@wordnet
@pytest.mark.parametrize("query,candidate", [
    ("Is it safe to eat uncooked cookie dough?", "Is it safe to eat raw cookie dough?"),
    ("Is Python quicker than C++ for numeric loops?", "Is Python faster than C++ for numeric loops?"),
    ("What is the reason for letting meat rest after cooking?", "Why should meat rest after cooking?"),
])
def test_a_synonym_keeps_the_question(query, candidate):
    assert mismatch(query, candidate) is None


@wordnet
@pytest.mark.parametrize("query,candidate", [
    ("How do I increase the font size in VS Code?", "How do I decrease the font size in VS Code?"),
    ("Should I buy a house now?", "Should I sell a house now?"),
    ("Is Python slower than C++ for numeric loops?", "Is Python faster than C++ for numeric loops?"),
])
def test_an_antonym_changes_the_question(query, candidate):
    assert mismatch(query, candidate) == "antonym"


@wordnet
@pytest.mark.parametrize("query,candidate", [
    ("What is the weather like in Paris in May?", "What is the weather like in London in May?"),
    ("Translate thank you into Korean.", "Translate thank you into Vietnamese."),
])
def test_a_sibling_entity_changes_the_question(query, candidate):
    assert mismatch(query, candidate) == "sibling"


@wordnet
def test_only_generic_words_may_be_added():
    assert mismatch("Is a visa required for US citizens visiting Japan?", "Do US citizens visiting Japan need a visa?") is None
    assert mismatch("Give me a vegan pancake recipe for 4 people.", "Give me a pancake recipe for 4 people.") == "content"
    assert mismatch("What should I wear for a hike in October at night?", "What should I wear for a hike in October?") == "content"


@wordnet
def test_measure_questions_and_negative_evaluation_stay_literal():
    assert mismatch("How often should I feed an adult cat?", "How much should I feed an adult cat?") == "content"
    assert details("How many eggs?").content == details("how much egg").content
    assert mismatch("What is the worst time of year to visit Iceland?", "What is the best time of year to visit Iceland?") == "negation"


@wordnet
def test_a_generic_word_replaced_by_an_unrelated_one_changes_the_question():
    assert lexicon.word_info("read").light and lexicon.word_info("write").light
    assert mismatch("How do I read a CSV file with pandas?", "How do I write a CSV file with pandas?") == "content"


def test_without_wordnet_the_literal_checks_remain(monkeypatch):
    monkeypatch.setattr(lexicon, "load", lambda: None)
    assert mismatch("Is it safe to eat uncooked cookie dough?", "Is it safe to eat raw cookie dough?") == "content"
    assert mismatch("How do I reverse a list in JavaScript?", "How do I reverse a list in Python?") == "content"
    assert mismatch("What's the way to reverse a Python list?", "How do I reverse a list in Python?") is None
    assert "literal" in lexicon.status()


def test_lexnames_table_is_wordnets():
    rows = [line.split("\t") for line in lexicon.lexnames_table().splitlines()]
    assert len(rows) == 45
    assert rows[0] == ["00", "adj.all", "3"] and rows[3] == ["03", "noun.Tops", "1"]
    assert rows[28] == ["28", "noun.time", "1"] and rows[44] == ["44", "adj.ppl", "3"]


def test_prepare_without_the_database_returns_none(tmp_path):
    assert lexicon.prepare(tmp_path / "data", source=tmp_path / "missing") is None


@pytest.mark.parametrize("query,candidate", [
    ("How can I stop rice from sticking to the pot?", "How do I make rice not stick to the pot?"),
    ("Is there a chemical-free way to unclog a sink?", "How do I unclog a sink without chemicals?"),
    ("For numeric loops, is Python faster than C++?", "Is Python faster than C++ for numeric loops?"),
])
def test_negation_and_order_rewordings_pass(query, candidate):
    assert mismatch(query, candidate) is None


def test_swapped_arguments_of_a_directional_word_are_rejected():
    assert mismatch("Can I substitute baking powder for baking soda?",
                    "Can I substitute baking soda for baking powder?") == "order"


def test_counts_of_one_and_thousands():
    assert details("10k steps").numbers == details("ten thousand steps").numbers == details("10,000 steps").numbers
    assert details("a cup of flour").numbers == details("1 cup of flour").numbers
    assert details("a cup of flour").numbers != details("2 cups of flour").numbers


@wordnet
def test_spelling_variants_and_modifiers():
    assert mismatch("How do I count lines in all txt files in the current dir?",
                    "How do I count lines in all txt files in the current directory?") is None
    assert mismatch("regex for us zipcode", "regex for us zip code") is None
    # "reverse" is a common verb, but after a determiner it modifies a noun: a narrower request
    assert mismatch("Explain how a reverse mortgage works.", "Explain how a mortgage works.") == "content"
    # and after a preposition (a user's report: the in-order list was served for "reverse order")
    assert mismatch("List the planets in reverse order from the sun.",
                    "List the planets in order from the sun.") == "content"
    assert mismatch("List the planets in order from the sun.",
                    "List the planets in reverse order from the sun.") == "content"
    assert mismatch("Please list the planets in order from the sun.",
                    "List the planets in order from the sun.") is None


@wordnet
def test_word_lookups_are_fast_once_loaded():
    import time

    lexicon.word_info("warm-up")
    words = [f"{w}" for w in "set run take break cut make point line draw hold turn play light head".split()]
    start = time.perf_counter()
    for w in words:
        lexicon.word_info.__wrapped__(w)  # uncached: the relations table, not the LRU
    assert (time.perf_counter() - start) / len(words) < 0.005


def test_question_words_that_fix_the_answer_kind_are_content():
    assert mismatch("How should I repot a monstera?", "When should I repot a monstera?") is not None
    assert mismatch("What is 80% of 15?", "What is 15% of 80?") == "order"
    assert mismatch("Summarize the French Revolution in one paragraph, in French.",
                    "Summarize the French Revolution in one paragraph.") == "content"


@wordnet
@pytest.mark.parametrize("query,candidate", [
    ("What's the best way to teach Spanish?", "What's the best way to learn Spanish?"),  # "learn" is listed under "teach"
    ("How many hours should a 5-year-old nap?", "How many hours should a 5-year-old sleep?"),  # "sleep" under "nap"
])
def test_a_rare_shared_sense_is_not_synonymy(query, candidate):
    assert mismatch(query, candidate) is not None


@pytest.mark.parametrize("query,candidate", [
    # a unit or a meridiem glued to its number, a.m. with dots, a clock time
    ("protein per day for 70kg person?", "How much protein do I need per day if I weigh 70 kg?"),
    ("area of circle r=5cm", "Find the area of a circle with a radius of 5 cm."),
    ("waking at 3am every night", "waking at 3 a.m. every night"),
    ("train leaves at 9am", "train leaves at 9:00 a.m."),
    ("train leaves at 9:30am", "train leaves at 9:30 a.m."),
    # a version glued to its word, a plan name with and without brackets
    ("python3 venv windows how to create", "How do I create a virtual environment in Python 3 on Windows?"),
    ("401k employer match how does it work", "How does a 401(k) employer match work?"),
    # "X over Y" is the fraction X/Y, a fraction in words, a list between slashes
    ("What is 42 over 56 in simplest form?", "Simplify the fraction 42/56."),
    ("Is three-fifths bigger than four-sevenths?", "Is 3/5 greater than 4/7?"),
    ("Explain the 50-30-20 rule for budgeting.", "What is the 50/30/20 budgeting rule?"),
    # a superscript is an exponent
    ("factor x²-5x+6", "Factor x^2 - 5x + 6."),
])
def test_one_number_written_two_ways_is_one_number(query, candidate):
    q, c = details(query), details(candidate)
    assert (q.numbers, q.ratios) == (c.numbers, c.ratios), ((q.numbers, q.ratios), (c.numbers, c.ratios))


@pytest.mark.parametrize("query,candidate", [
    ("And if we double the radius?", "What if the radius were doubled?"),  # a factor, either verb form
    ("Twice the dose", "Doubling the dose"),
])
def test_factors_written_two_ways_are_one_factor(query, candidate):
    assert details(query).ratios == details(candidate).ratios == ("x2",)
    assert mismatch(query, candidate) is None
    assert mismatch(query.replace("ouble", "alve").replace("Twice", "Halving"), candidate) == "numbers"


@pytest.mark.parametrize("query,candidate", [
    ("What is 2² ?", "What is 22 ?"),  # NFKC alone reads "2²" as "22"
    ("Solve for x: 7x + 3 = 22", "Solve for x: 3x + 7 = 22"),  # in a formula "3x" is one term
    ("Prove that 2k + 1 is odd", "Prove that 2000 + 1 is odd"),  # "2k" next to "+" is 2 times k
    ("train leaves at 9:30", "train leaves at 9:00"),
    ("How does a 403(b) plan work?", "How does a 401(k) plan work?"),
    ("Is a 401(k) worth it?", "Is $401,000 worth it?"),  # a plan's name, not 401 thousand
    # found by review (2026-12-07) against the first version of these readings:
    ("What is the area if the radius is doubled?", "What is the area if the radius is 2?"),
    ("Is a blood pressure of 120 over 80 normal?", "Is a blood pressure of 150 over 100 normal?"),
    ("Is 120/80 a normal blood pressure?", "Is 150/100 a normal blood pressure?"),
    ("What day of the week was 03/04/2020?", "What day of the week was 04/03/2020?"),
    ("What is 10⁻³ in decimal?", "What is 10³ in decimal?"),
    ("Simplify x^-2 * x^3", "Simplify x^2 * x^3"),
    ("Is a 9am to 5pm shift legal?", "Is a 9pm to 5am shift legal?"),
    ("What is the derivative of 3x - 7?", "What is the derivative of 7x - 3?"),
    ("Simplify 6x/3", "Simplify 3x/6"),
    ("Prove that 2k-1 is odd", "Prove that 2000-1 is odd"),
    ("i7 or Ryzen 5 for gaming?", "i5 or Ryzen 7 for gaming?"),
    ("What is the 2nd largest planet?", "What are the 2 largest planets?"),
    ("Simplify the fraction 2/4.", "Simplify the fraction 1/2."),
    ("Add 1/2 cup of sugar", "Add 2 cups of sugar"),
    # found by a second review (2026-12-07), each served as equal before:
    ("What's new in Python 3.10?", "What's new in Python 3.1?"),
    ("What is 20 divided by 4?", "What is 4 divided by 20?"),
    ("What is 2^10?", "What is 10^2?"),
    ("What is 144 ÷ 12?", "What is 144 × 12?"),
    ("What is 10 - 3?", "What is 3 - 10?"),
    ("Who was the first president of the United States?", "Who is the president of the United States?"),
    ("Solve x + 3 = 7", "Solve x + 7 = 3"),
    ("What is (2 + 3) * 4?", "What is 2 + 3 * 4?"),
    ("How many tablespoons in a third of a cup?", "How many tablespoons in three cups?"),
    ("Convert ½ cup of butter to grams", "Convert 2 cups of butter to grams"),
    ("Is 3/4 bigger than 2/3?", "Is 2/3 bigger than 3/4?"),
    ("Is 9007199254740993 prime?", "Is 9007199254740992 prime?"),
])
def test_numbers_written_alike_that_differ_are_told_apart(query, candidate):
    assert mismatch(query, candidate) is not None


@wordnet
def test_words_added_with_a_condition_or_with_and_are_a_second_request():
    # The look-alike the checks served on dev.jsonl and in bench.cache_workload's live traffic:
    # "paint" is a common verb, and common verbs may be added by a rewording, but not as a condition.
    assert mismatch("Can I use regular caulk around a bathtub if I paint over it?",
                    "Can I use regular caulk around a bathtub?") == "content"
    # Nor as a second request joined with "and" (the gap left open by the rule above).
    assert mismatch("Can I use regular caulk around a bathtub and paint over it?",
                    "Can I use regular caulk around a bathtub?") == "content"
    # Both state the condition: the common words a rewording adds are still allowed.
    assert mismatch("What steps should I take if my dog has eaten grapes?",
                    "What should I do if my dog ate grapes?") is None


def test_odd_numbers_do_not_crash_the_reading():
    # int() refuses strings of more than 4,300 digits: a slash group of them raised ValueError
    assert mismatch("1" * 5000 + "/2", "1" * 5000 + "/3") == "numbers"
    for text in ("", "1/0", "0/0", "1e400", "3.14.15", "٣ + ٤", "３", "½", "10^-3", "1" * 400):
        details(text)


@wordnet
@pytest.mark.parametrize("query,candidate", [
    # a fronted "In X," does not swap the sides of "in", nor do two phrases after "in" trading places
    ("In Python, how do I check if a key is in a dict?", "How do I check if a key is in a dict in Python?"),
    ("What is the weather like in June in Paris?", "What is the weather like in Paris in June?"),
    ("How do I open a file in read mode in Python?", "How do I open a file in Python in read mode?"),
    # an adverb after "and" is not a second request; "do this" said as "be done" or by "one"
    ("How do I peel garlic quickly and easily?", "How do I peel garlic quickly?"),
    ("Is it possible to do this in Excel?", "Can this be done in Excel?"),
    ("How do I do this in Excel?", "How does one do this in Excel?"),
    # a range of days, either way round; a currency sign is its ISO code
    ("Hotels in Paris March 5-7", "Hotels in Paris 5-7 March"),
    ("Convert 100 EUR to USD", "Convert €100 to USD"),
])
def test_fronted_phrases_adverbs_ranges_and_codes_read_one_way(query, candidate):
    assert mismatch(query, candidate) is None
    assert mismatch(candidate, query) is None


@wordnet
@pytest.mark.parametrize("query,candidate", [
    # sides of "in" swapped
    ("How much is 100 dollars in euros?", "How much is 100 euros in dollars?"),
    ("Is sugar in coffee bad for you?", "Is coffee in sugar bad for you?"),
    # currency signs and unit letters are content
    ("Convert £100 to dollars", "Convert €100 to dollars"),
    ("Is a 12 m rope long enough?", "Is a 12 s rope long enough?"),
    # a rate word makes a one-off a habit (the committed checks served this: "daily" was generic)
    ("Can I take ibuprofen daily?", "Can I take ibuprofen?"),
    ("Is it safe to drink coffee weekly?", "Is it safe to drink coffee?"),
    # "how many X" is not any text naming X: the quantity given ("5 kilometers"), a yes/no
    # question about an amount, a question about X, a list of X, a label
    ("Convert 5 kilometers to miles.", "How many kilometers is 5 miles?"),
    ("Is caffeine intake safe during pregnancy?", "How much caffeine is safe during pregnancy?"),
    ("How should I take my vitamin D dose?", "How much vitamin D should I take?"),
    ("How do I reduce the amount of memory Chrome uses?", "How much memory does Chrome use?"),
    ("How do I increase my protein intake?", "How much protein do I need?"),
    ("Is there a lethal dose of caffeine?", "How much caffeine is lethal?"),
    ("Does walking burn calories?", "How many calories does walking burn?"),
    ("medium banana calories", "How many calories are in a medium banana?"),
    ("mile in km", "How many miles are in a kilometer?"),
    ("US states?", "How many states are in the US?"),
    ("How do I add page numbers to the PDF?", "How many pages are in the PDF?"),
    ("What's the weight of a medium banana?", "How many calories are in a medium banana?"),
    ("What is the calorie amount of a low sugar energy drink?", "How much sugar is in a low calorie energy drink?"),
    # a count of one unit is not a count of another, nor a length
    ("How many days are in a year?", "How many weeks are in a year?"),
    ("How long is a marathon?", "How many hours is a marathon?"),
    ("How many hours a week should a student study?", "How many days a week should a student study?"),
    # order around "per" and "to" kept whatever the rate phrase
    ("Convert 60 miles per hour to meters per second", "Convert 60 meters per second to miles per hour"),
    ("Is there a bus every day from Split to Dubrovnik?", "Is there a bus every day from Dubrovnik to Split?"),
    # "how long" is a length or a duration, "how many times" a count or a frequency
    ("What is the lifespan of a blue whale?", "How long is a blue whale?"),
    ("How often does Brazil win the World Cup?", "How many times has Brazil won the World Cup?"),
    # recommendation, advice and tips are content
    ("How do I write a letter for a student?", "How do I write a recommendation letter for a student?"),
    ("Is it possible to refreeze chicken?", "Is it advisable to refreeze chicken?"),
    ("Do you pay tax?", "Do you pay tax on tips?"),
    # the sign is not the name: "£" is not the weight, "$5.99" in a regex is the sign
    ("How much is 50 pounds of gold worth?", "How much is £50 of gold worth?"),
    ("Regex to match prices like 5.99 dollars", "Regex to match prices like $5.99"),
    ("How much is 1000 yen in dollars?", "How much is ¥1000 in dollars?"),
    ("How do I type the pound sign on a Mac?", "How do I type £ on a Mac?"),
])
def test_amount_rate_and_unit_look_alikes_are_rejected(query, candidate):
    # Each found by one of two reviews (2026-12-07) of readings tried and dropped or narrowed here:
    # the committed checks or a draft served it.
    assert mismatch(query, candidate) is not None
    assert mismatch(candidate, query) is not None


@pytest.mark.parametrize("query,candidate,same", [
    ("Book a flight on March 12, returning April 5", "Book a flight on April 12, returning March 5", False),
    ("Is the museum open on July 4 or December 25?", "Is the museum open on July 25 or December 4?", False),
    ("What happened on March 4?", "What happened on 4 March?", True),
    ("What happened on Mar. 4th?", "What happened on the 4th of Mar.?", True),
    # not dates: an APR, a duration, a year
    ("20k car loan 6% apr 60 months", "20k car loan at 6% APR for 60 months", True),
    ("what to pack thailand july 1 week", "What should I pack for 1 week in Thailand in July?", True),
    ("Children under 5 may need a booster shot", "Children under five may need a booster shot", True),
    ("Can an army march 20 miles a day?", "Can an army march twenty miles a day?", True),
])
def test_a_day_goes_with_its_month(query, candidate, same):
    assert (mismatch(query, candidate) is None) == same
    assert (mismatch(candidate, query) is None) == same


@wordnet
def test_do_that_stands_for_a_verb_phrase():
    # "do that" is a pro-form; a specific verb in its place asks something else (dev.jsonl's one
    # look-alike served with the anchor stored, in the same conversation)
    assert mismatch("And how would I test that in TypeScript instead?",
                    "And how would I do that in TypeScript instead?") == "content"
    # the auxiliary "does" / "do" stays a frame word
    assert "doso" not in details("Why does it crash?").content
    assert "doso" not in details("How does that work?").content
