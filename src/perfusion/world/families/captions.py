"""Captions of the families world, written the way people caption photos: the category word (or now and then a
family word such as "tabby"), and each attribute named independently, in coarse words, some of the time.

Fine values (the exact shade, how long the tail is within "long-tailed", the stripes' width, the spots' layout)
are never named: part of an instance's identity lies beyond words, as it does in Stable Diffusion.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .categories import CATEGORIES, PATTERN_WORDS, PATTERNS
from .palette import BACKGROUNDS, COLOURS
from .scenes import Scene, SceneSpec, WorldSampling, render, render_with_mask, sample_spec

INTROS = ("", "", "", "a photo of", "a picture of", "an image of", "a drawing of")
SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("medium-sized",), "large": ("large", "big", "huge")}
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "in the left half"),
    "right": ("on the right", "at the right", "in the right half"),
    "top": ("at the top", "near the top", "in the upper half"),
    "bottom": ("at the bottom", "near the bottom", "in the lower half"),
    "centre": ("in the centre", "in the middle", "centered"),
}
BACKGROUND_PHRASES = ("on {a} background", "against {a} background", "in front of {a} background", "on {c}")
PAIR_PHRASES = ("next to", "beside", "and")
SIDE_PHRASES = {"left": "to the left of", "right": "to the right of"}
POSE_WORDS = {"sitting": ("sitting",), "standing": ("standing",)}
ACCESSORY_FORMS = ("with {a} {c} {thing}", "wearing {a} {c} {thing}", "with {a} {thing}")
MAX_TOKENS = 32  # the families text encoder's length (TokenizerConfig.model_max_length)


@dataclass(frozen=True)
class CaptionChoice:
    """How likely a caption names each attribute (independently), where the instance has it."""

    colour: float = 0.5
    pattern: float = 0.45  # a pattern other than plain
    pattern_colour: float = 0.4  # when the pattern is named: its colour too ("with black stripes")
    plain: float = 0.08  # "plain" or "solid" for a plain instance
    shape: float = 0.4  # each shape parameter in its low or high third
    accessory: float = 0.5
    accessory_colour: float = 0.7
    pose: float = 0.25
    family_word: float = 0.3  # where the instance belongs to a family word's region
    size: float = 0.5
    position: float = 0.6
    background: float = 0.75
    bare: float = 0.06  # "a photo of a cat" and nothing else (one-object scenes)


@dataclass(frozen=True)
class Caption:
    text: str
    stated: frozenset[str]  # what it names: colour, pattern, shape:<name>, accessory, pose, family, size, ...


def article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def noun_phrase(
    placement, rng: random.Random, choice: CaptionChoice, size_word: str | None, stated: set[str], prefix: str = ""
) -> str:
    """ "a small chubby black cat with white spots wearing a red collar": what the caption says of one object, with
    the attributes it names added to `stated` (keys prefixed by `prefix`)."""
    instance = placement.instance
    family = CATEGORIES[instance.category]
    before, after = [], []
    for shape in family.shapes:
        words = shape.words(instance.shape[shape.name])
        if words and rng.random() < choice.shape:
            before.append(rng.choice(words))
            stated.add(f"{prefix}shape:{shape.name}")
    if rng.random() < choice.colour:
        before.append(instance.colour_name)
        stated.add(prefix + "colour")
    if instance.pattern != "plain" and rng.random() < choice.pattern:
        stated.add(prefix + "pattern")
        adjective, phrase = PATTERN_WORDS[instance.pattern]
        if rng.random() < choice.pattern_colour:
            stated.add(prefix + "pattern_colour")
            after.append(phrase.replace("with ", f"with {instance.second_colour_name} "))
            if instance.pattern == "band":
                after[-1] = f"with {article(instance.second_colour_name + ' band')}"
        elif rng.random() < 0.5:
            before.append(adjective)
        else:
            after.append(phrase)
    elif instance.pattern == "plain" and rng.random() < choice.plain:
        before.append(rng.choice(PATTERN_WORDS["plain"]))
        stated.add(prefix + "pattern")
    rng.shuffle(before)
    if family.accessory and instance.accessory is not None and rng.random() < choice.accessory:
        form = ACCESSORY_FORMS[0 if rng.random() < choice.accessory_colour else 2]
        if form != ACCESSORY_FORMS[2] and rng.random() < 0.4:
            form = ACCESSORY_FORMS[1]
        after.append(form.format(a="a", c=instance.accessory_name, thing=family.accessory).replace("  ", " "))
        stated.add(prefix + "accessory")
    if len(family.poses) > 1 and rng.random() < choice.pose:
        before.insert(0, POSE_WORDS[placement.pose][0])
        stated.add(prefix + "pose")
    noun = instance.category
    members = [word for word, inside in family.family_words if inside(instance)]
    if members and rng.random() < choice.family_word:
        noun = rng.choice(members)
        stated.add(prefix + "family")
    if size_word:
        before.insert(0, size_word)
    return " ".join([article(" ".join([*before, noun])), *after])


def caption_tokens(text: str) -> int:
    """The caption's length in the families tokenizer's tokens, start and end of text included: every world word is
    one token, and so is each hyphen (exact on the world's captions; a test)."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + 2


def describe(spec: SceneSpec, rng: random.Random, choice: CaptionChoice = CaptionChoice()) -> Caption:
    """A caption for ``spec`` drawn with ``rng``, and what it states; drawn again while it is longer than the text
    encoder's MAX_TOKENS (about 2% of captions, two-object scenes with many attributes, lost their endings)."""
    while True:
        caption = _describe_once(spec, rng, choice)
        if caption_tokens(caption.text) <= MAX_TOKENS:
            return caption


def _describe_once(spec: SceneSpec, rng: random.Random, choice: CaptionChoice) -> Caption:
    intro = rng.choice(INTROS)
    stated: set[str] = set()
    if spec.second is None and rng.random() < choice.bare:
        return Caption(f"{intro or 'a photo of'} {article(spec.first.instance.category)}", frozenset())
    size_word = rng.choice(SIZE_WORDS[spec.size]) if rng.random() < choice.size else None
    if size_word:
        stated.add("size")
    first = noun_phrase(spec.first, rng, choice, size_word, stated)
    stated_position = rng.random() < choice.position
    if spec.second is None:
        subject = first
        position = rng.choice(POSITION_PHRASES[spec.position]) if stated_position else None
    else:
        stated.add("second_object")
        second = noun_phrase(spec.second, rng, choice, size_word, stated, prefix="second_")
        subject, position = _pair(first, second, spec.position, stated_position, rng), None
    if stated_position:
        stated.add("position")
    tail = [position] if position else []
    if rng.random() < choice.background:
        stated.add("background")
        colour = spec.background
        tail.insert(rng.randrange(len(tail) + 1), rng.choice(BACKGROUND_PHRASES).format(a=article(colour), c=colour))
    text = " ".join(part for part in (intro, subject, *tail) if part)
    return Caption(text, frozenset(stated))


def _pair(first: str, second: str, side: str, state_side: bool, rng: random.Random) -> str:
    if not state_side:
        return f"{first} {rng.choice(PAIR_PHRASES)} {second}"
    if rng.random() < 0.5:
        return f"{first} {SIDE_PHRASES[side]} {second}"
    left, right = (first, second) if side == "left" else (second, first)
    return f"{left} on the left and {right} on the right"


def caption(spec: SceneSpec, rng: random.Random) -> str:
    return describe(spec, rng).text


def vocabulary() -> tuple[str, ...]:
    """Every word a caption can use, sorted."""
    phrases = [*INTROS, *BACKGROUND_PHRASES, *PAIR_PHRASES, *SIDE_PHRASES.values(), *ACCESSORY_FORMS, "a an"]
    phrases += [word for words in SIZE_WORDS.values() for word in words]
    phrases += [phrase for options in POSITION_PHRASES.values() for phrase in options]
    phrases += [phrase for options in PATTERN_WORDS.values() for phrase in options]
    phrases += [word for words in POSE_WORDS.values() for word in words]
    for family in CATEGORIES.values():
        phrases += [family.name, *(word for word, _ in family.family_words), family.accessory or ""]
        phrases += [word for shape in family.shapes for word in (*shape.low, *shape.high)]
    phrases += [*COLOURS, *BACKGROUNDS, "band", "stripes", "spots", "patches"]
    phrases = [re.sub(r"\{[a-z]+\}", " ", phrase) for phrase in phrases]  # the forms' placeholders
    return tuple(sorted({word for phrase in phrases for word in re.findall(r"[a-z]+", phrase)}))


# Words of an object's noun phrase that are grounded on its box in the base model's training (attribute words and
# the noun; not the article or the linking words).
UNGROUNDED = frozenset({"a", "an", "with", "wearing", "-"})
ACCESSORY_THINGS = frozenset({"collar", "bow", "stripes", "spots", "patches", "band"})
POSITION_WORDS = frozenset({"left", "right", "top", "bottom", "upper", "lower", "centre", "middle", "centered"})


def object_nouns(instance) -> frozenset[str]:
    """The words that name an instance: its category word and its family's words ("kitten", "tabby")."""
    return frozenset({instance.category, *(word for word, _ in instance.family.family_words)})


def word_objects(spec: SceneSpec, words: list[str]) -> list[int | None]:
    """For each word of a caption (split as CLIP's pre-tokenizer does: hyphens apart), the index of the object it
    describes, or None: every attribute word and the noun of each object's noun phrase, and position words (in a
    pair only in "X on the left and Y on the right")."""
    owners: list[int | None] = [None] * len(words)
    start = 0

    def first_mention(index: int) -> int:  # "Y on the left and X on the right" names the second object first
        nouns = object_nouns(spec.instances[index])
        return next((i for i, word in enumerate(words) if word in nouns), len(words))

    for index in sorted(range(len(spec.instances)), key=first_mention):
        instance = spec.instances[index]
        nouns = object_nouns(instance)
        noun = next((i for i in range(start, len(words)) if words[i] in nouns), None)
        if noun is None:
            continue
        first = noun
        while first > start and words[first - 1] not in ("a", "an"):
            first -= 1
        last = noun
        while last + 1 < len(words) and words[last + 1] in ("with", "wearing"):
            end = next((i for i in range(last + 2, min(len(words), last + 6)) if words[i] in ACCESSORY_THINGS), None)
            if end is None:
                break
            last = end
        for i in range(first, last + 1):
            if words[i] not in UNGROUNDED:
                owners[i] = index
        start = last + 1
    if spec.second is None:
        return [0 if owner is None and word in POSITION_WORDS else owner for word, owner in zip(words, owners)]
    if "on the left and" in " ".join(words):
        left_object = 0 if spec.position == "left" else 1
        sides = {"left": left_object, "right": 1 - left_object}
        owners = [sides.get(word) if owner is None else owner for word, owner in zip(words, owners)]
    return owners


# The attribute values the text encoder is taught to tell apart (UnetTrainingConfig.attribute_weight), and the caption
# words that state each: colour names, and the pattern's adjective and noun ("striped", "stripes"; "plain", "solid").
ATTRIBUTE_VALUES = {"colour": tuple(COLOURS), "pattern": PATTERNS}
ATTRIBUTE_WORDS = {name: ("colour", index) for index, name in enumerate(COLOURS)} | {
    word: ("pattern", PATTERNS.index(pattern))
    for pattern, (adjective, phrase) in PATTERN_WORDS.items()
    for word in (adjective, phrase.split()[-1])
}


def attribute_words(spec: SceneSpec, words: list[str]) -> list[tuple[int, int | None, str, int]]:
    """(word index, index of its object's noun if the noun comes after it, attribute, value) for every word of an
    object's noun phrase that states a colour or a pattern ("black" in "with black stripes" is the pattern's colour,
    which the colour head reads as black all the same). The encoder is causal: only a noun after the word can carry
    it."""
    owners = word_objects(spec, words)
    found = []
    for index, (word, owner) in enumerate(zip(words, owners)):
        if owner is None or word not in ATTRIBUTE_WORDS:
            continue
        nouns = object_nouns(spec.instances[owner])
        noun = next((j for j in range(index + 1, len(words)) if owners[j] == owner and words[j] in nouns), None)
        found.append((index, noun, *ATTRIBUTE_WORDS[word]))
    return found


# The shape words captions use, each as the words CLIP's pre-tokenizer splits it into ("long-tailed": long, -, tailed);
# the same word may name different parameters in different families ("round": a fish's height, a vase's belly).
SHAPE_PHRASES = tuple(
    sorted({word for family in CATEGORIES.values() for shape in family.shapes for word in (*shape.low, *shape.high)})
)
_SHAPE_PIECES = [tuple(re.findall(r"[a-z]+|[^\sa-z]+", phrase)) for phrase in SHAPE_PHRASES]


def shape_words(spec: SceneSpec, words: list[str]) -> list[tuple[int, int | None, int]]:
    """(index of the shape word's last piece, index of its object's noun if the noun comes after it, index in
    SHAPE_PHRASES) for every shape word of an object's noun phrase ("a long-tailed slim cat")."""
    owners = word_objects(spec, words)
    found = []
    for start in range(len(words)):
        for phrase, pieces in enumerate(_SHAPE_PIECES):
            end = start + len(pieces) - 1
            if tuple(words[start : end + 1]) != pieces or owners[end] is None:
                continue
            if (start > 0 and words[start - 1] == "-") or (end + 1 < len(words) and words[end + 1] == "-"):
                continue  # a piece of a longer word: "long" in "long-tailed"
            owner = owners[end]
            nouns = object_nouns(spec.instances[owner])
            noun = next((j for j in range(end + 1, len(words)) if owners[j] == owner and words[j] in nouns), None)
            found.append((end, noun, phrase))
    return found


def make_scene(seed: int, sampling: WorldSampling = WorldSampling()) -> Scene:
    """The training scene of ``seed``: the same seed always gives the same image, caption and spec."""
    rng = random.Random(seed)
    spec = sample_spec(rng, sampling)
    return Scene(render(spec), caption(spec, rng), spec)


def masked_scene(seed: int, sampling: WorldSampling = WorldSampling()):
    """The image of training scene ``seed`` (as `make_scene`) and the mask of all its objects (L, 255 on them)."""
    return render_with_mask(sample_spec(random.Random(seed), sampling), every_object=True)
