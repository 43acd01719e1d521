"""Prompts for a personal concept, in DreamBench's mix: new scenes, a second object, size and position, and a changed
property ("a green <c>"). Each prompt says what it states, so that alignment can be scored, and what it changes, so
that recognition can leave that out.

The subject is written as a noun phrase with its article: ``prompt.text("<mycat>")`` gives "a small <mycat> at the
left"; ``prompt.text("cat")`` the prior's "a small cat at the left"; ``prompt.text(description)`` the verbal oracle's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .captions import article
from .instances import Instance
from .palette import COLOURS


@dataclass(frozen=True)
class ConceptPrompt:
    template: str  # "{} on a blue background": {} is the subject's noun phrase, article included
    prefix: str = ""  # words before the noun ("small", "green")
    stated: dict = field(
        default_factory=dict
    )  # what the prompt asks: background, position, size, second, colour, pattern
    changes: dict = field(default_factory=dict)  # Instance fields the prompt changes on purpose

    def text(self, noun: str) -> str:
        return self.template.format(article(f"{self.prefix} {noun}".strip()))

    @property
    def kind(self) -> str:
        if self.changes:
            return "property"
        if "second" in self.stated:
            return "second object"
        if {"size", "position"} & set(self.stated):
            return "size and position"
        return "scene"


def concept_prompts(instance: Instance) -> list[ConceptPrompt]:
    """12 prompts for a concept of this instance's category (the second object and the changed colour and pattern
    are chosen so that they differ from the concept's own)."""
    other = "mug" if instance.category != "mug" else "car"
    second = "teddy" if instance.category != "teddy" else "dog"
    colour = "green" if instance.colour_name != "green" else "purple"
    recolour = "blue" if instance.colour_name != "blue" else "red"
    pattern, adjective = ("spots", "spotted") if instance.pattern != "spots" else ("stripes", "striped")
    return [
        ConceptPrompt("{} on a blue background", stated={"background": "blue"}),
        ConceptPrompt("a photo of {} on a pink background", stated={"background": "pink"}),
        ConceptPrompt("{} against a yellow background", stated={"background": "yellow"}),
        ConceptPrompt("{} in front of a white background", stated={"background": "white"}),
        ConceptPrompt(f"{{}} next to a {other}", stated={"second": other}),
        ConceptPrompt(f"a photo of {{}} beside a {second}", stated={"second": second}),
        ConceptPrompt("{} at the left", prefix="small", stated={"size": "small", "position": "left"}),
        ConceptPrompt("{} at the top", prefix="large", stated={"size": "large", "position": "top"}),
        ConceptPrompt("{} on the right on a green background", stated={"position": "right", "background": "green"}),
        ConceptPrompt("{}", prefix=colour, stated={"colour": colour}, changes={"colour": COLOURS[colour]}),
        ConceptPrompt(
            "{} on a white background",
            prefix=recolour,
            stated={"colour": recolour, "background": "white"},
            changes={"colour": COLOURS[recolour]},
        ),
        ConceptPrompt("{}", prefix=adjective, stated={"pattern": pattern}, changes={"pattern": pattern}),
    ]


# Two concepts in one prompt, 8 as in issue 31's composition bar: {} are the concepts' noun phrases, articles
# included (the demo and the comparison), joined as the world's captions join two objects (captions.PAIR_PHRASES).
PAIR_TEMPLATES = (
    "a photo of {} next to {}",
    "{} next to {} on a blue background",
    "{} beside {} on a yellow background",
    "a photo of {} beside {} on a white background",
    "{} and {}",
    "a picture of {} and {} on a green background",
    "{} next to {} against a pink background",
    "an image of {} beside {} in front of a gray background",
)


def pair_texts(nouns: list[str]) -> list[str]:
    """The two-concept prompts for two nouns ("<mycat>", "<mymug>")."""
    return [template.format(*(article(noun) for noun in nouns)) for template in PAIR_TEMPLATES]
