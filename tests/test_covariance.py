"""C from the pipeline's own text encoder: padding excluded, float64, cached per model and corpus."""

import torch

from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.covariance import cache_root, corpus_digest, estimate_covariance, inverse_covariance
from perfusion.pipeline.text import content_mask, encode, tokenize
from perfusion.testing import small_corpus


def test_content_mask_keeps_up_to_the_first_end_of_text():
    eos = 9
    ids = torch.tensor([[8, 1, 2, eos, eos, eos], [8, eos, eos, eos, eos, eos]])
    assert content_mask(ids, eos).tolist() == [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]


def test_covariance_is_over_content_positions_only(tiny_pipe):
    captions = small_corpus(40)
    covariance = estimate_covariance(TextConditioning.of(tiny_pipe), captions, batch_size=7)
    ids = tokenize(tiny_pipe.tokenizer, captions)  # padded to 77 with EOS
    with torch.no_grad():
        encodings = encode(tiny_pipe.text_encoder, ids)[content_mask(ids, tiny_pipe.tokenizer.eos_token_id)].double()
    expected = encodings.T @ encodings / encodings.shape[0]
    assert covariance.dtype == torch.float64
    torch.testing.assert_close(covariance, expected, rtol=1e-4, atol=1e-5 * expected.diagonal().mean().item())


def test_inverse_is_cached_on_disk_per_corpus(tiny_pipe):
    captions = small_corpus(50)
    first = inverse_covariance(TextConditioning.of(tiny_pipe), captions)
    files = list((cache_root() / "covariance").glob("*.safetensors"))
    second = inverse_covariance(TextConditioning.of(tiny_pipe), captions)
    assert torch.equal(first, second) and first.dtype == torch.float64
    inverse_covariance(TextConditioning.of(tiny_pipe), small_corpus(50, seed=1))
    assert len(list((cache_root() / "covariance").glob("*.safetensors"))) == len(files) + 1
    covariance = estimate_covariance(TextConditioning.of(tiny_pipe), captions)
    torch.testing.assert_close(
        first @ covariance, torch.eye(covariance.shape[0], dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_a_damaged_cache_entry_is_recomputed(tiny_pipe):
    captions = small_corpus(30)
    first = inverse_covariance(TextConditioning.of(tiny_pipe), captions)
    entries = list((cache_root() / "covariance").glob(f"*-{corpus_digest(captions)}.safetensors"))
    assert entries  # only this test's: other tests share the session's cache
    for path in entries:
        path.write_bytes(b"damaged")
    assert torch.equal(inverse_covariance(TextConditioning.of(tiny_pipe), captions), first)
