"""The concept file: its format (perfusion.concept.format) and the base model's fingerprint it carries."""
