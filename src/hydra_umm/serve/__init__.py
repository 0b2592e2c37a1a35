"""Serving: ``hydra-umm serve`` runs a gradio page (/) and an OpenAI-shaped API (/v1) in one
process over one model and one bounded request queue."""

from hydra_umm.serve.app import Tasks, build_page, create_app, serve

__all__ = ["Tasks", "build_page", "create_app", "serve"]
