"""The edit inside a diffusers pipeline: text conditioning, the router, the attention processors, the
plans, the runtime that owns a pipeline's Perfusion state, loading, settings and generation."""
