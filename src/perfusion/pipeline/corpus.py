"""Caption corpora for C = E[e e^T]: a packaged offline generator, a model folder's own captions, or the user's file.

The paper estimates C over ~100K real captions (LAION/COCO). Offline we fill COCO- and prompt-style templates
(data/corpus/templates.txt) with words from the lists beside them, and extend half of them, as SD users write
prompts, with comma-separated phrases from real prompts (data/corpus/phrases.txt.gz, from clip-interrogator: NOTICE)
up to CLIP's 77 tokens. A model folder may carry its own corpus (MODEL_CAPTIONS), used in place of the packaged one:
the embedded model's prompts are its world's captions, at its own length.
"""

import gzip
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
PHRASES = "phrases.txt.gz"
PROMPT_SHARE = 0.5  # of captions extended with prompt phrases
MAX_PHRASES = 14  # phrases appended to one caption: 1..MAX_PHRASES, evenly (up to about 77 CLIP tokens)
MODEL_CAPTIONS = "perfusion_captions.txt"  # a model folder's own corpus, one caption per line


def _data_lines(name: str) -> list[str]:
    resource = files("perfusion").joinpath("data", "corpus", name)
    text = gzip.decompress(resource.read_bytes()).decode() if name.endswith(".gz") else resource.read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@cache
def prompt_phrases() -> tuple[str, ...]:
    return tuple(_data_lines(PHRASES))


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


def with_phrases(caption: str, rng: random.Random) -> str:
    """``caption`` followed by 1 to MAX_PHRASES prompt phrases, comma-separated, as SD prompts are written."""
    return ", ".join([caption, *rng.sample(prompt_phrases(), rng.randint(1, MAX_PHRASES))])


def default_captions(n: int = 20000, seed: int = 0, prompt_share: float = PROMPT_SHARE) -> list[str]:
    """n captions from the packaged templates, ``prompt_share`` of them extended with prompt phrases; the same for
    the same arguments, and the first m of n are the m captions of (m, seed). ``prompt_share=0`` gives the templated
    corpus that C came from before the phrases were added (concept files of then record "packaged:<its digest>").

    Templates are dealt in shuffled rounds, so every template is used once n >= their count.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    templates = list(caption_templates())
    captions = []
    while len(captions) < n:
        rng.shuffle(templates)
        for template in templates[: n - len(captions)]:
            caption = fill_template(template, rng)
            captions.append(with_phrases(caption, rng) if prompt_share and rng.random() < prompt_share else caption)
    return captions


def model_captions(pipe) -> list[str] | None:
    """The corpus a pipeline's model folder carries (MODEL_CAPTIONS), or None: a hub id (the hub's copy is not
    fetched), a single file, or a folder without one. Read from the folder the pipeline was opened from (diffusers'
    ``name_or_path``); a file there that cannot be read or holds no caption is a ModelError naming it."""
    from perfusion.pipeline.models import ModelError

    folder = getattr(pipe, "name_or_path", None)
    path = Path(folder) / MODEL_CAPTIONS if folder else None
    if path is None or not path.is_file():
        return None
    try:
        return load_captions(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{path}: unreadable or empty ({error}); fix or delete it, or pass --captions") from None


def load_captions(path) -> list[str]:
    """One caption per line of a UTF-8 text file; blank lines and surrounding whitespace ignored."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"caption file not found: {path}")
    captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"caption file has no captions: {path}")
    return captions
