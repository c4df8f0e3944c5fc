"""Natural-language tasks for component circuits in pretrained models: sequence continuation in the form
of Lan, Torr & Barez (2024), "Towards interpretable sequence continuation" (EMNLP), intervals and
Spanish number words (their generalisation tests), IOI (Wang et al. 2023) and greater-than (Hanna,
Liu & Variengien 2023).

Sequence continuation: four increasing members of a domain, predict the fifth. Domains: numerals
1-12, English number words, months; intervals +2, +3, +10, +100 over numerals; Spanish number words.
Templates (Lan et al.): "X done in 1. X done in 2. ... X done in" with X an object, "X lost in ...",
and "<Name> born in ...". Incorrect answer = the last member shown; counterfactual = the same
template with four random members of the same domain (each of the length of the one it replaces). Answers start with a space (GPT-style BPEs).
Answers may be several tokens (` 12` in a BPE that splits digits): these tasks are `multi_token`
(`tasks/base.py`), so a shared first token moves into the prompt. Use `evaluate.filter_solved` to keep prompts a model gets right with p(correct) > 2 p(incorrect).
"""

from __future__ import annotations

import random

from sparsecircuits.tasks.base import Example, register_task

NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
SPANISH = ("uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez", "once", "doce")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
OBJECTS = ("Table", "Report", "Project", "Task", "Paper", "Bridge", "Garden", "House")
NAMES = ("John", "Mary", "Anna", "David", "Sarah", "Michael", "Emma", "James", "Lisa", "Paul", "Kate", "Tom")
TEMPLATES = ("{x} done in {m}.", "{x} lost in {m}.", "{x} born in {m}.")


def _prompt(template: str, subject: str, members: list[str]) -> str:
    shown = " ".join(template.format(x=subject, m=m) for m in members)
    return shown + " " + template.format(x=subject, m="").rstrip(" .").rstrip()


def _sequence(rng: random.Random, domain: tuple[str, ...], step: int = 1) -> Example:
    start = rng.randrange(0, len(domain) - 4 * step)
    members = [domain[start + i * step] for i in range(4)]
    t = rng.randrange(len(TEMPLATES))
    subject = rng.choice(NAMES if "born" in TEMPLATES[t] else OBJECTS)
    # random same-domain members, each as long as the one it replaces (so that a BPE usually splits it
    # into as many tokens: the counterfactual prompt must have the prompt's length), drawn again when
    # they repeat the prompt's members (May, August and September are the only months of their length)
    pools = [[d for d in domain if len(d) == len(m)] for m in members]
    if all(len(p) == 1 for p in pools):
        raise ValueError(f"no counterfactual for {members}: every member is the only one of its length")
    cf = members
    while cf == members:
        cf = [rng.choice(p) for p in pools]
    return Example(_prompt(TEMPLATES[t], subject, members), " " + domain[start + 4 * step], " " + members[-1],
                   _prompt(TEMPLATES[t], subject, cf))


def _numerals(top: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(1, top + 1))


@register_task("seqcont_numerals", "Lan et al.: '... done in 3. ... done in 4. ... done in' -> ' 5' (numerals 1-12)", multi_token=True, domain="language")
def seqcont_numerals(rng: random.Random) -> Example:
    """Four consecutive numerals in one of Lan et al.'s templates; the answer is the next numeral, since
    the sequence increases by one, and the incorrect answer repeats the last one shown."""
    return _sequence(rng, _numerals(12))


@register_task("seqcont_number_words", "Lan et al.: number words ('three. ... four.' -> ' five'), one-twelve", multi_token=True, domain="language")
def seqcont_number_words(rng: random.Random) -> Example:
    """Four consecutive English number words; the answer is the next word, since the sequence counts up
    by one, and the incorrect answer repeats the last word shown."""
    return _sequence(rng, NUMBER_WORDS)


