"""Training a concept: the trainer, the fine-tuning base it shares with the baselines, frozen pipelines and
latents, default masks, paired images, reading a user's images."""
