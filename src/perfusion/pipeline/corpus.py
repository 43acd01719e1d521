"""Caption corpora for C = E[e e^T]: a packaged offline generator, or the user's own file.

The paper estimates C over ~100K real captions (LAION/COCO). Offline we fill COCO- and
prompt-style templates (data/corpus/templates.txt) with words from the lists beside them.
"""

import random
import re
from collections import Counter
from functools import cache
from importlib.resources import files
from pathlib import Path

# Slots that draw from several word lists at once, e.g. {creature} is any pet, bird or animal.
SLOT_UNIONS = {
    "creature": ("pet", "bird", "animal"),
    "subject": ("pet", "bird", "animal", "person"),
    "noun": ("pet", "bird", "animal", "object", "vehicle"),
}
_SLOT = re.compile(r"\{(\w+)(:s)?\}")
_ARTICLE = re.compile(r"\b(?:a|an) (?=(\w+))")
# Words spelt with a vowel that take "a" (a unicorn), or with a consonant that take "an" (an hour).
_VOWEL_SPELT_CONSONANT = ("uni", "use", "usu", "eu", "one", "ufo")
_CONSONANT_SPELT_VOWEL = ("hour", "honest", "heir")


def _data_lines(name: str) -> list[str]:
    text = files("perfusion").joinpath("data", "corpus", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@cache
def caption_templates() -> tuple[str, ...]:
    return tuple(_data_lines("templates.txt"))


@cache
def word_list(slot: str) -> tuple[tuple[str, str], ...]:
    """(singular, plural) pairs of one slot; a line "mouse|mice" spells an irregular plural."""
    if slot in SLOT_UNIONS:
        return tuple(pair for part in SLOT_UNIONS[slot] for pair in word_list(part))
    pairs = []
    for line in _data_lines(f"{slot}.txt"):
        singular, _, plural = line.partition("|")
        pairs.append((singular, plural or _plural(singular)))
    return tuple(pairs)


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _article(match: re.Match) -> str:
    word = match.group(1).lower()
    vowel_sound = word[0] in "aeiou" and not word.startswith(_VOWEL_SPELT_CONSONANT)
    return "an " if vowel_sound or word.startswith(_CONSONANT_SPELT_VOWEL) else "a "


def fill_template(template: str, rng: random.Random) -> str:
    """One caption; a slot used twice in a template draws two different words."""
    counts = Counter(slot for slot, _ in _SLOT.findall(template))
    drawn = {slot: rng.sample(word_list(slot), count) for slot, count in counts.items()}
    caption = _SLOT.sub(lambda m: drawn[m.group(1)].pop()[1 if m.group(2) else 0], template)
    return _ARTICLE.sub(_article, caption)


def default_captions(n: int = 20000, seed: int = 0) -> list[str]:
    """n captions from the packaged templates, the same for the same (n, seed).

    Templates are dealt in shuffled rounds, so every template is used once n >= their count.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    templates = list(caption_templates())
    captions = []
    while len(captions) < n:
        rng.shuffle(templates)
        captions.extend(fill_template(template, rng) for template in templates[: n - len(captions)])
    return captions


def load_captions(path) -> list[str]:
    """One caption per line of a UTF-8 text file; blank lines and surrounding whitespace ignored."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"caption file not found: {path}")
    captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"caption file has no captions: {path}")
    return captions
