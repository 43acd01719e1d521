"""How much C = E[e e^T] moves with its caption corpus, and what that does to the gate (issue 33, point 4).

    python benchmarks/corpus_covariance.py [--model DIR ...] [--out docs/benchmarks/corpus_covariance.json]

For each pipeline (three tiny ones built from SD 1.x-, SD 2.x- and SDXL-shaped configs with random weights, and each
--model folder, by default the embedded model), C is estimated from:

- ``templated``: the packaged corpus before prompt phrases (``default_captions(prompt_share=0)``), what every C came
  from until now;
- ``packaged``: the packaged corpus now (half the captions extended with real prompt phrases, up to 77 tokens);
- ``own``: the model folder's own captions (``perfusion_captions.txt``), where it has them.

It prints the generalised eigenvalues lambda of C_new v = lambda C_old v against ``templated`` (their quantiles: 1
everywhere means the same metric; the gate's s(e) is measured in C^-1, so a direction whose variance shrinks by
lambda has its similarity scaled by up to 1/lambda). On the models that draw (--model), it also encodes held-out
prompts of the packaged corpus's new kind that use the category word, and reports, for i* the word's own encoding in
"a photo of a <word>", the mean |s(e)| of the other content tokens and the share with s(e) >= 0.5 (where the gate at
beta 0.7, tau 0.1 is at least 12% open), under each C; and the same on held-out captions of the model's own world
where its folder carries that world's captions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from perfusion.method import similarity
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.corpus import default_captions, model_captions
from perfusion.pipeline.covariance import DEFAULT_CAPTIONS, estimate_covariance
from perfusion.pipeline.text import content_mask, word_positions
from perfusion.testing import build_tiny_pipeline, build_tiny_sd2_pipeline, build_tiny_sdxl_pipeline, load_pipeline

QUANTILES = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)
HELD_OUT_SEED = 7  # prompts for the gate figures: not the corpus's own seed


def generalised_eigenvalues(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """lambda with new v = lambda old v (both symmetric positive definite), ascending: eigvalsh(L^-1 new L^-T)."""
    factor = torch.linalg.cholesky(old)
    whitened = torch.linalg.solve_triangular(factor, new, upper=False)
    whitened = torch.linalg.solve_triangular(factor, whitened.T, upper=False)
    return torch.linalg.eigvalsh((whitened + whitened.T) / 2)


def quantiles(values: torch.Tensor) -> dict[str, float]:
    return {f"q{int(q * 100):02d}": float(torch.quantile(values, q)) for q in QUANTILES}


@torch.no_grad()
def gate_figures(text: TextConditioning, covariances: dict, word: str, prompts: list[str]) -> dict:
    """Per corpus: mean |s(e)| and the share with s >= 0.5 over the prompts' content tokens other than ``word``."""
    ids = text.tokenize([f"a photo of a {word}"])
    concept = text.encode(ids)[word_positions(ids[0], text.supercategory_ids(word), True)][-1].double()
    ids = text.tokenize(prompts)
    encodings = text.encode(ids).double()
    keep = content_mask(ids[0], text.tokenizer.eos_token_id) & ~word_positions(ids[0], text.supercategory_ids(word))
    others = encodings[keep]
    figures = {}
    for name, covariance in covariances.items():
        s = similarity(others, concept, torch.linalg.inv(covariance))
        figures[name] = {"mean_abs_s": float(s.abs().mean()), "share_s_over_half": float((s >= 0.5).double().mean())}
    return figures


def world_of(captions: list[str]) -> str | None:
    """The embedded world whose captions a model folder carries, if any."""
    from perfusion.world.basemodel.data import world_captions

    return next((world for world in ("families", "emoji") if world_captions(world, len(captions)) == captions), None)


def measure(name: str, pipe, prompts: list[str] | None = None, word: str = "cat") -> dict:
    text = TextConditioning.of(pipe)
    corpora = {
        "templated": default_captions(DEFAULT_CAPTIONS, prompt_share=0),
        "packaged": default_captions(DEFAULT_CAPTIONS),
    }
    own = model_captions(pipe)
    if own is not None:
        corpora["own"] = own
    covariances = {label: estimate_covariance(text, captions) for label, captions in corpora.items()}
    result = {
        "width": text.width,
        "eigenvalues_against_templated": {
            label: quantiles(generalised_eigenvalues(covariance, covariances["templated"]))
            for label, covariance in covariances.items()
            if label != "templated"
        },
    }
    if prompts is not None:
        result["gate"] = gate_figures(text, covariances, word, prompts)
        world = world_of(own) if own is not None else None
        if world is not None:  # and on held-out captions of its own world: the prompts its users write
            from perfusion.world.basemodel.data import world_captions

            fresh = world_captions(world, 20 * len(prompts), seed="held-out")
            fresh = [caption for caption in fresh if word in caption.replace(",", " ").split()][: len(prompts)]
            result["gate_world_prompts"] = gate_figures(text, covariances, word, fresh)
    print(name, json.dumps(result, indent=1))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="*", default=None, help="pipeline folders (default: embedded)")
    parser.add_argument("--word", default="cat", help="the category word whose encoding plays i*")
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts of the model's own corpus")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, build in (("tiny-sd1", build_tiny_pipeline), ("tiny-sd2", build_tiny_sd2_pipeline)):
            results[label] = measure(label, load_pipeline(build(Path(folder) / label)))
        results["tiny-sdxl"] = measure("tiny-sdxl", load_pipeline(build_tiny_sdxl_pipeline(Path(folder) / "sdxl")))
    if arguments.model is None:
        from perfusion.world.model_path import default_model_path

        arguments.model = [default_model_path()]
    # Held-out prompts in the new packaged style that use the word: ordinary words outside the templates' lists and
    # late tokens of long prompts, where a templated C was feared to inflate |s(e)|.
    prompts = default_captions(20 * arguments.prompts, seed=HELD_OUT_SEED)
    prompts = [caption for caption in prompts if arguments.word in caption.replace(",", " ").split()][
        : arguments.prompts
    ]
    for folder in arguments.model:
        results[str(folder)] = measure(str(folder), load_pipeline(folder), prompts, arguments.word)
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
