"""Where the gate fires, position by position (issue 33, point 3): s(e) and sigmoid((s - beta) / tau) at every token
of short, long and two-subject prompts, and how much of o*_V each kind of position receives.

    python benchmarks/gate_positions.py --concept mycat.safetensors [--model PATH] [--beta B --tau T] [--out FILE]
    python benchmarks/gate_positions.py --tiny        # a random tiny SD 1.5-shaped pipeline, a concept trained on it

Four variants of the edit, the gate summed per kind of position (the concept token, the plain supercategory word,
other words, the first end-of-text token, the padding after it):
- "paper": C over the words and the first end-of-text token (as load_concepts computes it), the edit at every
  position (gate_scope "all");
- "C over all": C over every position, padding included, the edit everywhere;
- "except-word": the paper's C, not at the plain supercategory word (gate_scope "except-word", the default);
- "prompt": besides, only up to the first end-of-text token (gate_scope "prompt").
Prompt length changes the padding's share, so a difference between a short and a long prompt is a difference
between training ("a photo of a <c>") and generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from perfusion.concept.format import GATE_SCOPES, Concept, ConceptFileError
from perfusion.method import gate, similarity
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.corpus import default_captions, model_captions
from perfusion.pipeline.covariance import DEFAULT_CAPTIONS, RIDGE
from perfusion.pipeline.loader import load_concepts
from perfusion.pipeline.models import open_pipeline
from perfusion.pipeline.runtime import PerfusionRuntime
from perfusion.pipeline.text import content_mask, gate_scope

KINDS = ("concept", "plain word", "other words", "first end-of-text", "padding")
VARIANTS = ("paper", "C over all", "except-word", "prompt")
LONG = (
    "a detailed photograph of {c} sitting quietly on an old wooden table in a bright kitchen with green plants, "
    "a window, warm morning light and a blue teapot"
)


def prompts(token: str, word: str) -> dict[str, str]:
    return {
        "short": f"a photo of a {token}",
        "long": LONG.format(c=f"a {token}"),
        "two subjects": f"a {token} next to a {word}",
        "plain first": f"a {word} next to a {token}",
    }


@torch.no_grad()
def covariance_over_all_positions(text: TextConditioning, captions: list[str], batch_size: int = 64):
    """C^-1 with every position of the max-length rows, padding included (the alternative to measure)."""
    covariance, count = torch.zeros(text.width, text.width, dtype=torch.float64), 0
    for start in range(0, len(captions), batch_size):
        ids = text.tokenize(captions[start : start + batch_size])
        encodings = text.encode(ids).flatten(0, 1).to(torch.float64).cpu()
        covariance += encodings.T @ encodings
        count += encodings.shape[0]
    covariance /= count
    covariance += RIDGE * covariance.diagonal().mean() * torch.eye(text.width, dtype=torch.float64)
    return torch.linalg.inv(covariance)


def position_kinds(ids: torch.Tensor, token_id: int, word_ids: list[int], eos: int) -> list[str]:
    content = content_mask(ids[None], eos)[0]
    first_eos = int((ids == eos).nonzero()[0]) if (ids == eos).any() else len(ids)
    kinds = []
    for position, token in enumerate(ids.tolist()):
        if token == token_id:
            kinds.append("concept")
        elif position == first_eos:
            kinds.append("first end-of-text")
        elif not content[position]:
            kinds.append("padding")
        elif token in word_ids:
            kinds.append("plain word")
        else:
            kinds.append("other words")
    return kinds


def measure(pipe, concept: Concept, beta: float, tau: float, corpus: list[str]) -> dict:
    text = TextConditioning.of(pipe)
    tower = text.towers[0]
    token_id = tower.tokenizer.convert_tokens_to_ids(concept.token)
    word_ids = text.supercategory_ids(concept.supercategory)
    eos = tower.tokenizer.eos_token_id
    installed = PerfusionRuntime.of(pipe).inverse_covariance  # what load_concepts computed
    inverses = {"paper": installed, "C over all": covariance_over_all_positions(text, corpus)}
    i_star = concept.concept_encoding.double()
    results = {}
    for name, prompt in prompts(concept.token, concept.supercategory).items():
        ids = text.tokenize([prompt])
        encodings = text.encode(ids)[0].double().cpu()
        kinds = position_kinds(ids[0][0], token_id, word_ids, eos)
        tokens = tower.tokenizer.convert_ids_to_tokens(ids[0][0].tolist())
        row = {"prompt": prompt, "tokens": tokens, "kinds": kinds}
        for variant in VARIANTS:
            inverse = inverses["C over all" if variant == "C over all" else "paper"]
            s = similarity(encodings, i_star, inverse).detach()
            g = gate(s, beta, tau)
            if variant in GATE_SCOPES:
                g = g * gate_scope(ids[0][0], eos, word_ids, variant).to(g.dtype)
            row[variant] = {
                "s": [round(float(v), 3) for v in s],
                "gate": [round(float(v), 3) for v in g],
                "mass": {kind: round(float(sum(g[i] for i, k in enumerate(kinds) if k == kind)), 3) for kind in KINDS},
            }
        results[name] = row
    return results


def report(results: dict, beta: float, tau: float) -> str:
    lines = [f"gate mass (sum of sigmoid((s - {beta}) / {tau}) over the positions of each kind; 1 = one full o*_V)"]
    lines.append(f"{'prompt':14s} {'variant':13s} " + " ".join(f"{kind:>18s}" for kind in KINDS))
    for name, row in results.items():
        for variant in VARIANTS:
            mass = row[variant]["mass"]
            lines.append(f"{name:14s} {variant:13s} " + " ".join(f"{mass[kind]:18.2f}" for kind in KINDS))
    lines.append("")
    for name, row in results.items():  # s(e) at the words and the first end-of-text, paper's C
        words = [
            f"{token.replace('</w>', '')}:{s:+.2f}"
            for token, kind, s in zip(row["tokens"], row["kinds"], row["paper"]["s"])
            if kind != "padding"
        ]
        padding = [s for kind, s in zip(row["kinds"], row["paper"]["s"]) if kind == "padding"]
        tail = f"; padding s {min(padding):+.2f} to {max(padding):+.2f} ({len(padding)})" if padding else ""
        lines.append(f"{name}: " + " ".join(words) + tail)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", help="concept file trained on --model")
    parser.add_argument("--model", help="base model folder (default: the embedded model)")
    parser.add_argument(
        "--tiny", action="store_true", help="a random tiny SD 1.5-shaped pipeline, a concept trained on it"
    )
    parser.add_argument("--tiny-steps", type=int, default=100, help="training steps of the tiny concept")
    parser.add_argument("--beta", type=float, help="default: the concept's own")
    parser.add_argument("--tau", type=float, help="default: the concept's own")
    parser.add_argument("--out", help="write every position's s and gate as JSON")
    args = parser.parse_args(argv)
    if args.tiny:
        from perfusion.testing import build_tiny_pipeline, load_pipeline, small_corpus, write_concept_images
        from perfusion.training.images import load_training_images
        from perfusion.training.trainer import TrainingConfig, train_concept

        folder = Path(tempfile.mkdtemp())
        pipe = load_pipeline(build_tiny_pipeline(folder / "pipe"))
        images = load_training_images(write_concept_images(folder / "photos"))
        config = TrainingConfig(steps=args.tiny_steps, batch_size=2, gradient_accumulation=1)
        corpus = small_corpus()
        concept = train_concept(pipe, images, "<mycat>", "cat", config, captions=corpus, progress=False).concept
    else:
        if args.concept is None:
            sys.exit("gate_positions: give --concept (or --tiny)")
        if args.model is None:
            from perfusion.world.model_path import default_model_path

            args.model = str(default_model_path())
        corpus = None  # the model folder's own, else the packaged one, as load_concepts uses by default
        try:
            concept = Concept.load(args.concept)
            pipe = open_pipeline(args.model, device="cpu")
        except (ConceptFileError, OSError, ValueError) as error:
            sys.exit(f"gate_positions: {error}")
    load_concepts(pipe, concept, captions=corpus)
    beta = concept.beta if args.beta is None else args.beta
    tau = concept.tau if args.tau is None else args.tau
    corpus = corpus or model_captions(pipe) or default_captions(DEFAULT_CAPTIONS)  # the installed C's corpus
    results = measure(pipe, concept, beta, tau, corpus)
    print(f"{concept.token} ({concept.supercategory}) on {args.model or 'a tiny SD 1.5-shaped pipeline'}")
    print(report(results, beta, tau))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
