"""Offline grade-school arithmetic word problems in the MetaMathQA answer format (DESIGN.md section 4).

Each template draws its numbers first, computes every intermediate value, and writes the solution
from those values, so the stated answer is the computed one. Phrasing is fixed per template (only
names, objects and numbers vary) so that a 135M model can pick the patterns up in a few hundred steps.

Train and test never share a problem: a problem's key is its template plus its numbers (names and
objects are decoration), and a stable hash of the key assigns it to exactly one split.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

GENERATOR_VERSION = "synthetic-v1"
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
GADGETS = ["bike", "game", "jacket", "lamp", "backpack", "watch", "radio", "tent"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
JOBS = ["babysitting", "tutoring", "washing cars", "walking dogs", "mowing lawns", "painting fences"]

# A template returns (numbers, query, solution steps, answer); `numbers` identifies the problem.
Problem = tuple[dict, str, list[str], int]


def _shopping(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    item1, item2 = r.sample(FRUITS + SUPPLIES, 2)
    a, b = r.randint(2, 9), r.randint(2, 9)
    p1, p2 = r.randint(2, 15), r.randint(2, 15)
    c1, c2 = a * p1, b * p2
    total = c1 + c2
    bill = next(x for x in (20, 50, 100, 200, 500) if x > total)
    change = bill - total
    query = (
        f"{name} buys {a} {item1} for {p1} dollars each and {b} {item2} for {p2} dollars each. "
        f"{name} pays with a {bill} dollar bill. How much change, in dollars, does {name} get back?"
    )
    steps = [
        f"The {item1} cost {a} * {p1} = {c1} dollars.",
        f"The {item2} cost {b} * {p2} = {c2} dollars.",
        f"In total {name} spends {c1} + {c2} = {total} dollars.",
        f"So {name} gets {bill} - {total} = {change} dollars back.",
    ]
    return dict(a=a, p1=p1, b=b, p2=p2, bill=bill), query, steps, change


def _sharing(r: random.Random) -> Problem:
    name, obj = r.choice(NAMES), r.choice(SWEETS)
    while True:
        k, each = r.randint(2, 9), r.randint(2, 25)
        bags, per_bag = r.randint(2, 9), r.randint(2, 12)
        start = k * each - bags * per_bag
        if start >= 1:
            break
    bought = bags * per_bag
    total = start + bought
    query = (
        f"{name} has {start} {obj}. {name} buys {bags} bags of {obj} with {per_bag} {obj} in each bag. "
        f"{name} shares all the {obj} equally among {k} friends. How many {obj} does each friend get?"
    )
    steps = [
        f"{name} buys {bags} * {per_bag} = {bought} {obj}.",
        f"Now {name} has {start} + {bought} = {total} {obj}.",
        f"Each friend gets {total} / {k} = {each} {obj}.",
    ]
    return dict(start=start, bags=bags, per_bag=per_bag, k=k), query, steps, each


def _travel(r: random.Random) -> Problem:
    vehicle = r.choice(VEHICLES)
    v, w = r.randint(20, 70), r.randint(20, 70)
    t1, t2 = r.randint(2, 6), r.randint(2, 6)
    d1, d2 = v * t1, w * t2
    total = d1 + d2
    query = (
        f"A {vehicle} travels at {v} miles per hour for {t1} hours and then at {w} miles per hour "
        f"for {t2} hours. How many miles does the {vehicle} travel in total?"
    )
    steps = [
        f"First the {vehicle} travels {v} * {t1} = {d1} miles.",
        f"Then the {vehicle} travels {w} * {t2} = {d2} miles.",
        f"In total the {vehicle} travels {d1} + {d2} = {total} miles.",
    ]
    return dict(v=v, t1=t1, w=w, t2=t2), query, steps, total


def _ages(r: random.Random) -> Problem:
    a, b, c = r.sample(NAMES, 3)
    x, d, m = r.randint(3, 40), r.randint(2, 30), r.randint(2, 4)
    age_b = x + d
    age_c = m * age_b
    total = x + age_b + age_c
    times = {2: "twice", 3: "three times", 4: "four times"}[m]
    query = (
        f"{a} is {x} years old. {b} is {d} years older than {a}. {c} is {times} as old as {b}. "
        f"What is the sum of the ages of {a}, {b} and {c}?"
    )
    steps = [
        f"{b} is {x} + {d} = {age_b} years old.",
        f"{c} is {m} * {age_b} = {age_c} years old.",
        f"The sum of their ages is {x} + {age_b} + {age_c} = {total} years.",
    ]
    return dict(x=x, d=d, m=m), query, steps, total


def _savings(r: random.Random) -> Problem:
    name, gadget = r.choice(NAMES), r.choice(GADGETS)
    while True:
        start, s, w = r.randint(5, 60), r.randint(3, 25), r.randint(2, 10)
        earned = s * w
        total = start + earned
        price = r.randint(5, 150)
        if price < total:
            break
    left = total - price
    query = (
        f"{name} has {start} dollars. {name} saves {s} dollars every week for {w} weeks. "
        f"Then {name} buys a {gadget} for {price} dollars. How many dollars does {name} have left?"
    )
    steps = [
        f"{name} saves {s} * {w} = {earned} dollars.",
        f"Then {name} has {start} + {earned} = {total} dollars.",
        f"After buying the {gadget}, {name} has {total} - {price} = {left} dollars left.",
    ]
    return dict(start=start, s=s, w=w, price=price), query, steps, left


def _bakery(r: random.Random) -> Problem:
    food = r.choice(BAKED)
    while True:
        trays, per_tray = r.randint(3, 12), r.randint(4, 12)
        made = trays * per_tray
        morning, afternoon = r.randint(1, made), r.randint(1, made)
        if morning + afternoon <= made:
            break
    sold = morning + afternoon
    left = made - sold
    query = (
        f"A bakery bakes {trays} trays of {food} with {per_tray} {food} on each tray. It sells {morning} "
        f"{food} in the morning and {afternoon} {food} in the afternoon. How many {food} are left?"
    )
    steps = [
        f"The bakery bakes {trays} * {per_tray} = {made} {food}.",
        f"It sells {morning} + {afternoon} = {sold} {food}.",
        f"So {made} - {sold} = {left} {food} are left.",
    ]
    return dict(trays=trays, per_tray=per_tray, morning=morning, afternoon=afternoon), query, steps, left


def _reading(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    day1, day2 = r.sample(DAYS, 2)
    while True:
        rate, h1, h2 = r.randint(5, 30), r.randint(1, 5), r.randint(1, 5)
        read = rate * (h1 + h2)
        pages = r.randint(50, 400)
        if pages > read:
            break
    p1, p2 = rate * h1, rate * h2
    left = pages - read
    query = (
        f"{name} reads {rate} pages every hour. {name} reads for {h1} hours on {day1} and {h2} hours on "
        f"{day2}. The book has {pages} pages. How many pages does {name} still have to read?"
    )
    steps = [
        f"On {day1} {name} reads {rate} * {h1} = {p1} pages.",
        f"On {day2} {name} reads {rate} * {h2} = {p2} pages.",
        f"{name} reads {p1} + {p2} = {read} pages in total.",
        f"So {name} still has to read {pages} - {read} = {left} pages.",
    ]
    return dict(rate=rate, h1=h1, h2=h2, pages=pages), query, steps, left


def _wages(r: random.Random) -> Problem:
    name, job = r.choice(NAMES), r.choice(JOBS)
    rate, hours, days = r.randint(5, 40), r.randint(2, 10), r.randint(2, 12)
    per_day = rate * hours
    total = per_day * days
    query = (
        f"{name} earns {rate} dollars per hour for {job}. {name} works {hours} hours a day for {days} days. "
        f"How many dollars does {name} earn?"
    )
    steps = [
        f"Each day {name} earns {rate} * {hours} = {per_day} dollars.",
        f"In {days} days {name} earns {per_day} * {days} = {total} dollars.",
    ]
    return dict(rate=rate, hours=hours, days=days), query, steps, total


TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "shopping": _shopping,
    "sharing": _sharing,
    "travel": _travel,
    "ages": _ages,
    "savings": _savings,
    "bakery": _bakery,
    "reading": _reading,
    "wages": _wages,
}


def problem_key(template: str, numbers: dict) -> str:
    return template + ":" + ",".join(f"{k}={numbers[k]}" for k in sorted(numbers))


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
        key = problem_key(template, numbers)
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
