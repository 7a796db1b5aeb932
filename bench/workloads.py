"""The peer benchmark's workloads, each a list of conversations (bench/loadgen.py runs them).

- `random`: one turn of random tokens (vLLM's own RandomDataset, as `vllm bench serve --dataset-name
  random` makes them), fixed output length (`ignore_eos`): raw serving throughput, nothing cacheable.
- `shared_prefix`: multi-turn chats under a few long system prompts (many users per system prompt,
  each turn sent with the whole history, the model's real answers included): what prefix caching and
  prefix-aware routing are for.
- `repeat_heavy`: single questions drawn from a popular few (Zipf), asked verbatim or in other words:
  what the semantic cache is for.
"""

from __future__ import annotations

import random

from bench.loadgen import Conversation

# Popular questions, each with rewordings that keep its meaning (written for this benchmark).
QUESTIONS: list[tuple[str, list[str]]] = [
    ("How do I reverse a list in Python?",
     ["What is the way to reverse a Python list?", "How can I flip the order of a list in Python?",
      "python: how to reverse a list"]),
    ("What is the capital of Australia?",
     ["Which city is Australia's capital?", "Tell me the capital city of Australia.",
      "Australia's capital is which city?"]),
    ("How many days are in a leap year?",
     ["A leap year has how many days?", "What is the number of days in a leap year?",
      "How long is a leap year in days?"]),
    ("What does HTTP status code 404 mean?",
     ["What is the meaning of an HTTP 404 status?", "Explain the HTTP 404 status code.",
      "HTTP 404: what does that status mean?"]),
    ("How do I make a git branch?",
     ["How can I create a new branch in git?", "What is the command to create a git branch?",
      "git: how to create a branch"]),
    ("What is the boiling point of water at sea level in Celsius?",
     ["At sea level, water boils at what temperature in Celsius?",
      "In Celsius, what is water's boiling point at sea level?",
      "What temperature in Celsius does water boil at, at sea level?"]),
    ("Who wrote Pride and Prejudice?",
     ["Who is the author of Pride and Prejudice?", "Pride and Prejudice was written by whom?",
      "Which writer wrote Pride and Prejudice?"]),
    ("How do I convert a string to an integer in JavaScript?",
     ["What is the way to turn a string into an integer in JavaScript?",
      "JavaScript: how to convert a string to an integer",
      "How can I parse a string as an integer in JavaScript?"]),
    ("What is the speed of light in a vacuum?",
     ["How fast does light travel in a vacuum?", "What is light's speed in a vacuum?",
      "In a vacuum, what is the speed of light?"]),
    ("How do I undo the last git commit?",
     ["How can I revert my most recent git commit?", "What is the way to undo the latest commit in git?",
      "git: how to undo the last commit"]),
    ("What is the largest planet in the solar system?",
     ["Which planet is the largest in our solar system?", "What is the biggest planet in the solar system?",
      "The solar system's largest planet is which one?"]),
    ("How do I read a file line by line in Python?",
     ["What is the way to read a file one line at a time in Python?",
      "Python: how to iterate over the lines of a file",
      "How can I go through a file line by line in Python?"]),
    ("What is the chemical symbol for gold?",
     ["Which chemical symbol stands for gold?", "What symbol does gold have in chemistry?",
      "Gold's chemical symbol is what?"]),
    ("How many continents are there?",
     ["What is the number of continents on Earth?", "How many continents does the world have?",
      "Earth has how many continents?"]),
    ("What is a Python decorator?",
     ["Can you explain what a decorator is in Python?", "What does a decorator do in Python?",
      "Python decorators: what are they?"]),
    ("How do I center a div in CSS?",
     ["What is the way to center a div with CSS?", "CSS: how to center a div",
      "How can I put a div in the center using CSS?"]),
]


def random_tokens(tokenizer_path: str, n: int, input_len: int, output_len: int, seed: int) -> list[Conversation]:
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets.datasets import RandomDataset

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    samples = RandomDataset(random_seed=seed).sample(tokenizer=tokenizer, num_requests=n, input_len=input_len,
                                                     output_len=output_len)
    return [Conversation(turns=[s.prompt], max_tokens=s.expected_output_len, ignore_eos=True) for s in samples]


_WORDS = ("service request replica engine cache token prefix stream batch queue latency model router "
          "cluster node memory policy tenant answer question context window prompt system user header "
          "metric budget limit deadline priority retry failure health scale deploy config schema").split()


def _text(rng: random.Random, words: int) -> str:
    sentences, left = [], words
    while left > 0:
        k = min(left, rng.randint(8, 16))
        sentences.append(" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + ".")
        left -= k
    return " ".join(sentences)


def shared_prefix(n_conversations: int, *, groups: int = 8, system_words: int = 600, turns: int = 3,
                  turn_words: int = 24, max_tokens: int = 32, seed: int = 0) -> list[Conversation]:
    """`groups` long system prompts; conversations spread over them round-robin, in shuffled order."""
    rng = random.Random(seed)
    systems = [f"You are assistant #{g}. " + _text(rng, system_words) for g in range(groups)]
    convs = [Conversation(turns=[_text(rng, turn_words) for _ in range(turns)], system=systems[i % groups],
                          max_tokens=max_tokens) for i in range(n_conversations)]
    rng.shuffle(convs)
    return convs


def repeat_heavy(n: int, *, zipf_s: float = 1.1, verbatim: float = 0.5, max_tokens: int = 48,
                 seed: int = 0) -> list[Conversation]:
    """`n` single questions: a popular one (Zipf over QUESTIONS), verbatim or reworded."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** zipf_s for rank in range(len(QUESTIONS))]
    out = []
    for _ in range(n):
        anchor, rewordings = rng.choices(QUESTIONS, weights=weights)[0]
        text = anchor if rng.random() < verbatim else rng.choice(rewordings)
        out.append(Conversation(turns=[text], max_tokens=max_tokens))
    return out
