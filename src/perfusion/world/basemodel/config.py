"""Settings of the embedded base model: its architecture and its two training stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

DEFAULT_RUN_DIR = Path("checkpoints/basemodel")  # where the training stages keep their checkpoints


@dataclass
class TokenizerConfig:
    """The CLIP-style BPE tokenizer learned from the world's captions plus general English."""

    vocab_size: int = 2048  # including the 512 byte symbols and the two special tokens
    world_word_weight: int = 1000  # count given to each world word, so that BPE spells it as one token
    # Captions are at most 26 tokens; padding to SD's 77 made the text encoder and the cross-attention projections
    # cost as much as the rest of a training step. 32 keeps room for concept prompts and halves the step time.
    model_max_length: int = 32


@dataclass
class ArchitectureConfig:
    """Widths and depths of the three networks (SD1.5 family, sized for a 2-core CPU)."""

    image_size: int = 64
    # Autoencoder: three encoder blocks, two downsamplings: 64x64x3 -> 16x16x4.
    vae_block_out_channels: tuple[int, ...] = (32, 64, 128)
    vae_layers_per_block: int = 1
    vae_mid_attention: bool = False  # fully convolutional, so training on crops matches full images
    # GroupNorm removes each group's mean: with one channel per group a flat background's colour cannot pass the
    # last norm before conv_out. Four or more channels per group keep it.
    vae_norm_num_groups: int = 8
    latent_channels: int = 4
    # UNet on 16x16 latents, cross-attention at 16x16 and 8x8 and in the 4x4 middle block (SD1.5's layout, one
    # level shorter): 7.3M parameters. Measured on the 2 cores (forward + backward, batch 32): 29 ms per sample,
    # against 45-58 ms for (64, 128, 256) at 12.8M; the CPU budget is counted in samples, so the narrower one.
    unet_block_out_channels: tuple[int, ...] = (48, 96, 192)
    unet_layers_per_block: int = 1
    unet_down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    unet_up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    unet_attention_heads: tuple[int, ...] = (2, 3, 6)  # 24-32 channels per head
    unet_norm_num_groups: int = 12  # 4+ channels per group, as in the autoencoder
    # CLIP text tower.
    text_hidden_size: int = 256
    text_intermediate_size: int = 1024
    text_layers: int = 4
    text_heads: int = 4
    # SD1.x's schedule leaves signal in the noisiest latents (SNR 0.005 at t=999): under epsilon prediction the
    # model learned to read where the object is from that leak and never from the words, and sampling from pure
    # noise put it where the seed's noise happened to lean (left/right centroids correlated 0.996 across seeds).
    # As Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed"): rescale the betas to
    # zero terminal SNR, predict v (epsilon is undefined at SNR 0), and sample from t=999 ("trailing" steps).
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    num_train_timesteps: int = 1000


@dataclass
class VaeTrainingConfig:
    """Stage 1: the autoencoder, on rendered scenes (no captions)."""

    batch_size: int = 32
    crop_size: int = 32  # train on random crops (4x cheaper; the network is fully convolutional); 0: whole images
    learning_rate: float = 4e-4  # 1e-3 fits even a fixed batch more slowly
    warmup_steps: int = 50
    max_steps: int = 1500  # the decoder can be fine-tuned later (--stage decoder) without touching the UNet
    kl_weight: float = 1e-6
    edge_weight: float = 0.5  # L1 on image gradients: keeps glyph outlines sharp
    # An object's pixels weigh 1 + this in the loss (0: all pixels alike). Crops are mostly flat background, so
    # without it the object, which carries identity, gets little of the loss (docs/basemodel.md).
    object_weight: float = 0.0
    # MSE between the encoder's mean latent and the --warm-start autoencoder's, in scaled units: a retrained
    # autoencoder then keeps the latent space (and its scale), so the UNet trained on it stays nearly valid.
    anchor_weight: float = 0.0

    def __post_init__(self):
        for name in ("kl_weight", "edge_weight", "object_weight", "anchor_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.crop_size and self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of the latent grid (4 px), got {self.crop_size}")

    checkpoint_minutes: float = 5.0
    log_every: int = 50


MIXED_PRECISIONS = ("no", "bf16")
PIXEL_GROUNDED_TOKENS = ("all", "nouns", "together")