@register_task("seqcont_months", "Lan et al.: months ('... in March. ... in April.' -> ' May')", multi_token=True, domain="language")
def seqcont_months(rng: random.Random) -> Example:
    """Four consecutive months; the answer is the month after the last one shown, since the sequence
    follows the calendar, and the incorrect answer repeats the last month shown."""
    return _sequence(rng, MONTHS)


@register_task("seqcont_spanish", "Spanish number words ('tres. cuatro.' -> ' cinco'), uno-doce", multi_token=True, domain="language")
def seqcont_spanish(rng: random.Random) -> Example:
    """Four consecutive Spanish number words; the answer is the next word, since the sequence counts up
    by one (Lan et al.'s generalisation test), and the incorrect answer repeats the last one shown."""
    return _sequence(rng, SPANISH)


def _interval(step: int):  # noqa: ANN202
    domain = tuple(str(step * i) for i in range(1, 13)) if step >= 10 else _numerals(12 + 4 * step)

    def gen(rng: random.Random) -> Example:
        """Four numerals increasing by a fixed interval; the answer continues the interval, since every
        step so far had the same size, and the incorrect answer repeats the last numeral shown."""
        return _sequence(rng, domain, 1 if step >= 10 else step)

    return gen


for _step in (2, 3, 10, 100):
    register_task(f"seqcont_interval{_step}", f"numerals increasing by {_step} ('... in 4. ... in 6.' -> ' 8' for +2)",
                  multi_token=True, domain="language")(_interval(_step))

IOI_TEMPLATES = ("When {a} and {b} went to the store, {s} gave a drink to",
                 "After {a} and {b} went to the park, {s} gave a ball to",
                 "Then, {a} and {b} had a long argument. Afterwards {s} said to")


@register_task("ioi", "indirect object identification (Wang et al.): 'When Mary and John ..., John gave a drink to' -> ' Mary'",
               domain="language")
def ioi(rng: random.Random) -> Example:
    """Two names are introduced and the second one (the subject) acts again; the answer is the other
    name, the indirect object, since one does not give something to oneself; incorrect = the subject."""
    a, b, c, d = rng.sample(NAMES, 4)
    t = rng.choice(IOI_TEMPLATES)
    # counterfactual: the ABC corruption of Wang et al. (two other names introduced, same subject)
    return Example(t.format(a=a, b=b, s=b), " " + a, " " + b, t.format(a=c, b=d, s=b))


@register_task("greater_than", "greater-than (Hanna et al.): 'The war lasted from the year 1732 to the year 17' -> a later year", multi_token=True, domain="language")
def greater_than(rng: random.Random) -> Example:
    """A span from a start year to an end year in the same century; the answer is a later two-digit
    year, since a span ends after it starts, and the incorrect one is an earlier year."""
    yy = rng.randrange(2, 98)
    later, earlier = rng.randrange(yy + 1, 100), rng.randrange(0, yy)
    noun = rng.choice(("war", "expedition", "project", "drought", "dynasty"))
    prompt = "The {n} lasted from the year {c}{y:02d} to the year {c}"
    century = rng.choice((11, 12, 13, 14, 15, 16, 17, 18))
    # counterfactual start year 01 (Hanna et al.): the earlier year is then a correct answer too
    return Example(prompt.format(n=noun, c=century, y=yy), f"{later:02d}", f"{earlier:02d}",
                   prompt.format(n=noun, c=century, y=1 if earlier > 1 else 0))

# Ordered members per sequence task (the OV successor/copy scores of `component_circuits/head_roles.py` use them).
MEMBERS: dict[str, tuple[str, ...]] = {
    "seqcont_numerals": _numerals(12), "seqcont_number_words": NUMBER_WORDS, "seqcont_months": MONTHS,
    "seqcont_spanish": SPANISH, "seqcont_interval2": _numerals(20), "seqcont_interval3": _numerals(24),
    "seqcont_interval10": tuple(str(10 * i) for i in range(1, 13)),
    "seqcont_interval100": tuple(str(100 * i) for i in range(1, 13)),
}
