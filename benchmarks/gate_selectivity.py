"""How selective Perfusion's similarity s(e) is on a base model: the premise is s = 1 at the concept, ~0 elsewhere.

    python benchmarks/gate_selectivity.py --concept mycat.safetensors [--model PATH] [--prompts 12]

Encodes the micro world's standard prompts with the concept in them and prints, for the C that `load_concepts`
installed (the model folder's own captions, for the embedded model its world's) and for the packaged corpus's, the
mean |s| of the tokens before the concept, of the concept token, of the content tokens after it, and of the padding.
Where the tokens after the concept reach s >= beta, the gate opens on them too (docs/results.md, "Gate selectivity").
"""

from __future__ import annotations

import argparse
import sys

import torch

from perfusion.concept.format import Concept, ConceptFileError
from perfusion.experiments.prompt_sets import world_prompts
from perfusion.method import similarity
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.corpus import default_captions
from perfusion.pipeline.covariance import DEFAULT_CAPTIONS, inverse_covariance
from perfusion.pipeline.loader import find_runtime, load_concepts
from perfusion.pipeline.models import open_pipeline
from perfusion.pipeline.text import content_mask, encode, tokenize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", required=True, help="concept file trained on --model")
    parser.add_argument("--model", help="base model folder (default: the embedded micro-world model)")
    parser.add_argument("--prompts", type=int, default=12, help="world prompts to encode")
    args = parser.parse_args(argv)
    if args.model is None:
        from perfusion.world.model_path import default_model_path

        args.model = str(default_model_path())
    try:
        concept = Concept.load(args.concept)
        pipe = open_pipeline(args.model)
        load_concepts(pipe, concept)
    except (ConceptFileError, OSError) as error:
        sys.exit(f"gate_selectivity: {error}")
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenize(tokenizer, [p.text(concept.token) for p in world_prompts(concept.supercategory, args.prompts)])
    with torch.no_grad():
        encodings = encode(text_encoder, ids).double()
    at_concept = ids == tokenizer.convert_tokens_to_ids(concept.token)
    from_concept = at_concept.cumsum(-1).bool()
    after = from_concept & ~at_concept
    content = content_mask(ids, tokenizer.eos_token_id)
    groups = {
        "before": ~from_concept,
        "concept": at_concept,
        "content after": after & content,
        "padding": after & ~content,
    }
    inverses = {  # the first is the C^-1 that load_concepts installed; both come from the per-model disk cache
        "installed (the folder's own corpus, else packaged)": find_runtime(pipe).inverse_covariance,
        "packaged corpus": inverse_covariance(
            TextConditioning.single(text_encoder, tokenizer), default_captions(DEFAULT_CAPTIONS)
        ),
    }
    print(f"{concept.token} on {args.model}, {len(ids)} prompts; mean |s| (max |s|) per token group")
    for name, inverse in inverses.items():
        s = similarity(encodings, concept.concept_encoding.double(), inverse).abs()
        cells = [f"{group} {s[mask].mean():.2f} ({s[mask].max():.2f})" for group, mask in groups.items()]
        print(f"  C from {name:16s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
