"""The multi-user service: HTTP API, web page, batched generation and training jobs (perfusion serve)."""
