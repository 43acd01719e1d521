"""benchmarks/word_information.py: the captions it compares differ in one word, of the kind they test, and the\nwrong word is true of the instance rendered for it."""

import random

from perfusion.world.families.categories import CATEGORIES, PATTERN_WORDS
from perfusion.world.families.scenes import sample_spec


def describing(instance, kind: str) -> set[str]:
    """The words of ``kind`` that are true of ``instance``."""
    if kind == "colour":
        return {instance.colour_name}
    if kind == "pattern":
        return {PATTERN_WORDS[instance.pattern][0]}
    return {word for shape in instance.family.shapes for word in shape.words(instance.shape[shape.name])}


def test_each_contrast_changes_one_word_of_its_own_kind(benchmark_script):
    module = benchmark_script("word_information")
    rng = random.Random(3)
    adjectives = {words[0] for words in PATTERN_WORDS.values()}
    kinds_seen = set()
    for _ in range(200):
        spec = sample_spec(rng, module.SAMPLING)
        family = CATEGORIES[spec.first.instance.category]
        shape_words = {word for shape in family.shapes for word in (*shape.low, *shape.high)}
        allowed = {"colour": set(family.colours), "pattern": adjectives, "shape": shape_words}
        for kind, (right, wrongs) in module.contrasts(spec).items():
            kinds_seen.add(kind)
            assert wrongs
            for wrong, instance in wrongs:
                pairs = [(a, b) for a, b in zip(right.split(), wrong.split(), strict=True) if a != b]
                assert len(pairs) == 1, (right, wrong)
                assert pairs[0][1] in describing(instance, kind), (kind, wrong, instance)
                assert pairs[0][0] in allowed[kind] and pairs[0][1] in allowed[kind], (kind, pairs)
    assert kinds_seen == {"colour", "pattern", "shape"}
