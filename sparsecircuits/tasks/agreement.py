"""Subject-verb agreement tasks of Marks et al. (2025), "Sparse feature circuits" (after Finlayson et
al. 2021): the verb must agree in number with the governing subject noun, across distractor nouns.

  agreement_simple  "The parents" -> " are" / " is"
  agreement_within_rc  "The athlete that the managers" -> " like" / " likes" (the RC's own subject governs)
  agreement_across_rc  "The athlete that the managers like" -> " does" / " do" (the main subject governs)
  agreement_across_pp  "The secretaries near the cars" -> " have" / " has"

The counterfactual prompt differs from the prompt only in the number of the governing noun (singular
<-> plural), so its correct verb is this prompt's incorrect one. Distractor nouns are drawn with random
number, independently of the governing noun. Word lists are small and built in. In a given BPE a
singular and its plural may differ in token count; `tasks.base.load_task` then drops the example
(the counterfactual must have the prompt's length), as the paper keeps only such noun pairs.

Our code-trained models will not learn these (they never see English): the tasks are for user-supplied
English models, e.g. Pythia or GPT-2 loaded by `model/load.py` (domain "language").
"""

from __future__ import annotations

import random

from sparsecircuits.tasks.base import Example, register_task

# (singular, plural) nouns: people for subjects, things and places for prepositional objects.
PEOPLE = (("athlete", "athletes"), ("manager", "managers"), ("author", "authors"), ("pilot", "pilots"),
          ("doctor", "doctors"), ("teacher", "teachers"), ("farmer", "farmers"), ("senator", "senators"),
          ("student", "students"), ("painter", "painters"), ("officer", "officers"), ("dancer", "dancers"),
          ("lawyer", "lawyers"), ("customer", "customers"), ("parent", "parents"), ("secretary", "secretaries"))
THINGS = (("car", "cars"), ("house", "houses"), ("table", "tables"), ("tree", "trees"), ("door", "doors"),
          ("window", "windows"), ("desk", "desks"), ("bridge", "bridges"), ("building", "buildings"),
          ("fountain", "fountains"))
PREPOSITIONS = ("near", "behind", "beside", "across from", "next to")
ADJECTIVES = ("", "young ", "old ", "new ", "famous ", "tired ", "friendly ", "busy ", "quiet ")
# (singular, plural) transitive verbs in the present tense, for the relative clause.
RC_VERBS = (("likes", "like"), ("admires", "admire"), ("hates", "hate"), ("knows", "know"), ("loves", "love"),
            ("helps", "help"), ("meets", "meet"), ("trusts", "trust"))
# (singular, plural) answer verbs after a complete subject noun phrase.
AUX = (("is", "are"), ("has", "have"), ("was", "were"), ("does", "do"))


def _np(noun: tuple[str, str], plural: bool, det: str = "The") -> str:
    return f"{det} {noun[int(plural)]}"


def _example(build, rng: random.Random, verbs: tuple[str, str]) -> Example:  # noqa: ANN001
    """`build(plural)` makes the prompt with the governing noun in the given number."""
    plural = rng.random() < 0.5
    prompt, cf = build(plural), build(not plural)
    return Example(prompt, " " + verbs[int(plural)], " " + verbs[int(not plural)], cf)


@register_task("agreement_simple", "Marks et al.: 'The parents' -> ' are' (the verb agrees with the subject)",
               domain="language")
def agreement_simple(rng: random.Random) -> Example:
    """A bare subject noun phrase (optionally with an adjective): the next word is a verb, and English
    requires it to agree in number with the subject noun, so a plural noun takes the plural verb."""
    noun, adj, verbs = rng.choice(PEOPLE), rng.choice(ADJECTIVES), rng.choice(AUX)
    return _example(lambda pl: f"The {adj}{noun[int(pl)]}", rng, verbs)


@register_task("agreement_within_rc", "Marks et al.: 'The athlete that the managers' -> ' like' (RC subject)",
               domain="language")
def agreement_within_rc(rng: random.Random) -> Example:
    """Inside an object relative clause the next word is the clause's verb, which must agree in number
    with the clause's own subject (the second noun), not with the head noun the clause modifies."""
    head, sub = rng.sample(PEOPLE, 2)
    head_pl, verbs = rng.random() < 0.5, rng.choice(RC_VERBS)
    return _example(lambda pl: f"{_np(head, head_pl)} that {_np(sub, pl, 'the')}", rng, verbs)


@register_task("agreement_across_rc", "Marks et al.: 'The athlete that the managers like' -> ' does' (main subject)",
               domain="language")
def agreement_across_rc(rng: random.Random) -> Example:
    """After a complete object relative clause the next word is the main verb, which must agree in number
    with the main subject (the first noun), across the relative clause's own subject noun."""
    head, sub = rng.sample(PEOPLE, 2)
    sub_pl, rc_verb, verbs = rng.random() < 0.5, rng.choice(RC_VERBS), rng.choice(AUX)
    rc = rc_verb[int(sub_pl)]
    return _example(lambda pl: f"{_np(head, pl)} that {_np(sub, sub_pl, 'the')} {rc}", rng, verbs)


@register_task("agreement_across_pp", "Marks et al.: 'The secretaries near the cars' -> ' have' (across a PP)",
               domain="language")
def agreement_across_pp(rng: random.Random) -> Example:
    """After a prepositional phrase modifying the subject the next word is the main verb, which must agree
    in number with the subject noun, not with the object of the preposition that comes closer."""
    head, obj, prep = rng.choice(PEOPLE), rng.choice(THINGS), rng.choice(PREPOSITIONS)
    obj_pl, verbs = rng.random() < 0.5, rng.choice(AUX)
    return _example(lambda pl: f"{_np(head, pl)} {prep} {_np(obj, obj_pl, 'the')}", rng, verbs)


VARIANTS = ("agreement_simple", "agreement_within_rc", "agreement_across_rc", "agreement_across_pp")
