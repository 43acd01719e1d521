"""What holds on every pipeline family the same way: SD 1.x, SD 2.x (one text encoder) and SDXL (two, concatenated)."""

import pytest
import torch
from perfusion.testing import handmade_concept, load_pipeline, small_corpus

from perfusion.loader import find_runtime, load_concepts
from perfusion.method import composition_basis, gate, inverse_covariance_factor, similarity
from perfusion.processor import PerfusionAttnProcessor
from perfusion.router import CallContext

CAPTIONS = small_corpus()


@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def family_pipe(request):
    return load_pipeline(request.getfixturevalue({"sd1": "tiny_pipeline_dir", "sd2": "sd2_dir", "sdxl": "sdxl_dir"}[request.param]))


def test_two_concepts_compose_exactly_in_the_c_inverse_orthonormal_basis(family_pipe):
    """U C^-1 U^T = I, and at e = i*_n the projection of the span is gone: V' i*_n = sum_m gate_m(i*_n) o*_m."""
    cat = handmade_concept(family_pipe, "<mycat>", "cat", seed=1)
    mug = handmade_concept(family_pipe, "<mymug>", "mug", seed=2)
    load_concepts(family_pipe, [cat, mug], captions=CAPTIONS)
    runtime = find_runtime(family_pipe)
    encodings = torch.stack([cat.concept_encoding, mug.concept_encoding])
    basis = composition_basis(encodings.double(), inverse_covariance_factor(runtime.inverse_covariance))
    torch.testing.assert_close(basis @ runtime.inverse_covariance @ basis.T, torch.eye(2, dtype=torch.float64))
    runtime.router.context = CallContext([(("<mycat>", "<mymug>"), torch.tensor([0]))], None)  # the processor alone
    gates = torch.stack([gate(similarity(encodings.double(), concept.concept_encoding.double(), runtime.inverse_covariance),
                              concept.beta, concept.tau) for concept in (cat, mug)], -1)  # (position, concept)  # fmt: skip
    processors = [p for p in family_pipe.unet.attn_processors.values() if isinstance(p, PerfusionAttnProcessor)]
    assert processors
    for processor in processors:
        attn = family_pipe.unet.get_submodule(processor.layer)
        with torch.no_grad():
            _, value = processor.edit(attn, encodings[None], attn.to_k(encodings[None]), attn.to_v(encodings[None]))
        targets = torch.stack([cat.value_targets[processor.layer], mug.value_targets[processor.layer]], -1).double()
        torch.testing.assert_close(value[0].double(), gates @ targets.T, atol=1e-4, rtol=1e-4)  # fp32 edit, fp64 sums
