"""A small CLIP-format BPE tokenizer learned from the world's captions plus common English words.

CLIP's layout exactly: lowercase, `</w>` marks a word's end, the 256 byte symbols of `bytes_to_unicode` and their
`</w>` forms are all in the vocabulary (so any text tokenizes without unknowns), `<|startoftext|>` and
`<|endoftext|>` are the last two ids and padding uses `<|endoftext|>` as in SD1.x.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, models, trainers
from transformers import CLIPTokenizer

from .config import TokenizerConfig

START, END = "<|startoftext|>", "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte-to-character table (the base alphabet of its BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


def english_words() -> list[str]:
    text = resources.files(__package__).joinpath("english_words.txt").read_text()
    return text.split()


def _pretokenizing_clip() -> CLIPTokenizer:
    """A CLIPTokenizer with an empty vocabulary: only its normalizer and pre-tokenizer are used, so that the BPE is
    learned on exactly the words CLIPTokenizer will later hand to it."""
    alphabet = list(bytes_to_unicode().values())
    return CLIPTokenizer(vocab={c: i for i, c in enumerate(alphabet + [START, END])}, merges=[])


def train_merges(corpus: Iterable[str], config: TokenizerConfig) -> list[tuple[str, str]]:
    """Learn BPE merges (CLIP style, `</w>` suffix) from texts."""
    clip = _pretokenizing_clip().backend_tokenizer
    alphabet = list(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = clip.normalizer
    bpe.pre_tokenizer = clip.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size - len(alphabet) - 2,  # the trainer's vocab lacks the 256 `</w>` forms and specials
        min_frequency=2,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def clip_vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Vocabulary in CLIP's order: bytes, bytes + `</w>`, one token per merge, then the two special tokens."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges] + [START, END]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def build_corpus(world_words: Iterable[str], captions: Iterable[str], config: TokenizerConfig) -> list[str]:
    """World words weighted so BPE spells each as one token, general English once each, plus real captions."""
    corpus = [" ".join([word] * config.world_word_weight) for word in world_words]
    corpus += [" ".join([word] * 4) for word in english_words()]
    corpus += list(captions)
    return corpus


def write_tokenizer(directory: Path, merges: list[tuple[str, str]], config: TokenizerConfig) -> CLIPTokenizer:
    """Write vocab.json + merges.txt (CLIPTokenizer's files) and return the tokenizer read back from them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(clip_vocabulary(merges), ensure_ascii=False))
    (directory / "merges.txt").write_text("\n".join([MERGES_HEADER] + [f"{a} {b}" for a, b in merges]) + "\n")
    tokenizer = CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=config.model_max_length,
    )
    tokenizer.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)


def build_tokenizer(
    directory: Path, world_words: Iterable[str], captions: Iterable[str], config: TokenizerConfig | None = None
) -> CLIPTokenizer:
    config = config or TokenizerConfig()
    merges = train_merges(build_corpus(world_words, captions, config), config)
    return write_tokenizer(directory, merges, config)


def words_split(tokenizer: CLIPTokenizer, words: Iterable[str]) -> list[str]:
    """The words that do not tokenize as a single token (ideally none of the world's)."""
    return [word for word in words if len(tokenizer(word, add_special_tokens=False).input_ids) != 1]
