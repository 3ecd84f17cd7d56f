"""Offline grade-school arithmetic word problems in the MetaMathQA answer format (DESIGN.md section 4).

Each template draws its numbers first, computes the answer, and writes the solution from those values, so
the stated answer is the computed one. Phrasing is fixed per template (only names, objects and numbers vary)
so that a 135M model can pick the pattern up in a few steps.

Version 2 (``synthetic-v2``): one worked step per problem, a product of a one-digit number and a one-digit
number or a multiple of ten: the arithmetic SmolLM2-135M does reliably before any training (few-shot: 83%
of one-digit products, 94% of tens x one digit, but 10-31% of two-digit sums and 4-10% of two-digit
differences), and a worked answer of ~20 SmolLM2 tokens (at most 32 with EOS: ``tests/test_data.py``). At
the mini scale's budget (10 steps of 2 examples) this is what lets accuracy say something: measured, SORSA
at 3x its paper rate answered 14 of 20 one-step problems, but 1 of 32 two-step ones (one-digit sum, then a
product) at 1x and 0 of 32 at 10x, and version 1's four-step problems (~66 tokens, two-digit arithmetic)
were cut off at 48 new tokens: every method scored 0.

Train and test never share a problem: a problem's key is its template, numbers and words, and a stable hash
of the key assigns it to exactly one split. One-digit products are few, so the same product appears in
both splits with other names and objects; what the split keeps out of the test set is the training text.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

GENERATOR_VERSION = "synthetic-v2"
SPLITS = ("train", "test")
TEST_FRACTION_PERCENT = 10  # share of the key space reserved for the held-out split

NAMES = [
    "Ava", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jamal", "Kira", "Leo",
    "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Zoe",
]  # fmt: skip
FRUITS = ["apples", "oranges", "pears", "lemons", "peaches", "plums", "mangoes", "bananas"]
SUPPLIES = ["pencils", "notebooks", "erasers", "markers", "folders", "rulers", "crayons", "stickers"]
SWEETS = ["candies", "cookies", "marbles", "stickers", "cards", "balloons", "buttons", "shells"]
BAKED = ["muffins", "cupcakes", "rolls", "cookies", "bagels", "pies", "scones", "croissants"]
VEHICLES = ["car", "bus", "train", "truck", "van", "boat"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PLANTS = ["tulips", "roses", "carrots", "tomatoes", "beans", "onions", "daisies", "peppers"]
JOBS = ["babysitting", "tutoring", "washing cars", "walking dogs", "mowing lawns", "painting fences"]

# A template returns (numbers, query, solution steps, answer); numbers and query identify the problem.
Problem = tuple[dict, str, list[str], int]


def _factor(r: random.Random) -> int:
    return r.randint(2, 9)


def _shopping(r: random.Random) -> Problem:
    name, item, a, p = r.choice(NAMES), r.choice(FRUITS + SUPPLIES), _factor(r), _factor(r)
    query = f"{name} buys {a} {item} for {p} dollars each. How many dollars does {name} spend?"
    return dict(a=a, p=p), query, [f"{name} spends {a} * {p} = {a * p} dollars."], a * p


def _gifts(r: random.Random) -> Problem:
    name, obj, k, b = r.choice(NAMES), r.choice(SWEETS), _factor(r), _factor(r)
    query = f"{name} gives {b} {obj} to each of {k} friends. How many {obj} does {name} give away?"
    return dict(k=k, b=b), query, [f"{name} gives away {k} * {b} = {k * b} {obj}."], k * b


def _travel(r: random.Random) -> Problem:
    vehicle, v, n = r.choice(VEHICLES), 10 * r.randint(1, 9), _factor(r)
    query = f"A {vehicle} travels at {v} miles per hour for {n} hours. How many miles does it travel?"
    return dict(v=v, n=n), query, [f"It travels {v} * {n} = {v * n} miles."], v * n


def _garden(r: random.Random) -> Problem:
    name, plant, rows, per_row = r.choice(NAMES), r.choice(PLANTS), _factor(r), _factor(r)
    query = (
        f"{name} plants {rows} rows of {plant} with {per_row} {plant} in each row. "
        f"How many {plant} does {name} plant?"
    )
    return (
        dict(rows=rows, per_row=per_row),
        query,
        [f"{name} plants {rows} * {per_row} = {rows * per_row} {plant}."],
        rows * per_row,
    )


def _savings(r: random.Random) -> Problem:
    name, s, w = r.choice(NAMES), _factor(r), _factor(r)
    query = f"{name} saves {s} dollars every week for {w} weeks. How many dollars does {name} save?"
    return dict(s=s, w=w), query, [f"{name} saves {s} * {w} = {s * w} dollars."], s * w


def _bakery(r: random.Random) -> Problem:
    food, trays, per_tray = r.choice(BAKED), _factor(r), _factor(r)
    query = (
        f"A bakery bakes {trays} trays of {food} with {per_tray} {food} on each tray. "
        f"How many {food} does it bake?"
    )
    return (
        dict(trays=trays, per_tray=per_tray),
        query,
        [f"It bakes {trays} * {per_tray} = {trays * per_tray} {food}."],
        trays * per_tray,
    )


def _reading(r: random.Random) -> Problem:
    name, day, rate, hours = r.choice(NAMES), r.choice(DAYS), _factor(r), _factor(r)
    query = (
        f"{name} reads {rate} pages every hour for {hours} hours on {day}. How many pages does {name} read?"
    )
    return (
        dict(rate=rate, hours=hours),
        query,
        [f"{name} reads {rate} * {hours} = {rate * hours} pages."],
        rate * hours,
    )


def _wages(r: random.Random) -> Problem:
    name, job, day, rate, hours = (
        r.choice(NAMES),
        r.choice(JOBS),
        r.choice(DAYS),
        10 * r.randint(1, 9),
        _factor(r),
    )
    query = (
        f"{name} earns {rate} dollars per hour for {job} and works {hours} hours on {day}. "
        f"How many dollars does {name} earn?"
    )
    return (
        dict(rate=rate, hours=hours),
        query,
        [f"{name} earns {rate} * {hours} = {rate * hours} dollars."],
        rate * hours,
    )


TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "shopping": _shopping,
    "gifts": _gifts,
    "travel": _travel,
    "garden": _garden,
    "savings": _savings,
    "bakery": _bakery,
    "reading": _reading,
    "wages": _wages,
}


def problem_key(template: str, numbers: dict, query: str) -> str:
    """The problem's identity: its template, numbers and text (names and objects included)."""
    return template + ":" + ",".join(f"{k}={numbers[k]}" for k in sorted(numbers)) + ":" + query


def split_of(key: str) -> str:
    """The split a problem belongs to; a stable hash, independent of seeds and PYTHONHASHSEED."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if h % 100 < TEST_FRACTION_PERCENT else "train"


def make_synthetic(split: str, n: int, seed: int) -> list[dict]:
    """`n` distinct problems of `split` ("train" or "test"), the same list for the same (split, n, seed).

    Each example: id, query, response (steps + "The answer is: N"), answer (int), template,
    numbers (the values that define the problem), key.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # A string seed is hashed with sha512 by `random`, so it is stable across runs and machines.
    rng = random.Random(f"{GENERATOR_VERSION}/{split}/{seed}")
    names = list(TEMPLATES)
    out: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(
                f"could not draw {n} distinct {split} problems; the generator's space is exhausted"
            )
        template = rng.choice(names)
        numbers, query, steps, answer = TEMPLATES[template](rng)
        key = problem_key(template, numbers, query)
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        response = "\n".join(steps) + f"\nThe answer is: {answer}"
        out.append(
            dict(
                id=f"synthetic/{split}/{seed}/{len(out)}",
                query=query,
                response=response,
                answer=answer,
                template=template,
                numbers=numbers,
                key=key,
            )
        )
    return out