@dataclass
class UnetTrainingConfig:
    """Stage 2: UNet and text encoder jointly, on cached latents of captioned scenes."""

    batch_size: int = 32  # small batches, more updates: the CPU budget is counted in samples
    unet_learning_rate: float = 5e-4
    text_learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    max_steps: int = 400_000  # the cosine decay's end, where training stops; it may be stopped earlier
    min_learning_rate_ratio: float = 0.1
    # The step the cosine decay starts from (0: right after the warm-up). A late value gives a cool-down: the rate
    # stays flat, then falls to min_learning_rate_ratio over [decay_from, max_steps] (--decay-from 12400 --max-steps 15000).
    decay_from: int = 0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty caption, for classifier-free guidance
    min_snr_gamma: float = 5.0
    # Extra draws of the noisiest timesteps, where the layout (position) is decided: this fraction of each batch
    # takes its timestep uniformly from [high_noise_from, num_train_timesteps) instead of from the whole range.
    high_noise_fraction: float = 0.0
    high_noise_from: int = 700
    # How often training captions state the object's position; the world's own rate (CaptionChoice) is 0.65.
    state_position: float = 0.65
    # How often a training caption names an object by its category word ("a cat"), the world's own rate by default:
    # what a Perfusion concept's locked keys ask for, in two-object prompts too.
    category_word: float = 0.25
    # The share of each batch drawn from the pool's two-object scenes (0: the pool's own share, about a quarter).
    two_object_share: float = 0.0
    # Weight of the token-grounding loss (grounding.py: each object's noun tokens, and a one-object caption's position
    # word, attend to the object's box) added to the diffusion loss; 0 trains on the diffusion loss alone.
    grounding_weight: float = 0.0
    # Weight of the pixel-level term (grounding.token_pixel_loss): the grounded tokens hold the attention of their box's
    # cells, instead of EOS and padding holding most of it everywhere.
    grounding_pixel_weight: float = 0.0
    # Which grounded tokens the pixel term asks to hold their box's attention: "all": each of them (the noun, every
    # attribute word, the position word); "nouns": the words that name the object (TokenCompose's L_pixel);
    # "together": each object's grounded tokens jointly, the split among them left free. With "all" the object's
    # cells split their attention evenly over its words (0.23-0.29 each on "a large white striped cat", at every
    # step) and a pattern adjective changed nothing in the image; with "nouns" the noun took 0.85-0.93 of it within
    # 1,600 steps and the words after it ("with black stripes") lost their effect (docs/basemodel.md).
    grounding_pixel_tokens: str = "all"
    # Weight of the text encoder's attribute supervision (attributes.py: linear heads read each stated colour and
    # pattern at its word and at the noun after it); 0: none. Trained jointly, the encoder had sent every pattern
    # word to one encoding (docs/basemodel.md).
    attribute_weight: float = 0.0
    # Weight of the attribute readout through cross-attention (readout.py: the text states an object's box cells
    # attend to must name its stated pattern and body colour); 0: none. With "together", post-noun phrases ("with
    # black stripes") drew little attention and changed little (docs/basemodel.md).
    readout_weight: float = 0.0
    # Families world: how often a training caption names the instance's pattern, and each of its shape parameters
    # that lies in a low or high third; 0: the world's own rates (families.captions.CaptionChoice: 0.45 and 0.4).
    # The issue allows 0.3-0.6: more captions that say the word give the UNet more pairs of word and coat to learn
    # from (docs/basemodel.md).
    pattern_word: float = 0.0
    shape_word: float = 0.0
    pool_size: int = 20_000  # scenes whose latents are cached once (~1 min per 5,000 on 2 cores); grow it any time
    checkpoint_minutes: float = 10.0
    log_every: int = 50
    eval_every: int = 2000  # judge scores of the EMA weights on a fixed prompt set, once the judge exists
    # "bf16": the text encoder's and the UNet's forward passes under torch.autocast in bfloat16 (fp32 weights, Adam
    # and loss), on a CUDA GPU as on a CPU with bf16 instructions (0.8 s against 1.15 s a step of 32 on one AMD EPYC
    # thread); "no": fp32 throughout.
    mixed_precision: str = "no"

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got {self.mixed_precision!r}"
            )
        for name in ("pattern_word", "shape_word"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1] (0: the world's own rate)")
        if self.grounding_pixel_tokens not in PIXEL_GROUNDED_TOKENS:
            raise ValueError(
                f"grounding_pixel_tokens must be one of {', '.join(PIXEL_GROUNDED_TOKENS)}, "
                f"got {self.grounding_pixel_tokens!r}"
            )


@dataclass
class SamplingConfig:
    """How the shipped pipeline samples (the speed bar is measured with these)."""

    num_inference_steps: int = 25
    # Chosen on step 15126 (judge, 64 prompts x 4 seeds): category 87.8% at 2.5 against 85.6% at 3 and 83.5% at 4;
    # confirmed on 64 fresh prompts (seeds from 900_000): 89.8% at 2.5, 88.1% at 2, 86.9% at 4.
    guidance_scale: float = 2.5


# What runs saved before a field of ArchitectureConfig existed had in its place.
ARCHITECTURE_BEFORE_FIELDS = {"zero_terminal_snr": False}


def to_dict(config) -> dict:
    return asdict(config)


def from_dict(cls, values: dict):
    """Build a config from a saved dict, keeping defaults for fields added since (tuples restored) and ignoring keys
    of fields removed since (older runs' UnetTrainingConfig has ema_warmup_steps)."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key in known:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def saved_architecture(values: dict) -> ArchitectureConfig:
    """The architecture a checkpoint or shipped folder was trained with (older runs lack newer fields)."""
    return from_dict(ArchitectureConfig, {**ARCHITECTURE_BEFORE_FIELDS, **values})
