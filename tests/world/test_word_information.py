"""benchmarks/word_information.py: the captions it compares differ in one word, of the kind they test; the right word
is true of the scene's instance, the wrong one of the instance rendered for it, which differs in that alone."""

import random

from perfusion.world.families.categories import CATEGORIES, PATTERN_WORDS
from perfusion.world.families.scenes import sample_spec

ATTRIBUTE_FIELDS = {"colour": {"colour"}, "pattern": {"pattern"}, "shape": {"shape_values"}}


def describing(instance, kind: str) -> set[str]:
    """The words of ``kind`` that are true of ``instance``."""
    if kind == "colour":
        return {instance.colour_name}
    if kind == "pattern":
        return {PATTERN_WORDS[instance.pattern][0]}
    return {word for shape in instance.family.shapes for word in shape.words(instance.shape[shape.name])}


def words(caption: str) -> list[str]:
    return [word for word in caption.split() if word not in ("a", "an")]  # the article follows the next word


def test_each_contrast_changes_one_word_of_its_own_kind(benchmark_script):
    module = benchmark_script("word_information")
    rng = random.Random(3)
    adjectives = {words[0] for words in PATTERN_WORDS.values()}
    kinds_seen = set()
    for _ in range(200):
        spec = sample_spec(rng, module.SAMPLING)
        instance = spec.first.instance
        family = CATEGORIES[instance.category]
        shape_words = {word for shape in family.shapes for word in (*shape.low, *shape.high)}
        allowed = {"colour": set(family.colours), "pattern": adjectives, "shape": shape_words}
        for kind, (right, wrongs) in module.contrasts(spec).items():
            kinds_seen.add(kind)
            assert wrongs
            for wrong, other in wrongs:
                pairs = [(a, b) for a, b in zip(words(right), words(wrong), strict=True) if a != b]
                assert len(pairs) == 1, (right, wrong)
                said, instead = pairs[0]
                assert said in allowed[kind] and instead in allowed[kind], (kind, pairs)
                assert said in describing(instance, kind) and instead in describing(other, kind), (kind, right, wrong)
                changed = {name for name in vars(instance) if getattr(instance, name) != getattr(other, name)}
                assert changed == ATTRIBUTE_FIELDS[kind], (kind, changed)
    assert kinds_seen == {"colour", "pattern", "shape"}
